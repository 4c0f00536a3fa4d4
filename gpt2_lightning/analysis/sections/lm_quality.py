"""Section 4, language-model quality: every variant's final validation loss over seeds against the baseline, the
unigram loss as the floor of a model that ignores context, and training throughput with the FLOPs that explain
it; and the GQA ladder (4.4): n_kv from n_head down to 1, each as is and with the MLP widened to restore the
parameter count (Llama 2's parameter matching), against MHA."""

from __future__ import annotations

import statistics

import numpy as np
import torch

from gpt2_lightning.analysis.budgets import Budget
from gpt2_lightning.analysis.english import CompactData
from gpt2_lightning.analysis.lm_runs import LM_VARIANTS, lm_config, lm_data, train_variants, with_window
from gpt2_lightning.analysis.run_cache import RunCache
from gpt2_lightning.analysis.statistics import Comparison, Expectation, holm, paired, tost, verdict
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.model import GPT

# nats, fixed before any run: "costs little / no worse" means equivalent to the baseline within this. exp(0.05) is 5%
# in perplexity; the review of the earlier analysis proposed it for this 4 × 128 shape (0.02 at 124M, where runs are
# closer to convergence): a quality cost beyond it is one a practitioner would weigh against the KV-cache saving.
MARGIN = 0.05
EXPECTED = {"rope": "lower", "gqa2": "higher", "window": "equivalent"}  # what each variant should do to the loss


def cost(config: GPTConfig) -> tuple[int, float]:
    """(parameters, forward FLOPs per token at the training length, by `GPT.flops_per_token`), built on the meta
    device (nothing allocated)."""
    with torch.device("meta"):
        model = GPT(config)
    return model.num_params(), model.flops_per_token(config.block_size)


def _relative(values: dict[str, float], reference: str) -> dict[str, float]:
    return {name: v / values[reference] - 1 for name, v in values.items()}


def _median_throughput(tokens_per_sec: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(v) for name, v in tokens_per_sec.items()}


def measure(budget: Budget, results: dict[str, list[dict]]) -> tuple[dict, CompactData, np.ndarray]:
    """(findings, the seed-1 DataModule, its validation tokens). Findings: per variant the final validation loss
    and the throughput per seed, its parameters and FLOPs per token, every curve, the unigram loss, and the
    corpus's size and coverage."""
    data = lm_data(budget, budget.seeds[0])
    val_tokens = np.concatenate(list(data.split_tokens(validation=True)))
    costs = {name: cost(lm_config(budget, with_window(LM_VARIANTS[name], budget.window))) for name in results}
    found = {"unigram": data.vocab.unigram_loss(data.vocab.table[torch.from_numpy(val_tokens)]),
             "n_tokens": data.cache.n_tokens, "coverage": data.vocab.coverage,
             "finals": {name: [r["curve"][-1][1] for r in per_seed] for name, per_seed in results.items()},
             "tokens_per_sec": {name: [r["tokens_per_sec"] for r in per_seed] for name, per_seed in results.items()},
             "params": {name: params for name, (params, _) in costs.items()},
             "flops_per_token": {name: flops for name, (_, flops) in costs.items()},
             "curves": {name: [r["curve"] for r in per_seed] for name, per_seed in results.items()}}
    return found, data, val_tokens


def judge(found: dict) -> dict:
    """Each variant against the baseline, paired by seed (the same data order and shared initialisation), Holm-
    adjusted over the four. RoPE is expected lower, GQA-2 higher (a cost: "did not hold" only when shown equivalent
    within MARGIN), the window equivalent within MARGIN (TOST: absence of a difference is never counted as
    equivalence). Throughput and FLOPs per token relative to the baseline, for the training-cost verdict."""
    finals = found["finals"]
    others = [n for n in LM_VARIANTS if n != "baseline"]
    comparisons: dict[str, Comparison] = {n: paired(finals[n], finals["baseline"]) for n in others}
    adjusted = dict(zip(others, holm([comparisons[n].p for n in others])))
    verdicts = {n: verdict(comparisons[n], expected, p=adjusted[n], margin=MARGIN) for n, expected in EXPECTED.items()}
    return {"comparisons": comparisons, "adjusted": adjusted, "verdicts": verdicts,
            "throughput_change": _relative(_median_throughput(found["tokens_per_sec"]), "baseline"),
            "flops_change": _relative(found["flops_per_token"], "baseline"),
            "below_unigram": statistics.mean(finals["baseline"]) - found["unigram"]}


# ---- 4.4 the GQA ladder ---------------------------------------------------------------------------------------


def matched_width(config: GPTConfig, n_kv: int) -> int:
    """The MLP width that gives `config` with `n_kv` key/value heads the parameter count of `config` (multi-head)
    as closely as an integer width allows: each layer loses 2·(C + b)·(C − n_kv·hs) key/value weights and biases
    (b = 1 with biases) and each hidden unit adds 2·C + b (a row of c_fc and its bias, a column of c_proj), so the
    width grows by their ratio, rounded; what rounding leaves is under half a unit's parameters per layer."""
    C, b = config.n_embd, int(config.bias)
    removed = 2 * (C + b) * (C - n_kv * config.head_dim)
    return config.mlp_width + round(removed / (2 * C + b))


