"""Checkpoint saves that an interruption never destroys: single files and FSDP2's sharded directories.

- `AtomicCheckpointIO`: single-file checkpoints written to a temporary file beside the target, renamed into place.
- `AtomicModelParallelStrategy`: FSDP2's sharded checkpoint directories written beside the old one and swapped
  in when every rank has finished; `recover_sharded_checkpoint` completes or discards an interrupted swap.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy

from gpt2_lightning.files import full_disk_error, write_atomically
from gpt2_lightning.train.lightning_compat import saves_sharded


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file beside it and rename it into place.

    A run killed mid-save leaves the previous `last.ckpt` intact; a failed save (a full disk) removes its partial
    temporary file and names the checkpoint and its disk. Lightning's own `TorchCheckpointIO` saves through an
    fsspec transaction whose local opener stages the whole file in the system temporary directory ($TMPDIR) and
    then moves it: a copy (not atomic) whenever the run directory is on another filesystem, as it is on most
    clusters, and a small $TMPDIR fails every save with an error that blames the run directory. Here nothing is
    written anywhere but beside the checkpoint.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path) -> None:
            try:
                with open(tmp, "wb") as f:
                    torch.save(checkpoint, f)
            except (OSError, RuntimeError) as err:  # torch's zip writer reports a failed write as a RuntimeError
                raise full_disk_error(path) or err from err

        write_atomically(path, write)


def _staging(path: Path) -> Path:
    return path.with_name(path.name + ".saving")


def _retired(path: Path) -> Path:
    return path.with_name(path.name + ".old")


def recover_sharded_checkpoint(path: Path) -> None:
    """Leave `path` as the newest complete sharded checkpoint after a save that was interrupted.

    A save writes `<path>.saving/`; once every rank has written, `<path>` becomes `<path>.old/`, `.saving` becomes
    `<path>`, `.old` is deleted. So: `.old` present means `.saving` was complete (finish the swap); `.saving`
    without `.old` means the save did not complete (discard it).
    """
    staging, retired = _staging(path), _retired(path)
    if retired.exists():
        if not path.exists() and staging.exists():
            os.rename(staging, path)
        if path.exists():
            shutil.rmtree(retired, ignore_errors=True)
    if staging.exists():
        shutil.rmtree(staging, ignore_errors=True)


class AtomicModelParallelStrategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy (FSDP2) whose sharded saves never destroy the previous checkpoint.

    Lightning writes a sharded save into the checkpoint's own directory, so a save that fails or is killed midway
    leaves neither the old checkpoint nor a new one; here it is written beside it and swapped in when complete.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: _PATH, storage_options: Any | None = None) -> None:
        path = Path(self.broadcast(os.fspath(filepath)))
        if not saves_sharded(self):
            return super().save_checkpoint(checkpoint, path, storage_options)
        staging = _staging(path)
        if self.global_rank == 0:
            recover_sharded_checkpoint(path)  # leftovers of an earlier interrupted save
        self.barrier("checkpoint_staging")
        super().save_checkpoint(checkpoint, staging, storage_options)
        self.barrier("checkpoint_written")
        if self.global_rank == 0:
            retired = _retired(path)
            if path.exists():
                os.rename(path, retired)
            os.rename(staging, path)
            shutil.rmtree(retired, ignore_errors=True)
        self.barrier("checkpoint_swapped")
