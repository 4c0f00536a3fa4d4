"""Training runs for experiments (`analyze`, the probes): the module, data and Trainer `fit` uses, built in code.

No command-line strings and no CLI import: an experiment builds a `GPT2LightningModule` and a DataModule and
calls `train_quietly`, which runs `Trainer.fit` without progress bars, summaries or checkpoints (an
experiment keeps what it measures, not its weights).
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from typing import Any

import lightning as L


@contextmanager
def lightning_info_silenced():
    """Keep Lightning's per-run banners ("GPU available: …") out of an experiment's output, and its warning that
    a module with a validation step got no validation data (an experiment that measures afterwards gives none);
    other warnings stay."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"You defined a `validation_step` but have no `val_dataloader`")
            yield
    finally:
        logger.setLevel(level)


def train_quietly(
    module: L.LightningModule, data: L.LightningDataModule, max_steps: int, **trainer_kwargs: Any
) -> L.Trainer:
    """`Trainer.fit` for `max_steps` optimizer steps; `trainer_kwargs` override the quiet defaults."""
    settings = dict(max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, devices=1,
                    gradient_clip_val=1.0)
    settings.update(trainer_kwargs)
    with lightning_info_silenced():
        trainer = L.Trainer(**settings)
        trainer.fit(module, datamodule=data)
    return trainer
