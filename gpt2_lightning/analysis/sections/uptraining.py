"""Section 4.4, GQA from pretrained weights, as the GQA paper claims it (Ainslie et al. 2023, §2.1 and its ablations):
the section-4 MHA baseline converted to GQA-2 with mean-pooled, first-head or random key/value heads, uptrained
for α of its pretraining tokens, against the same MHA continued for those tokens (the ceiling) and GQA-2 trained
from scratch for the same total tokens (its section-4 run, continued the same way); the recovered fraction
R(α) = (L_converted − L_uptrained) / (L_converted − L_MHA-continued)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import torch

from gpt2_lightning.analysis.budgets import Budget
from gpt2_lightning.analysis.lm_runs import eval_loss, lm_config, lm_data, lm_spec, train_lm
from gpt2_lightning.analysis.run_cache import RunCache
from gpt2_lightning.analysis.statistics import Comparison, holm, paired, verdict
from gpt2_lightning.checkpoints import load, save
from gpt2_lightning.checkpoints.convert import mha_to_gqa
from gpt2_lightning.model import GPT

N_KV = 2  # GQA-2: the conversion's key/value heads, the variant section 4 also trains from scratch
FRACTIONS = (0.025, 0.05, 0.10, 0.20)  # α: uptraining tokens over pretraining tokens, around the paper's 5%
PAPER_ALPHA = 0.05  # the paper's uptraining proportion
RECOVERED = 0.9  # "most of the quality recovered": R(5%) at least this (fixed before measuring: the review's E4)
INITS = {"mean": "mean-pool", "first": "first head", "random": "random"}  # how the shared K/V heads start
ARMS = {"mha": "MHA continued (the ceiling)", "scratch": "GQA-2 from scratch, continued (equal total tokens)",
        **{init: f"converted, {name}" for init, name in INITS.items()}}
# The pretraining schedule's final rate (LM_LR / 10), held constant, so that each α is a prefix of one run: a fresh
# AdamW, a warmup of a quarter of the shortest α, then this rate for every arm alike.
UPTRAIN_LR = 3e-4


def _replace_kv(model: GPT, n_kv_head: int, heads: Callable[[torch.Tensor], torch.Tensor]) -> GPT:
    """A copy of multi-head `model` with `n_kv_head` key/value heads, `heads` mapping each layer's key (and value)
    rows, viewed as (n_kv_head, group, head_dim, ...), to the (n_kv_head·head_dim, ...) rows of the shared heads —
    query head i then reads shared head i // group, as `mha_to_gqa` and attention pair them."""
    config = model.config
    if config.kv_heads != config.n_head:
        raise ValueError(f"a conversion to GQA needs a multi-head model; this one has n_kv_head={config.n_kv_head}")
    converted = GPT(dataclasses.replace(config, n_kv_head=n_kv_head))  # validates that n_kv_head divides
    group, hs, C = config.n_head // n_kv_head, config.head_dim, config.n_embd
    state = model.state_dict()
    for key in [k for k in state if ".attn.c_attn." in k]:
        q, k, v = state[key].split(C, dim=0)
        grouped = [x.reshape(n_kv_head, group, hs, *x.shape[1:]) for x in (k, v)]
        state[key] = torch.cat([q, *(heads(x) for x in grouped)], dim=0)
    converted.load_state_dict(state)
    return converted.to(device=model.lm_head.weight.device, dtype=model.lm_head.weight.dtype).train(model.training)


def first_head_gqa(model: GPT, n_kv_head: int) -> GPT:
    """`model` with `n_kv_head` key/value heads, each the first head of its group (the GQA paper's "first"
    ablation): the other heads' keys and values are dropped, not averaged."""
    return _replace_kv(model, n_kv_head, lambda x: x[:, 0].flatten(0, 1))


def random_gqa(model: GPT, n_kv_head: int, seed: int) -> GPT:
    """`model` with `n_kv_head` key/value heads initialised afresh as GPT-2 initialises a projection (weights
    N(0, 0.02), biases 0) from `seed` (the paper's "random" ablation): nothing of the trained keys and values kept."""
    generator = torch.Generator().manual_seed(seed)

    def fresh(x: torch.Tensor) -> torch.Tensor:
        rows = x[:, 0].flatten(0, 1)
        if rows.dim() == 1:  # a bias
            return torch.zeros_like(rows)
        return (torch.randn(rows.shape, generator=generator) * 0.02).to(rows)

    return _replace_kv(model, n_kv_head, fresh)


def convert(model: GPT, n_kv_head: int, init: str, seed: int) -> GPT:
    """`model` (MHA) as GQA with `n_kv_head` shared heads initialised by `init` (a key of INITS); `seed` draws the
    random heads."""
    if init == "mean":
        return mha_to_gqa(model, n_kv_head)
    if init == "first":
        return first_head_gqa(model, n_kv_head)
    if init == "random":
        return random_gqa(model, n_kv_head, seed)
    raise ValueError(f"unknown initialisation {init!r}: choose one of {', '.join(INITS)}")


