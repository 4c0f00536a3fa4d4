"""Single-file checkpoint saves (gpt2_lightning/train/checkpoint_io.py): written beside the checkpoint only, and a
full disk named by the checkpoint's path and its disk (issue 19, item 9)."""

import errno
import shutil
import tempfile

import pytest
import torch

from gpt2_lightning import files
from gpt2_lightning.train.checkpoint_io import AtomicCheckpointIO


def test_a_save_never_stages_through_the_system_temporary_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmpdir"))  # $TMPDIR unusable, as when full
    AtomicCheckpointIO().save_checkpoint({"w": torch.arange(3)}, tmp_path / "run" / "last.ckpt")
    assert torch.equal(torch.load(tmp_path / "run" / "last.ckpt")["w"], torch.arange(3))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["last.ckpt"]


def test_a_full_disk_names_the_checkpoint_and_its_disk_and_leaves_the_last_one(tmp_path, monkeypatch):
    last = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, last)

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # what torch says

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(OSError, match=r"no space left on the disk mounted at /\S* \(0 bytes free\)") as failed:
        AtomicCheckpointIO().save_checkpoint({"step": 2}, last)
    assert failed.value.errno == errno.ENOSPC and failed.value.filename == str(last)
    monkeypatch.undo()
    assert torch.load(last) == {"step": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_failed_save_with_room_on_the_disk_is_a_bug_and_keeps_its_error(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("an internal bug")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="an internal bug"):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, tmp_path / "last.ckpt")
