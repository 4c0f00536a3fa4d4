"""Trainer plumbing the CLI installs so that a run survives what kills long runs.

- `AtomicCheckpointIO`: single-file checkpoints written to a temporary file and renamed into place.
- `AtomicModelParallelStrategy`: FSDP2's sharded checkpoint directories written beside the old one and swapped in
  when every rank has finished; `recover_sharded_checkpoint` completes or discards an interrupted swap.
- `StepCheckpoint`: ModelCheckpoint whose step-triggered saves come after the step's metrics are written, so a
  kill right after a save never loses the logged values of steps the checkpoint holds.
- `LoggedStepIsOptimizerStep`: logged steps equal optimizer steps after a resume too.
- `RunLock`: one `fit` per checkpoint directory; the lock of a killed run is taken over.
- `TokenThroughput`: Lightning's ThroughputMonitor counting tokens, with MFU against a stated peak.
- `StepProgressBar` (a terminal) and `ConsoleLog` (a file, a pipe, a batch job): progress in optimizer steps of
  the whole run, so totals are true across epochs and resumes.
- `read_lightning_checkpoint`: a checkpoint `fit` wrote (one file, or FSDP2's sharded directory) as one dict,
  a sharded index vetted first by `check_distributed_checkpoint` (torch.distributed.checkpoint unpickles it).
- `PreemptionCheckpoint`: on SIGTERM (what SLURM and Kubernetes send before killing), save `last.ckpt` at the next
  optimizer-step boundary and stop with exit status 143, so a scheduler never takes a preempted run for finished.
"""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import _get_rank
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import (
    ModelCheckpoint,
    ModelSummary,
    RichModelSummary,
    ThroughputMonitor,
    TQDMProgressBar,
)
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException

from gpt2_lightning.config import GPTConfig
from gpt2_lightning.errors import CheckpointError, UsageError
from gpt2_lightning.files import write_atomically
from gpt2_lightning.token_cache import process_alive

PREEMPTED_EXIT_STATUS = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended


class RunError(UsageError, RuntimeError):
    """A run that cannot start or go on as asked; the message says what to do instead."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file and rename it into place.

    A run killed mid-save leaves the previous `last.ckpt` intact; a failed save (a full disk) removes its partial
    temporary file instead of leaving it to fill the disk.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        save = super().save_checkpoint
        write_atomically(path, lambda tmp: save(checkpoint, tmp, storage_options))


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


def measure_cpu_peak_flops(n: int = 2048, repeats: int = 3) -> float:
    """This CPU's fp32 matmul rate: the best of a few (n × n) @ (n × n) products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


class _CountedFlops:
    """Lightning's model summary, its total FLOPs never a false 0.

    Lightning measures them on a forward of the module's `example_input_array`, which only single-device runs set
    (with several ranks, a sharded forward on rank 0 alone would wait forever for the others). Where it measured
    nothing, the total is `GPT.flops_per_token`'s count for one `block_size` sequence: the same forward, by formula.
    """

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        T = pl_module.config.block_size
        self._counted = round(pl_module.model.flops_per_token(T) * T)
        super().on_fit_start(trainer, pl_module)

    def summarize(self, *args: Any, total_flops: int, **kwargs: Any) -> None:
        super().summarize(*args, total_flops=total_flops or self._counted, **kwargs)


class CountedFlopsSummary(_CountedFlops, ModelSummary):
    """`ModelSummary` with the FLOPs of every run (`_CountedFlops`)."""


class RichCountedFlopsSummary(_CountedFlops, RichModelSummary):
    """`RichModelSummary` with the FLOPs of every run (`_CountedFlops`)."""


def count_summary_flops(trainer: L.Trainer) -> None:
    """Swap the trainer's Lightning model summary for its `_CountedFlops` version, keeping its settings."""
    counted = {ModelSummary: CountedFlopsSummary, RichModelSummary: RichCountedFlopsSummary}
    for i, callback in enumerate(trainer.callbacks):
        if type(callback) in counted:
            trainer.callbacks[i] = counted[type(callback)](callback._max_depth, **callback._summarize_kwargs)


class TokenThroughput(ThroughputMonitor):
    """Tokens per second (`train/device/items_per_sec`; `train/items_per_sec` over all ranks) and MFU
    (`train/device/mfu`) from the time between batch ends, data loading included and validation excluded.

    The peak MFU divides by is the module's `peak_flops` when set, else Lightning's table for GPUs at the
    training precision, else this CPU's measured fp32 matmul rate; it is printed and logged once
    (`system/peak_flops`). The module provides `flops_per_batch`.
    """

    def __init__(self, window_size: int = 10) -> None:
        super().__init__(batch_size_fn=lambda batch: batch[0].size(0), length_fn=lambda batch: batch[0].numel(),
                         window_size=window_size)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        configured = getattr(pl_module.hparams, "peak_flops", None)
        if configured:
            peak, source = configured, "model.peak_flops"
        elif self.available_flops:
            peak, source = self.available_flops, f"Lightning's table for {torch.cuda.get_device_name()}"
        elif trainer.strategy.root_device.type == "cpu":
            peak, source = measure_cpu_peak_flops(), "this CPU's measured fp32 matmul rate"
        else:
            peak, source = None, "unknown for this device"
        self.available_flops = peak
        for throughput in self._throughputs.values():
            throughput.available_flops = peak
        if stage == "fit" and trainer.is_global_zero:
            if peak:
                print(f"MFU is measured against {peak / 1e12:.3g} TFLOP/s per device ({source}; set model.peak_flops "
                      "to change it)", flush=True)
                for logger in trainer.loggers:
                    logger.log_metrics({"system/peak_flops": peak}, step=0)
            else:
                print(f"MFU is not logged: the peak FLOP/s of {trainer.strategy.root_device} is {source}; set "
                      "model.peak_flops", flush=True)


