"""Every touch of Lightning's private API, in one place, each with what it works around and when it can go.

Written against lightning 2.6.6. tests/integration/test_lightning_compat.py checks each touch against the installed
Lightning (the attribute still exists and still means what we use it for), so an upgrade that moves one fails
there, by name, instead of somewhere in a training run.
"""

from __future__ import annotations

import lightning as L
from lightning.fabric.utilities.rank_zero import _get_rank
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.strategies import ModelParallelStrategy

WRITTEN_AGAINST = "2.6.6"


def launch_rank() -> int | None:
    """This process's global rank from the launcher's environment, None before any launcher set one.

    `lightning.fabric.utilities.rank_zero._get_rank` is the function Lightning itself uses for this; the public
    `rank_zero_only.rank` defaults to 0 where nothing set it, which cannot tell "rank 0" from "not launched yet".
    """
    return _get_rank()


def parallel_sizes(strategy: ModelParallelStrategy) -> tuple[int | str, int | str]:
    """(data_parallel_size, tensor_parallel_size) as configured ("auto" or a number): ModelParallelStrategy keeps
    them private until `setup_environment` resolves them, after the point where a wrong product must be refused."""
    return strategy._data_parallel_size, strategy._tensor_parallel_size


def saves_sharded(strategy: ModelParallelStrategy) -> bool:
    """Whether ModelParallelStrategy writes a sharded checkpoint directory (its `save_distributed_checkpoint`
    argument, kept only as a private attribute)."""
    return strategy._save_distributed_checkpoint


def set_logged_step(trainer: L.Trainer, step: int) -> None:
    """Make the step Lightning logs at equal `step`.

    Lightning logs at `fit_loop.epoch_loop._batches_that_stepped`, which a restore re-derives from where in a batch
    the checkpoint was saved and can land one off: the resume off-by-one of Lightning issues #18060 and #19815
    (fix proposed in PR #21772). Delete with that fix.
    """
    trainer.fit_loop.epoch_loop._batches_that_stepped = step


def align_run_batch_count(trainer: L.Trainer) -> None:
    """At a batch's start, make Lightning's count of the run's batches (`batch_progress.total.ready`, which an
    integer `val_check_interval` counts in) one more than the batches started before it, as in a straight run.

    A restore resets only the epoch's counters to the last completed batch (`_Progress.reset_on_restart`); a
    checkpoint saved at a batch's start (`StepCheckpoint`) leaves the run's count one ahead, so a run resumed from a
    periodic save validated one step early (at 15 instead of 16): Lightning issue #19367, fix proposed in PR #21411.
    Delete with that fix.
    """
    total = trainer.fit_loop.epoch_loop.batch_progress.total
    total.ready = total.started + 1


def progress_bar_due(bar: TQDMProgressBar, current: int, total: int) -> bool:
    """TQDMProgressBar's own rule for when to redraw (`refresh_rate`, and always at the end)."""
    return bar._should_update(current, total)


def is_attached(module: L.LightningModule) -> bool:
    """Whether a Trainer is attached: `module.trainer` raises when none is, so the private field is read."""
    return module._trainer is not None


class CommandLineOverCheckpoint:
    """A LightningCLI mix-in: the parsed command line stands when `--ckpt_path` is given.

    LightningCLI 2.6.6 (`_parse_ckpt_path`, added by PR #21116 for issues #20310 / #20801) re-parses the config
    with the checkpoint's hyper-parameters on top, so a resumed run silently ignored the command line and
    config.yaml recorded the checkpoint's values. Here nothing is replaced, and the module refuses a resume whose
    architecture or optimisation settings differ (`GPT2LightningModule.on_load_checkpoint`). Open upstream: PR
    #21455 (command line over checkpoint) and PR #21408 (an `adapt_checkpoint_hparams` hook); delete with them.
    """

    def _parse_ckpt_path(self) -> None:
        """Keep the command line: see the class docstring."""