def ladder(budget: Budget) -> dict[str, dict]:
    """The ladder's variants (GPTConfig fields): the baseline (MHA) and n_kv ∈ {n_head/2, n_head/4, 1} (fewer where
    these coincide), each as is ("gqa4", …, "mqa") and with the MLP widened by `matched_width` ("gqa4+mlp", …)."""
    base = lm_config(budget, {})
    levels = sorted({budget.n_head // 2, budget.n_head // 4, 1} - {0, budget.n_head}, reverse=True)
    variants: dict[str, dict] = {"baseline": {}}
    for n_kv in levels:
        name = "mqa" if n_kv == 1 else f"gqa{n_kv}"
        variants[name] = {"n_kv_head": n_kv}
        variants[f"{name}+mlp"] = {"n_kv_head": n_kv, "n_inner": matched_width(base, n_kv)}
    return variants


def ladder_expectation(n_head: int, n_kv: int, widened: bool) -> Expectation:
    """What a rung should do to the loss against MHA, fixed before measuring. GQA at a moderate group count is
    within noise of MHA (Ainslie et al. 2023, Table 1: GQA-8 of 64 heads 47.1 vs MHA 47.2; Llama 2,
    Table 18, parameter-matched); MQA costs a little even parameter-matched (Shazeer 2019; Llama 2 Table 18, e.g.
    HellaSwag 74.5 vs 75.1). At 4 × 128 a key/value head is 16 wide, so a quarter of the heads (32 dims per
    position) is expected to cost until the MLP gives the parameters back (the review's E2)."""
    if n_kv == 1:
        return "higher"
    if n_kv * 2 >= n_head or widened:
        return "equivalent"
    return "higher"


def measure_ladder(budget: Budget, cache: RunCache, results: dict[str, list[dict]]) -> dict:
    """Trains (or reuses) every ladder rung × budget.ladder_seeds for budget.ladder_steps — the same data order and
    shared initialisation per seed — and returns per rung: n_kv, MLP width, parameters, FLOPs per token, the final
    validation loss and the throughput per seed. At section 4's steps and seeds a rung section 4 trains too (MHA,
    GQA-2) is taken from its `results`, not trained twice."""
    variants = ladder(budget)
    same_runs = budget.ladder_steps == budget.steps and set(budget.ladder_seeds) <= set(budget.seeds)
    shared = {n for n, fields in variants.items() if same_runs and LM_VARIANTS.get(n) == fields}
    results = {**train_variants(budget, cache, {n: f for n, f in variants.items() if n not in shared},
                                budget.ladder_seeds, budget.ladder_steps),
               **{n: [results[n][budget.seeds.index(seed)] for seed in budget.ladder_seeds] for n in shared}}
    rungs = {}
    for name, fields in variants.items():
        config = lm_config(budget, fields)
        params, flops = cost(config)
        rungs[name] = {"n_kv": config.kv_heads, "mlp_width": config.mlp_width, "widened": "n_inner" in fields,
                       "params": params, "flops_per_token": flops,
                       "finals": [r["curve"][-1][1] for r in results[name]],
                       "tokens_per_sec": [r["tokens_per_sec"] for r in results[name]]}
    return {"n_head": budget.n_head, "head_dim": budget.n_embd // budget.n_head, "steps": budget.ladder_steps,
            "seeds": list(budget.ladder_seeds),
            "tokens_per_run": budget.ladder_steps * budget.batch_size * budget.block_size, "rungs": rungs}


def judge_ladder(found: dict) -> dict:
    """Every rung against MHA ("baseline"), paired by seed, Holm-adjusted over the rungs; each verdict against
    `ladder_expectation` with MARGIN (an expected cost "did not hold" when shown equivalent; an expected
    equivalence needs TOST), with the TOST p-value and the minimum detectable effect; what widening the MLP did
    (paired against the same n_kv as is, reported, not judged); parameters, FLOPs per token and median throughput
    relative to MHA."""
    rungs = found["rungs"]
    others = [n for n in rungs if n != "baseline"]
    base = rungs["baseline"]["finals"]
    comparisons = {n: paired(rungs[n]["finals"], base) for n in others}
    adjusted = dict(zip(others, holm([comparisons[n].p for n in others])))
    expected = {n: ladder_expectation(found["n_head"], rungs[n]["n_kv"], rungs[n]["widened"]) for n in others}
    widening = {n: paired(rungs[n]["finals"], rungs[n.removesuffix("+mlp")]["finals"])
                for n in others if rungs[n]["widened"]}
    throughput = _median_throughput({n: r["tokens_per_sec"] for n, r in rungs.items()})
    return {"comparisons": comparisons, "adjusted": adjusted, "expected": expected,
            "verdicts": {n: verdict(comparisons[n], expected[n], p=adjusted[n], margin=MARGIN) for n in others},
            "tost": {n: tost(comparisons[n], MARGIN) for n in others},
            "mde": {n: comparisons[n].minimum_detectable_effect() for n in others},
            "widening": widening,
            "param_change": {n: rungs[n]["params"] - rungs["baseline"]["params"] for n in rungs},
            "flops_change": _relative({n: r["flops_per_token"] for n, r in rungs.items()}, "baseline"),
            "throughput": throughput, "throughput_change": _relative(throughput, "baseline")}
