"""The language-model runs the sections read: every variant × seed trained through the module, DataModule and
Trainer `fit` uses, on the budget's corpus in a compact vocabulary, weights saved for the sections that evaluate
them afterwards. Runs with the same seed are paired: the same data order, and the same initial values in every
tensor the variants share (`shared_init`)."""

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


def shared_init(config: GPTConfig, seed: int) -> GPT:
    """A fresh model of `config` whose tensors start, wherever the seed's MHA baseline has them too, equal to the
    baseline's: embeddings, LayerNorms, output projections, the queries, the first key/value heads (a GQA variant's
    heads are the first n_kv of the baseline's) and the first 4·n_embd MLP units (a widened MLP's extra units keep
    their own draw). A variant paired with the baseline by seed then differs from it at step 0 only in what it
    changes, and a per-seed difference in final loss measures the change, not two unrelated initialisations.
    The baseline itself comes out exactly as `GPT(config)` after `torch.manual_seed(seed)`."""
    baseline = GPTConfig(vocab_size=config.vocab_size, block_size=config.block_size, n_layer=config.n_layer,
                         n_head=config.n_head, n_embd=config.n_embd, dropout=config.dropout, bias=config.bias)
    torch.manual_seed(seed)
    reference = GPT(baseline).state_dict()
    torch.manual_seed(seed)
    model = GPT(config)
    C, kv_rows = config.n_embd, config.kv_heads * config.head_dim
    with torch.no_grad():
        for name, tensor in model.state_dict().items():  # views of the parameters: written in place
            if name not in reference:
                continue
            source = reference[name]
            if ".attn.c_attn." in name:  # rows [q | k | v]: the baseline's queries, its first kv_rows of k and v
                q, k, v = source.split(C, dim=0)
                source = torch.cat([q, k[:kv_rows], v[:kv_rows]])
            overlap = tuple(slice(0, min(a, b)) for a, b in zip(tensor.shape, source.shape))
            tensor[overlap] = source[overlap]
    return model


class _ValCurve(L.Callback):
    """Validation loss at each validation."""

    def __init__(self) -> None:
        self.points = []

    def on_validation_end(self, trainer, module) -> None:
        self.points.append((trainer.global_step, float(trainer.callback_metrics["val/loss"])))


def train_lm(budget: Budget, config: GPTConfig, seed: int, steps: int, out: Path, *, learning_rate: float = LM_LR,
             min_learning_rate: float | None = None, warmup_steps: int | None = None, init_from: str | None = None,
             val_every: int | None = None, **module_kwargs) -> dict:
    """Train through the module, DataModule and Trainer `fit` uses; the weights go to `out`. From `shared_init`
    unless `init_from` names weights to continue from. The schedule: `warmup_steps` (default a tenth of `steps`)
    then a cosine from `learning_rate` to `min_learning_rate` (default a tenth of it; equal to it, a constant rate);
    validation every `val_every` steps (default an eighth of the run). Returns the validation curve [(step, loss)]
    and the training throughput (tokens/s, validation included)."""
    data = lm_data(budget, seed)
    torch.manual_seed(seed)
    module = GPT2LightningModule(
        config, learning_rate=learning_rate,
        min_learning_rate=learning_rate / 10 if min_learning_rate is None else min_learning_rate,
        warmup_steps=max(1, steps // 10) if warmup_steps is None else warmup_steps, init_from=init_from,
        **module_kwargs)
    if init_from is None:
        module.model.load_state_dict(shared_init(config, seed).state_dict())
    curve = _ValCurve()
    started = time.perf_counter()
    train_quietly(module, data, steps, val_check_interval=val_every or max(1, steps // 8), check_val_every_n_epoch=None,
                  limit_val_batches=budget.eval_batches, callbacks=[curve])
    elapsed = time.perf_counter() - started
    save(module.model, out, format="native")
    return {"curve": curve.points, "tokens_per_sec": steps * budget.batch_size * budget.block_size / elapsed}


def lm_spec(budget: Budget, config: GPTConfig, steps: int, **extra) -> dict:
    """What a language-model run's measurements depend on, beyond the code."""
    return {"config": dataclasses.asdict(config), "steps": steps, "corpus": budget.corpus,
            "batch_size": budget.batch_size, "eval_batches": budget.eval_batches, **extra}


def train_variants(budget: Budget, cache: RunCache, variants: dict[str, dict] | None = None,
                   seeds: tuple[int, ...] | None = None, steps: int | None = None) -> dict[str, list[dict]]:
    """Every variant (default LM_VARIANTS) × seed (default budget.seeds, in that order; a seed is the same data
    order and initialisation for every variant) for `steps` (default budget.steps); each result also names the
    directory of its weights."""
    seeds, steps = seeds or budget.seeds, steps or budget.steps
    results = {}
    for name, fields in (LM_VARIANTS if variants is None else variants).items():
        config = lm_config(budget, with_window(fields, budget.window))
        for seed in seeds:
            length = "" if steps == budget.steps else f"-{steps}steps"
            out = cache.directory / f"lm-{name}{length}-seed{seed}"
            result = cache.run(out.name, lm_spec(budget, config, steps, seed=seed),
                               lambda: train_lm(budget, config, seed, steps, out), out)
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
