"""The run-directory policy `fit` applies before training (gpt2_lightning/train/run_dir.py), reached without a fit."""

import os
import socket
from contextlib import ExitStack

import lightning as L
import pytest
import torch
import torch.distributed.checkpoint as dcp
from jsonargparse import Namespace
from lightning.pytorch.strategies import ModelParallelStrategy

from gpt2_lightning.errors import CheckpointError, RunError
from gpt2_lightning.train.run_dir import (
    RunLock,
    check_parallel_size,
    checkpoint_to_load,
    prepare_fit,
    resume_without_init_from,
    vet_checkpoint_to_load,
)

VOCAB = 50257


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, **kwargs)


def test_the_run_lock_is_held_inside_its_block_and_refuses_a_second_run(tmp_path):
    with RunLock(tmp_path) as lock:
        assert lock.path.read_text() == f"{socket.gethostname()} {os.getpid()}"
        with pytest.raises(RunError, match=rf"another fit \(pid {os.getpid()}\) is running in {tmp_path}"):
            RunLock(tmp_path).acquire()
    assert not lock.path.exists()
    with RunLock(tmp_path) as again:  # released: the next run takes it
        assert again.held


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    (tmp_path / ".fit.lock").write_text(f"{socket.gethostname()} 999999999")  # no such process
    with RunLock(tmp_path) as lock:
        assert lock.held and lock.path.read_text().endswith(str(os.getpid()))


def test_last_means_the_directorys_last_checkpoint_when_there_is_one(tmp_path):
    last = tmp_path / "last.ckpt"
    assert checkpoint_to_load(None, last) is None
    assert checkpoint_to_load("last", last) is None  # nothing yet: a fresh start
    last.write_bytes(b"")
    assert checkpoint_to_load("last", last) == last
    assert checkpoint_to_load(str(tmp_path / "other.ckpt"), last) == tmp_path / "other.ckpt"


def test_a_split_that_is_not_the_device_count_is_refused():
    run = trainer(strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1))
    with pytest.raises(RunError, match=r"2 × tensor_parallel_size=1 = 2 ways, but the run has 1 devices.*size 1$"):
        check_parallel_size(run)
    check_parallel_size(trainer(strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1)))


def test_what_will_be_loaded_is_vetted(tmp_path):
    with pytest.raises(RunError, match="vocab_size=100 cannot hold the GPT-2 token ids.*>= 50257"):
        vet_checkpoint_to_load(None, trainer(), 100)
    vet_checkpoint_to_load(tmp_path / "missing.ckpt", trainer(), VOCAB)  # Lightning names a missing path itself
    truncated = tmp_path / "truncated.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated.ckpt is truncated or corrupt"):
        vet_checkpoint_to_load(truncated, trainer(), VOCAB)
    sharded = tmp_path / "sharded.ckpt"
    dcp.save({"w": torch.zeros(4)}, checkpoint_id=sharded)
    with pytest.raises(RunError, match="sharded.ckpt is a sharded \\(FSDP\\) checkpoint; resume it with"):
        vet_checkpoint_to_load(sharded, trainer(), VOCAB)


def test_a_fresh_fit_where_a_run_left_checkpoints_is_refused_and_the_lock_ends_with_the_command(tmp_path):
    last = tmp_path / "checkpoints" / "last.ckpt"
    with ExitStack() as resources:
        prepare_fit(trainer(), last, None, VOCAB, resources)  # a fresh run in an empty directory
        assert (last.parent / ".fit.lock").exists()
    assert not (last.parent / ".fit.lock").exists()
    last.write_bytes(b"")
    with ExitStack() as resources, pytest.raises(RunError, match="already holds a run's checkpoints: pass "
                                                                 "--ckpt_path last"):
        prepare_fit(trainer(), last, None, VOCAB, resources)


def test_a_resume_takes_the_checkpoints_architecture_instead_of_init_from(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"hyper_parameters": {"config": {"n_layer": 2, "n_embd": 64}}}, path)
    model = Namespace(config=Namespace(n_layer=4, n_embd=128, n_head=4), init_from="gone/hf-directory")
    assert resume_without_init_from(model, path)
    assert (model.config.n_layer, model.config.n_embd, model.config.n_head, model.init_from) == (2, 64, 4, None)
    path.write_bytes(b"not a checkpoint")  # unreadable: left to the vetting, which names it
    model = Namespace(config=Namespace(n_layer=4), init_from="x")
    assert not resume_without_init_from(model, path) and model.init_from == "x"


@pytest.mark.parametrize("content", [b"", b"\xff\xfe not utf-8", b"host-only"])
def test_a_lock_this_package_did_not_write_is_named_with_the_fix(tmp_path, content):
    (tmp_path / ".fit.lock").write_bytes(content)
    with pytest.raises(RunError, match=rf"^{tmp_path}/\.fit\.lock is not a lock gpt2-lightning wrote .*delete it$"):
        RunLock(tmp_path).acquire()
