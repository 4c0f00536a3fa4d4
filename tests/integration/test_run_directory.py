"""What `fit --ckpt_path last` resumes from, and where a resumed run saves (issue 19, items 3 and 4): one file,
`{dirpath}/last.ckpt`, however the directory got there and whatever else lies beside it."""

import os
import shutil
import time

import torch
from helpers import fit


def test_last_means_last_ckpt_even_beside_a_newer_planted_or_truncated_last_v1(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    checkpoints = run / "checkpoints"
    planted = checkpoints / "last-v1.ckpt"
    planted.write_bytes((checkpoints / "last.ckpt").read_bytes()[:1000])  # truncated, and the newest by mtime
    later = time.time() + 60
    os.utime(planted, (later, later))
    fit(run, "--trainer.max_steps", "6", "--ckpt_path", "last")  # Lightning alone would pick last-v1.ckpt
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 6


def test_a_run_whose_directory_moved_keeps_saving_to_its_last_ckpt(tiny_run, tmp_path):
    moved = tmp_path / "elsewhere" / "run"  # another disk or another node's mount point, as far as the run can tell
    shutil.copytree(tiny_run, moved)
    fit(moved, "--trainer.max_steps", "8", "--ckpt_path", "last")
    saved = sorted(p.name for p in (moved / "checkpoints").glob("last*"))
    assert saved == ["last.ckpt"], saved  # not forked into last-v1.ckpt, which no reader of "the newest" reads
    assert torch.load(moved / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8
