"""The language-model runs four sections read: every variant × seed trained through the module, DataModule and
Trainer `fit` uses, on the budget's corpus in a compact vocabulary, weights saved for the sections that evaluate
them afterwards."""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path

import lightning as L
import torch

from gpt2_lightning.analysis.budgets import Budget
from gpt2_lightning.analysis.english import CompactData, fetch_reference_corpus
from gpt2_lightning.analysis.experiment import train_quietly
from gpt2_lightning.analysis.run_cache import RunCache
from gpt2_lightning.checkpoints import save
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.model import GPT
from gpt2_lightning.train.module import GPT2LightningModule

LM_LR = 3e-3
LM_VARIANTS = {  # name → GPTConfig fields (the window, None here, filled in from the budget)
    "baseline": {},
    "rope": {"pos_encoding": "rope"},
    "gqa2": {"n_kv_head": 2},
    "window": {"sliding_window": None},
    "rope+gqa2+window": {"pos_encoding": "rope", "n_kv_head": 2, "sliding_window": None},
}


def with_window(fields: dict, window: int) -> dict:
    """A variant's GPTConfig fields with its sliding window (None in LM_VARIANTS) set to `window`."""
    return {k: (window if k == "sliding_window" else v) for k, v in fields.items()}


def lm_data(budget: Budget, seed: int, block_size: int | None = None) -> CompactData:
    """The DataModule every language-model run reads, prepared and set up (data order = seed)."""
    if budget.corpus == "builtin":
        source = {"source": "builtin", "val_size": 0.1}
    else:
        source = {"source": "files", "paths": [str(fetch_reference_corpus())], "val_size": 0.02}
    data = CompactData(budget.vocab_size, block_size=block_size or budget.block_size, batch_size=budget.batch_size,
                       seed=seed, **source)
    data.prepare_data()
    data.setup("fit")
    return data


def lm_config(budget: Budget, fields: dict) -> GPTConfig:
    """The budget's language-model shape with a variant's fields."""
    return GPTConfig(vocab_size=budget.vocab_size, block_size=budget.block_size, n_layer=budget.n_layer,
                     n_head=budget.n_head, n_embd=budget.n_embd, **fields)


class _ValCurve(L.Callback):
    """Validation loss at each validation."""

    def __init__(self) -> None:
        self.points = []

    def on_validation_end(self, trainer, module) -> None:
        self.points.append((trainer.global_step, float(trainer.callback_metrics["val/loss"])))


def train_lm(budget: Budget, config: GPTConfig, seed: int, steps: int, out: Path, **module_kwargs) -> dict:
    """Train through the module, DataModule and Trainer `fit` uses; the weights go to `out`. Returns the validation
    curve [(step, loss)] and the training throughput (tokens/s, validation included)."""
    data = lm_data(budget, seed)
    torch.manual_seed(seed)
    lr = module_kwargs.pop("learning_rate", LM_LR)
    module = GPT2LightningModule(config, learning_rate=lr, min_learning_rate=lr / 10, warmup_steps=max(1, steps // 10),
                                 **module_kwargs)
    curve = _ValCurve()
    started = time.perf_counter()
    train_quietly(module, data, steps, val_check_interval=max(1, steps // 8), check_val_every_n_epoch=None,
                  limit_val_batches=budget.eval_batches, callbacks=[curve])
    elapsed = time.perf_counter() - started
    save(module.model, out, format="native")
    return {"curve": curve.points, "tokens_per_sec": steps * budget.batch_size * budget.block_size / elapsed}


def lm_spec(budget: Budget, config: GPTConfig, steps: int, **extra) -> dict:
    """What a language-model run's measurements depend on, beyond the code."""
    return {"config": dataclasses.asdict(config), "steps": steps, "corpus": budget.corpus,
            "batch_size": budget.batch_size, "eval_batches": budget.eval_batches, **extra}


def train_variants(budget: Budget, cache: RunCache) -> dict[str, list[dict]]:
    """Every variant × seed (seed order = budget.seeds, the same data order per seed for every variant); each
    result also names the directory of its weights."""
    results = {}
    for name, fields in LM_VARIANTS.items():
        config = lm_config(budget, with_window(fields, budget.window))
        for seed in budget.seeds:
            out = cache.directory / f"lm-{name}-seed{seed}"
            result = cache.run(out.name, lm_spec(budget, config, budget.steps, seed=seed),
                               lambda: train_lm(budget, config, seed, budget.steps, out), out)
            results.setdefault(name, []).append({**result, "weights": str(out)})
    return results


@torch.no_grad()
def eval_loss(model: GPT, data: CompactData, batches: int) -> float:
    """Mean next-token loss over (up to `batches` of) the validation windows of `data`."""
    losses = []
    for (x, y), _ in zip(data.val_dataloader(), range(batches)):
        x, y = data.vocab.table[x], data.vocab.table[y]
        losses.append(model.loss(x, y).item())
    return statistics.mean(losses)