def uptrain_steps(budget: Budget) -> dict[float, int]:
    """Optimizer steps of each α: α of the pretraining steps (the same batch, so α of its tokens), at least one."""
    return {alpha: max(1, round(alpha * budget.steps)) for alpha in FRACTIONS}


def _continue(budget: Budget, seed: int, arm: str, source: str, steps: int, every: int, warmup: int,
              out: Path) -> dict:
    """One arm: the weights at `source`, converted unless `arm` is "mha" or "scratch", evaluated, then trained on
    for `steps` at UPTRAIN_LR, validated every `every` steps; the curve, the throughput and the starting loss."""
    model = load(source)
    if arm in INITS:
        model = convert(model, N_KV, arm, seed)
    start = save(model, out.with_name(f"{out.name}-start"), format="native")
    start_loss = eval_loss(model.eval(), lm_data(budget, seed), budget.eval_batches)
    result = train_lm(budget, model.config, seed, steps, out, learning_rate=UPTRAIN_LR, min_learning_rate=UPTRAIN_LR,
                      warmup_steps=warmup, init_from=str(start), val_every=every)
    return {**result, "start": start_loss}


def measure(budget: Budget, results: dict[str, list[dict]], cache: RunCache) -> dict:
    """Every arm × budget.uptrain_seeds, from the section-4 runs of that seed (`results`: "baseline" and "gqa2"):
    the validation loss at the start (α = 0: for a conversion, L_converted) and after each α's steps."""
    steps = uptrain_steps(budget)
    longest, every = max(steps.values()), math.gcd(*steps.values())
    warmup = min(steps.values()) // 4
    found = {"steps": {str(alpha): n for alpha, n in steps.items()}, "pretrain_steps": budget.steps,
             "seeds": list(budget.uptrain_seeds), "warmup": warmup, "arms": {}}
    for seed in budget.uptrain_seeds:
        at = budget.seeds.index(seed)
        for arm in ARMS:
            source = results[f"gqa{N_KV}" if arm == "scratch" else "baseline"][at]["weights"]
            config = lm_config(budget, {} if arm == "mha" else {"n_kv_head": N_KV})
            out = cache.directory / f"uptrain-{arm}-seed{seed}"
            spec = lm_spec(budget, config, longest, seed=seed, start=arm, pretrain_steps=budget.steps,
                           learning_rate=UPTRAIN_LR, warmup=warmup, every=every)
            result = cache.run(out.name, spec,
                               lambda: _continue(budget, seed, arm, source, longest, every, warmup, out), out)
            curve = {step: loss for step, loss in result["curve"]}
            found["arms"].setdefault(arm, []).append(
                {"start": result["start"], "at": {str(alpha): curve[n] for alpha, n in steps.items()}})
    return found


def recovered_fraction(converted: float, uptrained: float, ceiling: float) -> float | None:
    """R = (L_converted − L_uptrained) / (L_converted − L_MHA-continued): the share of what conversion lost that
    uptraining won back, against the MHA model continued for the same tokens. None (undefined, reported as such)
    when the ceiling is not below the converted loss: there is then nothing to recover, and no ratio to form."""
    gap = converted - ceiling
    if gap <= 0:
        return None
    return (converted - uptrained) / gap


def judge(found: dict) -> dict:
    """Losses per arm and α over seeds, R(α) per initialisation and seed, and the paper's two claims at α = 5%,
    paired by seed and Holm-adjusted over the three tests: mean-pool below first head, first head below random
    (expected "lower" each), and R(5%) of mean-pool above RECOVERED ("higher"; inconclusive when R is undefined for
    a seed). Also, not judged: mean-pool at 5% against the ceiling and against GQA-2 from scratch at equal tokens."""
    alphas, arms = list(found["steps"]), found["arms"]
    losses = {arm: {a: [run["at"][a] for run in runs] for a in alphas} for arm, runs in arms.items()}
    starts = {arm: [run["start"] for run in runs] for arm, runs in arms.items()}
    recovered = {init: {a: [recovered_fraction(c, u, m) for c, u, m in zip(starts[init], losses[init][a],
                                                                           losses["mha"][a])]
                        for a in alphas} for init in INITS}
    a = str(PAPER_ALPHA)
    r = recovered["mean"][a]
    tests: dict[str, Comparison | None] = {
        "mean < first": paired(losses["mean"][a], losses["first"][a]),
        "first < random": paired(losses["first"][a], losses["random"][a]),
        "recovered": None if None in r else paired(r, [RECOVERED] * len(r))}
    expected = {"mean < first": "lower", "first < random": "lower", "recovered": "higher"}
    adjusted = dict(zip(tests, holm([None if t is None else t.p for t in tests.values()])))
    verdicts = {name: "inconclusive" if t is None else verdict(t, expected[name], p=adjusted[name])
                for name, t in tests.items()}
    return {"losses": losses, "starts": starts, "recovered": recovered, "tests": tests, "adjusted": adjusted,
            "verdicts": verdicts,
            "vs_ceiling": paired(losses["mean"][a], losses["mha"][a]),
            "vs_scratch": paired(losses["mean"][a], losses["scratch"][a])}
