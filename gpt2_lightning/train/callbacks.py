"""Callbacks a run needs and Lightning 2.6.6 lacks, each saying what in Lightning it works around.

- `StepCheckpoint`: ModelCheckpoint whose step-triggered saves come after the step's metrics are written.
- `LoggedStepIsOptimizerStep`: logged steps equal optimizer steps after a resume too.
- `PreemptionCheckpoint`: on SIGTERM (what SLURM and Kubernetes send before killing), save `last.ckpt` at the
  next optimizer-step boundary and stop with exit status 143.
- `TokenThroughput`: Lightning's ThroughputMonitor counting tokens, with MFU against a stated peak.
"""

from __future__ import annotations

import os
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ThroughputMonitor
from lightning.pytorch.utilities.exceptions import SIGTERMException

from gpt2_lightning.train.lightning_compat import set_logged_step, set_peak_flops

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
    """Logged steps are the optimizer steps they describe, before and after a resume.

    Lightning logs at its loop's count of batches that stepped, which equals the global step in a straight run;
    on a restore it re-derives that count from where in a batch the checkpoint was saved and can land one off
    (the resumed curve then sits one step right of the uninterrupted one; `lightning_compat.set_logged_step` has
    the upstream issues). Set it to the global step before each batch.
    """

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        set_logged_step(trainer, trainer.global_step)


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
        set_peak_flops(self, peak)
        if stage == "fit" and trainer.is_global_zero:
            if peak:
                print(f"MFU is measured against {peak / 1e12:.3g} TFLOP/s per device ({source}; set model.peak_flops "
                      "to change it)", flush=True)
                for logger in trainer.loggers:
                    logger.log_metrics({"system/peak_flops": peak}, step=0)
            else:
                print(f"MFU is not logged: the peak FLOP/s of {trainer.strategy.root_device} is {source}; set "
                      "model.peak_flops", flush=True)
