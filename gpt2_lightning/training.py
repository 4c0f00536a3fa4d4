"""Trainer plumbing the CLI installs so that a run survives what kills long runs.

- `AtomicCheckpointIO`: single-file checkpoints written to a temporary file and renamed into place.
- `AtomicModelParallelStrategy`: FSDP2's sharded checkpoint directories written beside the old one and swapped in
  when every rank has finished; `recover_sharded_checkpoint` completes or discards an interrupted swap.
- `StepCheckpoint`: ModelCheckpoint whose step-triggered saves come after the step's metrics are written, so a
  kill right after a save never loses the logged values of steps the checkpoint holds.
- `LoggedStepIsOptimizerStep`: logged steps equal optimizer steps after a resume too.
- `RunLock`: one `fit` per checkpoint directory; the lock of a killed run is taken over.
- `PreemptionCheckpoint`: on SIGTERM (what SLURM and Kubernetes send before killing), save `last.ckpt` at the next
  optimizer-step boundary and stop with exit status 143, so a scheduler never takes a preempted run for finished.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.rank_zero import _get_rank
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException

from gpt2_lightning.token_cache import process_alive

PREEMPTED_EXIT_STATUS = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended


class RunError(RuntimeError):
    """A run that cannot start or go on as asked; the message says what to do instead."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file and rename it into place.

    A run killed mid-save leaves the previous `last.ckpt` intact; a failed save (a full disk) removes its partial
    temporary file instead of leaving it to fill the disk.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        path = os.fspath(path)
        tmp = f"{path}.tmp"
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


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
    """Lightning's ModelParallelStrategy (FSDP2) whose sharded saves never destroy the previous checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: _PATH, storage_options: Any | None = None) -> None:
        path = Path(self.broadcast(os.fspath(filepath)))
        if not self._save_distributed_checkpoint:
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


class StepCheckpoint(ModelCheckpoint):
    """ModelCheckpoint with its step-triggered save moved from the end of batch i (before Lightning writes batch
    i's metrics) to the start of batch i + 1 or the end of training, after flushing the loggers.

    The trained state is the same at both moments (validation in between uses no training RNG), so the checkpoint
    is too; but a run killed just after a save at the end of batch i would resume at step i + 1 with step i's
    train/loss never written. Arguments are ModelCheckpoint's.
    """

    _pending: tuple | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._pending = (outputs, batch, batch_idx)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._save_pending(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save_pending(trainer, pl_module)
        super().on_train_end(trainer, pl_module)

    def _save_pending(self, trainer, pl_module) -> None:
        if self._pending is None:
            return
        pending, self._pending = self._pending, None
        for logger in trainer.loggers:
            flush = getattr(logger.experiment, "flush", None)
            if callable(flush):
                flush()
        super().on_train_batch_end(trainer, pl_module, *pending)


class LoggedStepIsOptimizerStep(L.Callback):
    """Logged steps are the optimizer steps they describe, before and after a resume.

    Lightning logs at its loop's count of batches that stepped, which equals the global step in a straight run;
    on a restore it re-derives that count from where in a batch the checkpoint was saved and can land one off
    (the resumed curve then sits one step right of the uninterrupted one). Set it to the global step before each
    batch.
    """

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step


def is_launching_process() -> bool:
    """Global rank 0 before the ranks are launched: the process the user started (node 0, rank 0)."""
    return os.environ.get("NODE_RANK", "0") == "0" and _get_rank() in (None, 0)


class RunLock:
    """One `fit` at a time per checkpoint directory: `<dir>/.fit.lock` holds the host and pid of the running one."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.path = Path(directory) / ".fit.lock"
        self.held = False

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._acquire()
        except OSError as err:
            raise RunError(f"cannot write to {self.path.parent} ({err.strerror or err}); choose a writable "
                           "--trainer.default_root_dir") from None

    def _acquire(self) -> None:
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                host, _, pid = self.path.read_text().partition(" ")
                if host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid)):
                    self.path.unlink(missing_ok=True)  # its run was killed: take over
                    continue
                where = f"pid {pid}" + ("" if host == socket.gethostname() else f" on {host}")
                raise RunError(
                    f"another fit ({where}) is running in {self.path.parent}: two runs there would interleave their "
                    f"logs and checkpoints. Wait for it, or use another --trainer.default_root_dir (if that run is "
                    f"gone, delete {self.path})"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return
        raise RunError(f"could not take {self.path}: other runs keep claiming it; try again")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM: save last.ckpt at the next optimizer-step boundary (where a resume is exact) and stop there,
    after the step is logged; `preempted` tells the command to exit with status 143.

    Lightning only records the signal (and, on one device, lets the run go on to the end of the epoch); ranks agree
    through one reduction per step, so every rank takes part in a sharded save.
    """

    def __init__(self, last_path: str | os.PathLike) -> None:
        self.last_path = os.fspath(last_path)
        self.preempted = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-accumulation: the data position and RNG state are exact only at a step boundary
        received = bool(getattr(trainer, "received_sigterm", False))
        if trainer.world_size > 1:
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if received and not self.preempted:
            trainer.save_checkpoint(self.last_path)
            self.preempted = True
            trainer.should_stop = True

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """SIGTERM during validation: Lightning stops there; a single process saves what training reached."""
        if isinstance(exception, SIGTERMException) and trainer.world_size == 1 and not self.preempted:
            trainer.save_checkpoint(self.last_path)
            self.preempted = True