def _tokens_per_sec(trainer: L.Trainer) -> float | None:
    """The throughput monitor's latest tokens/s over all ranks (None until its window has filled)."""
    metrics = trainer.logged_metrics
    rate = metrics.get("train/items_per_sec", metrics.get("train/device/items_per_sec"))
    return None if rate is None else float(rate)


def _eta(trainer: L.Trainer, tokens_per_step: int) -> str:
    rate = _tokens_per_sec(trainer)
    if rate is None or trainer.max_steps <= 0:
        return "—"
    seconds = int((trainer.max_steps - trainer.global_step) * tokens_per_step / rate)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class StepProgressBar(TQDMProgressBar):
    """A progress bar over the run's optimizer steps (`trainer.max_steps`), starting where a resumed run stands,
    instead of batches of the current epoch (which read "Epoch 0/-2" and "201/19" after a resume)."""

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        if trainer.max_steps <= 0:
            return super().on_train_epoch_start(trainer)
        bar = self.train_progress_bar
        if bar.total != trainer.max_steps:
            bar.reset(total=trainer.max_steps)
            bar.n = bar.last_print_n = trainer.global_step
            bar.refresh()
        bar.set_description("train")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.max_steps <= 0:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar = self.train_progress_bar
        if not bar.disable and self._should_update(trainer.global_step, bar.total):
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.max_steps <= 0 or trainer.global_step >= trainer.max_steps:
            return super().on_train_epoch_end(trainer, pl_module)
        self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))  # one bar across epochs

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version, not a measurement
        return metrics


class ConsoleLog(L.Callback):
    """Plain log lines where no terminal shows a progress bar: every `every` optimizer steps (step, loss, learning
    rate, tokens/s, ETA) and after each validation, flushed at once so `tail -f` and job logs follow the run."""

    def __init__(self, every: int) -> None:
        self.every = max(1, every)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or (batch_idx + 1) % trainer.accumulate_grad_batches or step % self.every:
            return
        metrics = trainer.callback_metrics
        tokens_per_step = batch[0].numel() * trainer.accumulate_grad_batches * trainer.world_size
        rate = _tokens_per_sec(trainer)
        total = f"/{trainer.max_steps}" if trainer.max_steps > 0 else ""
        print(f"step {step}{total} | loss {float(metrics['train/loss']):.4f} | lr {float(metrics['train/lr']):.2e} | "
              f"{'—' if rate is None else f'{rate:,.0f}'} tokens/s | ETA {_eta(trainer, tokens_per_step)}", flush=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or "val/loss" not in trainer.callback_metrics:
            return
        metrics = trainer.callback_metrics
        print(f"step {trainer.global_step} | val/loss {float(metrics['val/loss']):.4f} | "
              f"val/ppl {float(metrics['val/ppl']):.2f}", flush=True)


# What the `.metadata` index of a torch.distributed.checkpoint directory may name; anything else is refused.
DCP_METADATA_MODULES = ("torch.distributed.checkpoint.metadata",)
DCP_METADATA_GLOBALS = {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
                        ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
                        ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath"),
                        ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset")}


class _DistributedMetadataUnpickler(pickle.Unpickler):
    """Unpickles a distributed-checkpoint index, admitting only the classes such an index is made of."""

    def find_class(self, module: str, name: str):
        allowed = (module in DCP_METADATA_MODULES or (module, name) in DCP_METADATA_GLOBALS
                   or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)))
        if not allowed:
            raise CheckpointError(
                f"refusing to load: the sharded checkpoint's .metadata names {module}.{name}, which a "
                "torch.distributed.checkpoint index never holds (loading it could run code). Use only checkpoints "
                "you wrote or trust; this one may have been tampered with"
            )
        return super().find_class(module, name)


def check_distributed_checkpoint(path: Path) -> None:
    """Read a sharded checkpoint's `.metadata` with the restricted unpickler before torch.distributed.checkpoint,
    which unpickles it without restriction, is allowed to (a crafted index otherwise runs code on load)."""
    index = path / ".metadata"
    if not index.is_file():
        raise CheckpointError(f"{path} is a directory without a .metadata index: not a complete sharded checkpoint")
    with open(index, "rb") as f:
        try:
            _DistributedMetadataUnpickler(f).load()
        except CheckpointError as err:
            raise CheckpointError(f"{index}: {err}") from None
        except Exception as err:
            raise CheckpointError(f"{index} is unreadable ({type(err).__name__}: {err}): the checkpoint is damaged") from None


def read_lightning_checkpoint(path: Path) -> dict:
    """A Lightning checkpoint as one dict: a `.ckpt` file, or the sharded `.ckpt` directory FSDP2 writes."""
    with torch.serialization.safe_globals([GPTConfig]):
        if not path.is_dir():
            return torch.load(path, map_location="cpu", weights_only=True)
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        check_distributed_checkpoint(path)

        with tempfile.TemporaryDirectory() as tmp:  # gather the shards into one file, without a process group
            dcp_to_torch_save(path, Path(tmp) / "full.pt")
            checkpoint = torch.load(Path(tmp) / "full.pt", map_location="cpu", weights_only=True)
        checkpoint.update(torch.load(path / "meta.pt", map_location="cpu", weights_only=True))
        return checkpoint

