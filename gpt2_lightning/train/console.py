"""What a run prints: progress in optimizer steps, plain log lines where there is no terminal, Lightning's noise
filtered, and a sample of what the model learned at the end.

- `StepProgressBar` (a terminal) and `ConsoleLog` (a file, a pipe, a batch job): progress in optimizer steps of
  the whole run, so totals are true across epochs and resumes.
- `quiet_lightning`: advertisements and warnings no user can act on kept out of the console.
- `print_sample`: a short continuation of <|endoftext|> from the trained weights.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from gpt2_lightning.generate import Sampling, generate
from gpt2_lightning.model import GPT
from gpt2_lightning.tokenizer import EOT_ID, get_tokenizer
from gpt2_lightning.train.lightning_compat import progress_bar_due
from gpt2_lightning.train.parallel import is_sharded


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
        if not bar.disable and progress_bar_due(self, trainer.global_step, bar.total):
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


def _not_an_advertisement(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("💡 Tip")


def quiet_lightning() -> None:
    """Keep out of the console what no user can act on: Lightning's advertisements for its cloud products, a
    deprecation warning Lightning raises against its own use of torch, its warning that an iterable dataset with a
    length may repeat data across workers (ours gives each worker its own batches: data.py), and LightningCLI's
    warning that it was handed both `args` and a command line (the command always hands it its own words)."""
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended to run from within Python")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
    for name in ("lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(_not_an_advertisement)  # one function: a second call adds nothing


def print_sample(trainer: L.Trainer, module: L.LightningModule) -> None:
    """Show what the model learned: a short sample from the trained weights, printed by rank 0 (a sharded model is
    gathered first, every rank taking part)."""
    model = module.model
    if any(is_sharded(p) for p in model.parameters()):  # FSDP2: DTensors, gathered to one full copy
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not trainer.is_global_zero:
            return
        model = GPT(module.config)
        model.load_state_dict(state)
        model.to(module.device)
    if not trainer.is_global_zero:
        return
    prompt = torch.tensor([[EOT_ID]], device=module.device)
    model = model.eval()
    max_new = min(100, model.config.block_size - 1) if model.config.pos_encoding == "learned" else 100
    sampling = Sampling(temperature=0.8, top_k=200, generator=torch.Generator(module.device).manual_seed(0))
    out = generate(model, prompt, max_new, sampling)
    print("\n--- sample from the trained model ---\n" + get_tokenizer().decode(out[0, 1:].tolist()) + "\n---")
