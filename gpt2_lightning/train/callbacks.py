"""Callbacks a run needs and Lightning 2.6.6 lacks, each saying what in Lightning it works around.

- `StepCheckpoint`: ModelCheckpoint whose step-triggered saves come after the step's metrics are written.
- `LoggedStepIsOptimizerStep`: logged steps equal optimizer steps after a resume too.
- `ExplainStop`: after Ctrl-C, how to continue; after a resume with nothing left to train, how to train further.
- `PreemptionCheckpoint`: on SIGTERM (what SLURM and Kubernetes send before killing), save `last.ckpt` at the
  next optimizer-step boundary and stop with exit status 143.
- `TokenThroughput`: tokens/s and MFU, against a peak that is stated and, on a CPU, measured once per machine.
"""

from __future__ import annotations

import errno
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.throughput import Throughput, get_available_flops
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from gpt2_lightning.files import disk_of, write_atomically
from gpt2_lightning.train.lightning_compat import align_run_batch_count, set_logged_step

PREEMPTED_EXIT_STATUS = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended


class StepCheckpoint(ModelCheckpoint):
    """ModelCheckpoint with its step-triggered save moved from the end of batch i (before Lightning writes batch
    i's metrics) to the start of batch i + 1 or the end of training, after flushing the loggers.

    Lightning's ModelCheckpoint saves in `on_train_batch_end`, which the 2.6.6 training loop calls before it
    saves the loggers' metrics for that batch (loops/training_epoch_loop.py); no upstream change moves it. The
    trained state is the same at both moments (validation in between uses no training RNG), so the checkpoint is
    too; but a run killed just after a save at the end of batch i would resume at step i + 1 with step i's
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
    """Every logged number sits at the count of optimizer steps its weights had taken, before and after a resume:
    a batch's train/loss and train/lr at the steps before it (0 for the first batch), a validation at the steps
    before it (8 after 8 steps); the console prints the same numbers.

    Lightning logs at its loop's count of batches that stepped, which equals the global step during a batch of a
    straight run, but logs a validation inside the batch it follows (at 7 after 8 steps); on a restore it re-derives
    that count from where in a batch the checkpoint was saved and can land one off (the resumed curve then sat one
    step right of the uninterrupted one; `lightning_compat.set_logged_step` has the upstream issues). Set it to the
    global step before each batch and each validation, and keep the run's batch count, which the validation schedule
    follows, where a straight run has it (`lightning_compat.align_run_batch_count`).
    """

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        set_logged_step(trainer, trainer.global_step)
        align_run_batch_count(trainer)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            set_logged_step(trainer, trainer.global_step)


class ExplainStop(L.Callback):
    """Say why a fit ended where the plain end of training does not: Ctrl-C (Lightning exits 1 with "Detected
    KeyboardInterrupt" and nothing about continuing), and a resumed run that had nothing left to train (Lightning
    runs no step and says nothing)."""

    def __init__(self, last_path: str | os.PathLike) -> None:
        self.last_path = os.fspath(last_path)
        self.trained = False

    def on_train_batch_start(self, trainer: L.Trainer, *_) -> None:
        self.trained = True

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt) and trainer.is_global_zero:
            saved = (f"the last checkpoint, {self.last_path}, is intact" if os.path.exists(self.last_path) else
                     "no checkpoint was saved yet")
            print(f"interrupted at step {trainer.global_step}: {saved}; continue with the same command and "
                  "--ckpt_path last (it goes on from the last checkpoint, exactly)", file=sys.stderr, flush=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (not self.trained and trainer.is_global_zero and trainer.max_steps > 0
                and trainer.global_step >= trainer.max_steps):
            print(f"nothing to train: the run is already at step {trainer.global_step}, trainer.max_steps; to train "
                  "further, raise --trainer.max_steps (and model.lr_decay_steps for a longer schedule)", flush=True)


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM: save last.ckpt at the end of the batch it arrived in, an optimizer-step boundary (where a resume
    is exact), and stop there, after the step is logged; `preempted` tells the command to exit with status 143.

    What Lightning 2.6.6 does by itself (tests/integration/test_preemption.py checks it): its training loop raises
    `SIGTERMException`, a `SystemExit` without a code, so the process exits 0, at the end of the batch in which the
    signal arrived; with several ranks rank 0's flag is broadcast at the start of the next batch (PR #20825). It
    saves nothing, and a scheduler takes the preempted run for finished; exit 143 comes with PR #21623, unreleased
    in 2.6.6. This callback adds the save and the status: at that batch end, when it closes an optimizer step,
    every rank saves last.ckpt, any rank's signal counting (ranks that disagree deadlock: issue #20806). A signal
    that lands mid-accumulation or during validation ends the run at Lightning's exception instead, where a single
    process saves what training reached (`on_exception`).
    """

    def __init__(self, last_path: str | os.PathLike) -> None:
        self.last_path = os.fspath(last_path)
        self.preempted = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-accumulation: the data position and RNG state are exact only at a step boundary
        received = bool(getattr(trainer, "received_sigterm", False))
        if trainer.world_size > 1:
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if received and not self.preempted:
            trainer.save_checkpoint(self.last_path, weights_only=False)
            self.preempted = True
            trainer.should_stop = True

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """SIGTERM during validation: Lightning stops there; a single process saves what training reached."""
        if isinstance(exception, SIGTERMException) and trainer.world_size == 1 and not self.preempted:
            trainer.save_checkpoint(self.last_path, weights_only=False)
            self.preempted = True


