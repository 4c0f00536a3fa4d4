"""The reliability properties (docs/reliability.md) that need no training run: interrupted saves and writes recover,
bad token ids and local paths are named. Through real runs, kills and crafted checkpoints:
tests/integration/test_reliability.py."""

import os
from pathlib import Path

import pytest
import torch

from gpt2_lightning.cli import main
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.files import write_atomically
from gpt2_lightning.model import GPT
from gpt2_lightning.train.checkpoint_io import recover_sharded_checkpoint

# ---- interrupted saves --------------------------------------------------------------------------------------------


def shard_dir(path: Path, label: str) -> Path:
    path.mkdir(parents=True)
    (path / "meta.pt").write_text(label)
    return path


@pytest.mark.parametrize(
    "present, expected",
    [
        (["last.ckpt", "last.ckpt.saving"], "old"),  # killed while writing shards: the partial save is discarded
        (["last.ckpt.old", "last.ckpt.saving"], "new"),  # killed between the two renames: the swap is finished
        (["last.ckpt", "last.ckpt.old"], "new"),  # killed before deleting the old one
        (["last.ckpt.saving"], None),  # the first save never completed: nothing to resume
    ],
)
def test_an_interrupted_sharded_save_recovers_to_a_complete_checkpoint(tmp_path, present, expected):
    labels = {"last.ckpt": "new" if "last.ckpt.old" in present else "old", "last.ckpt.old": "old",
              "last.ckpt.saving": "new"}
    for name in present:
        shard_dir(tmp_path / name, labels[name])
    recover_sharded_checkpoint(tmp_path / "last.ckpt")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == (["last.ckpt"] if expected else [])
    if expected:
        assert (tmp_path / "last.ckpt" / "meta.pt").read_text() == expected


def test_a_sharded_save_that_dies_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    """The save itself, one process (torch.distributed.checkpoint writes without a process group): a failure while
    shards are written leaves last.ckpt as it was, where Lightning's strategy had already emptied it."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    from gpt2_lightning.train.checkpoint_io import AtomicModelParallelStrategy

    def state(step):
        return {"state_dict": {"w": torch.full((4,), float(step))}, "optimizer_states": [], "global_step": step}

    def dies_midway(converted_state, path):
        (Path(path) / "__0_0.distcp").write_bytes(b"")
        raise OSError("killed while writing shards")

    for strategy, survives in ((AtomicModelParallelStrategy(), True), (ModelParallelStrategy(), False)):
        path = tmp_path / type(strategy).__name__ / "last.ckpt"
        strategy.save_checkpoint(state(1), path)
        before = {p.name: p.read_bytes() for p in path.iterdir()}
        with monkeypatch.context() as patch:
            patch.setattr("lightning.pytorch.strategies.model_parallel._distributed_checkpoint_save", dies_midway)
            with pytest.raises(OSError, match="killed while writing"):
                strategy.save_checkpoint(state(2), path)
        after = {p.name: p.read_bytes() for p in path.iterdir()}
        assert (after == before) is survives
    recover_sharded_checkpoint(tmp_path / "AtomicModelParallelStrategy" / "last.ckpt")
    assert [p.name for p in (tmp_path / "AtomicModelParallelStrategy").iterdir()] == ["last.ckpt"]


def test_an_interrupted_write_keeps_the_previous_file(tmp_path):
    """The one write path of checkpoints, converted weights, analysis runs and the fetched corpus."""
    path = tmp_path / "kept.json"
    path.write_text("old")

    def interrupted(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, interrupted)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["kept.json"]  # the partial file removed
    write_atomically(path, lambda tmp: tmp.write_text("new"))
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["kept.json"]


# ---- bad input: one line with the fix -------------------------------------------------------------------------------


def test_token_ids_outside_the_vocabulary_are_named():
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(ValueError, match=r"token id 50 is outside the model's vocabulary \(0 … 49\)"):
        model(torch.tensor([[1, 50]]))
    with pytest.raises(ValueError, match="token id -1 is outside"):
        model(torch.tensor([[-1, 2]]))


def test_a_missing_local_path_is_not_sent_to_the_hub(capsys):
    with pytest.raises(SystemExit, match="runs/last.ckpt: no such file or directory \\(a local path, not a hub id\\)"):
        main(["generate", "--checkpoint", "runs/last.ckpt"])