class CheckpointBeforeFullDiskStop(L.Callback):
    """When a write fails for lack of space on another disk than the checkpoint's (the TensorBoard logs, most
    often), save last.ckpt before the run stops, so the steps since the last periodic save are kept.

    Loggers write at the end of an optimizer step, where a save is exact. One process only: with several ranks
    only rank 0 logs, and a save needs every rank.
    """

    def __init__(self, last_path: str | os.PathLike) -> None:
        self.last_path = Path(last_path)
        self.saved_at: int | None = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not (isinstance(exception, OSError) and exception.errno in (errno.ENOSPC, errno.EDQUOT)):
            return
        failed = Path(exception.filename) if exception.filename else None
        if trainer.world_size > 1 or failed is None or disk_of(failed) == disk_of(self.last_path.parent):
            return
        try:
            trainer.save_checkpoint(self.last_path, weights_only=False)
        except OSError:
            return  # the error that stopped the run is what gets reported
        self.saved_at = trainer.global_step
        print(f"{failed}: no space left on the disk mounted at {disk_of(failed)}; the run's state at step "
              f"{trainer.global_step} is saved first, in {self.last_path} (disk {disk_of(self.last_path.parent)})",
              file=sys.stderr, flush=True)


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


def peak_cache_file() -> Path:
    """Where measured CPU peaks are kept: `$GPT2_LIGHTNING_PEAK_CACHE`, else
    `$XDG_CACHE_HOME/gpt2-lightning/peak-flops.json` (~/.cache/...)."""
    if os.environ.get("GPT2_LIGHTNING_PEAK_CACHE"):
        return Path(os.environ["GPT2_LIGHTNING_PEAK_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpt2-lightning" / "peak-flops.json"


def cpu_key() -> str:
    """What a CPU peak depends on: the CPU model, torch's version (its matmul kernels) and the thread count."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def cpu_peak_flops(path: Path | None = None, remeasure: bool = False) -> tuple[float, str]:
    """(peak FLOP/s, where it came from) of this CPU: its fp32 matmul rate, measured once per `cpu_key` and kept in a
    JSON file, so every run on this machine divides by the same number (measured at each fit, it varied 11× over 12
    runs on a shared machine). A damaged file is measured again and rewritten; one that cannot be written is said.
    `remeasure`: measure again and keep the higher of the two rates — a rate measured while other work loaded the
    machine is too low, and a run that then reaches MFU > 1 has shown it (`TokenThroughput`)."""
    path = path or peak_cache_file()
    key, entries, before = cpu_key(), {}, 0.0
    try:
        loaded = json.loads(path.read_text())
        entries = loaded if isinstance(loaded, dict) else {}
        flops, measured = float(entries[key]["flops"]), entries[key]["measured"]
        if math.isfinite(flops) and flops > 0:
            if not remeasure:
                return flops, f"this CPU's fp32 matmul rate, measured {measured}, cached in {path}"
            before = flops
    except (OSError, ValueError, KeyError, TypeError):  # none yet, damaged, or not this machine's: measure below
        pass
    peak = max(measure_cpu_peak_flops(), before)
    entries[key] = {"flops": peak, "measured": time.strftime("%Y-%m-%d")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda tmp: tmp.write_text(json.dumps(entries, indent=1) + "\n"))
    except OSError as err:
        return peak, f"this CPU's fp32 matmul rate, measured now (not cached: {err})"
    return peak, f"this CPU's fp32 matmul rate, measured now, cached in {path}"


def _compute_dtype(precision: str) -> torch.dtype:
    """The dtype matmuls run in at a Trainer precision ("bf16-mixed", "16-true", "32-true", ...)."""
    for prefix, dtype in (("bf16", torch.bfloat16), ("16", torch.float16), ("64", torch.float64)):
        if str(precision).startswith(prefix):
            return dtype
    return torch.float32


def peak_flops(trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[float | None, str]:
    """(peak FLOP/s per device, where it came from): `model.peak_flops` when set, else Lightning's table for a known
    GPU at the training precision, else on a CPU its cached measured rate; None where the device is unknown."""
    if configured := getattr(pl_module.hparams, "peak_flops", None):
        return configured, "model.peak_flops"
    device = trainer.strategy.root_device
    if device.type == "cpu":
        return cpu_peak_flops()
    dtype = _compute_dtype(trainer.precision)
    if device.type == "cuda" and (peak := get_available_flops(device, dtype)):
        return peak, f"Lightning's table for {torch.cuda.get_device_name(device)} at {dtype}"
    return None, f"unknown for {device} at {dtype}"


class TokenThroughput(L.Callback):
    """Tokens per second over all ranks (`train/tokens_per_sec`) and MFU (`train/mfu`, per device), from the time
    between batch ends over a window of `window_size` batches, data loading included and validation excluded.

    Lightning's `Throughput` does the windowed arithmetic; its `ThroughputMonitor` callback is not used because it
    logs ~20 counters (batches, samples, FLOPs, per device and global, for validation too) where a user reads
    these two, under names that do not say tokens. Logged through the module, so they sit at the same steps as
    train/loss and reach the console. MFU divides by `peak_flops` (stated at the start of `fit`); where that is
    unknown, no MFU is logged. The module provides `flops_per_batch`.
    """

    def __init__(self, window_size: int = 10) -> None:
        self.window_size = window_size
        self.peak: float | None = None
        self._cached_cpu_peak = False  # the peak came from the CPU cache, which a run may find too low
        self._throughput: Throughput | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # rank 0 decides (reading or writing the cache once), every rank divides by the same number
        peak, source = trainer.strategy.broadcast(peak_flops(trainer, pl_module) if trainer.is_global_zero else None)
        self.peak, self._cached_cpu_peak = peak, "cached in" in source
        if trainer.is_global_zero:
            if peak:
                print(f"MFU is measured against {peak / 1e12:.3g} TFLOP/s per device ({source}; set model.peak_flops "
                      "to change it)", flush=True)
            else:
                print(f"MFU is not logged: the peak FLOP/s is {source}; set model.peak_flops", flush=True)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._throughput = self._window(trainer)
        self._start, self._batches, self._samples, self._tokens = time.perf_counter(), 0, 0, 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # the batch's kernels have finished, not just been queued
        self._batches, self._samples, self._tokens = (self._batches + 1, self._samples + batch[0].size(0),
                                                      self._tokens + batch[0].numel())
        self._throughput.update(time=time.perf_counter() - self._start, batches=self._batches, samples=self._samples,
                                lengths=self._tokens, flops=pl_module.flops_per_batch)
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-accumulation: rates are logged once per optimizer step
        metrics = self._throughput.compute()
        rate = metrics.get("device/items_per_sec")
        if rate is not None:
            pl_module.log("train/tokens_per_sec", rate * trainer.world_size)
        if "device/mfu" in metrics:
            if metrics["device/mfu"] > 1 and self._cached_cpu_peak:
                self._remeasure_peak(trainer, metrics["device/mfu"])
                return
            pl_module.log("train/mfu", metrics["device/mfu"])

    def _window(self, trainer: L.Trainer) -> Throughput:
        """A fresh rate window against the current peak."""
        return Throughput(available_flops=self.peak, world_size=trainer.world_size, window_size=self.window_size)

    def _remeasure_peak(self, trainer: L.Trainer, mfu: float) -> None:
        """MFU above 1 means the cached CPU peak was measured on a busy machine: one process measures again (now,
        between steps) and keeps the higher rate; with several ranks, a measurement would need them all, so MFU is
        dropped for this run and the fix said."""
        self._cached_cpu_peak = False  # once per run
        if trainer.world_size > 1:
            self._throughput.available_flops = None
            if trainer.is_global_zero:
                print(f"MFU {mfu:.2f} > 1: the cached CPU peak ({self.peak / 1e9:.0f} GFLOP/s) was measured on a busy "
                      f"machine; MFU is not logged for this run. Delete {peak_cache_file()} on an idle machine, or set "
                      "model.peak_flops", flush=True)
            return
        old, started = self.peak, time.perf_counter()
        self.peak, source = cpu_peak_flops(remeasure=True)
        self._throughput = self._window(trainer)
        self._start += time.perf_counter() - started  # the measurement is not training time
        print(f"MFU {mfu:.2f} > 1: the cached CPU peak ({old / 1e9:.0f} GFLOP/s) was measured on a busy machine; "
              f"measured again: {self.peak / 1e9:.0f} GFLOP/s ({source})", flush=True)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._throughput is not None:  # a validation inside fit: its time does not count as training time
            self._start += time.perf_counter() - self._validation_start
