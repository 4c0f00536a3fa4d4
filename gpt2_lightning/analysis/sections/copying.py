"""Sections 3.3 and 3.4, copying at a fixed offset: how many steps each variant takes to learn it (a censored
time: a run that never got there is censored at its last evaluation), and its accuracy at 1–8× the training
length."""

from __future__ import annotations

import statistics

from gpt2_lightning.analysis.budgets import Budget
from gpt2_lightning.analysis.lm_runs import LM_VARIANTS, with_window
from gpt2_lightning.analysis.probe_runs import LEARNED, PROBE, PROBE_WINDOW, probe_spec
from gpt2_lightning.analysis.probes import (
    AccuracyCurve,
    RepeatedSegments,
    accuracy,
    eval_generator,
    steps_to,
    train_probe,
)
from gpt2_lightning.analysis.run_cache import RunCache
from gpt2_lightning.analysis.statistics import Survival, holm, km_median, logrank, verdict

TASK = RepeatedSegments()
VARIANTS = {**{name: with_window(f, PROBE_WINDOW) for name, f in LM_VARIANTS.items()},
            "rope+window": {"pos_encoding": "rope", "sliding_window": PROBE_WINDOW}}
LENGTH_VARIANTS = ("baseline", "rope", "rope+window")
LENGTH_FACTORS = (1, 2, 4, 8)
HOLDS = 0.05  # length generalisation holds while accuracy stays within this of its 1× value


def every(budget: Budget) -> int:
    """Steps between two evaluations of the learning curve."""
    return max(1, budget.copy_steps // 30)


def _run(budget: Budget, name: str, seed: int) -> dict:
    generator = eval_generator(seed)
    curve = AccuracyCurve(TASK.batch(budget.probe_eval, generator), every(budget))
    model = train_probe(TASK, PROBE.config(TASK, **VARIANTS[name]), PROBE, budget.copy_steps, seed, [curve])
    lengths = {}
    if name in LENGTH_VARIANTS:
        for factor in LENGTH_FACTORS:
            inputs, targets = TASK.sample(budget.probe_eval, generator, factor * TASK.length)
            try:
                lengths[str(factor)] = accuracy(model, inputs, targets).float().mean().item()
            except ValueError as err:  # learned positions refuse a sequence longer than block_size
                lengths[str(factor)] = str(err).split(";")[0]
    return {"curve": curve.points, "lengths": lengths}


def measure(budget: Budget, cache: RunCache) -> dict[str, list[dict]]:
    """{variant: [per seed: {"curve": [(step, accuracy)], "lengths": {factor: accuracy or the refusal}}]}."""
    return {name: [cache.run(f"copy-{name}-seed{seed}", probe_spec(budget, TASK, VARIANTS[name], budget.copy_steps),
                             lambda: _run(budget, name, seed))
                   for seed in budget.probe_seeds] for name in VARIANTS}


def time_to_learn(run: dict) -> tuple[int, bool]:
    """(steps, reached): the first step at LEARNED, or the last evaluated step with reached False (censored)."""
    step = steps_to(run["curve"], LEARNED)
    return (step, True) if step is not None else (run["curve"][-1][0], False)


def judge_copying(found: dict[str, list[dict]]) -> dict:
    """Steps to LEARNED per variant as censored times; each variant against learned positions by a log-rank test,
    Holm-adjusted over the family; RoPE expected to learn sooner."""
    times = {name: [time_to_learn(r) for r in per_seed] for name, per_seed in found.items()}
    others = [n for n in VARIANTS if n != "baseline"]
    tests: dict[str, Survival] = {n: logrank(*zip(*times[n]), *zip(*times["baseline"])) for n in others}
    adjusted = dict(zip(others, holm([tests[n].p for n in others])))
    return {"times": times, "tests": tests, "adjusted": adjusted,
            "medians": {name: km_median(*zip(*per_seed)) for name, per_seed in times.items()},
            "all_learned": all(reached for per_seed in times.values() for _, reached in per_seed),
            "verdict": verdict(tests["rope"], "lower", p=adjusted["rope"])}


def judge_lengths(found: dict[str, list[dict]]) -> dict:
    """Which lengths learned positions refused, and whether each RoPE variant stayed within HOLDS of its 1×
    accuracy (seed means; a fixed threshold, not a test)."""
    numeric = {name: {f: [r["lengths"][str(f)] for r in found[name]] for f in LENGTH_FACTORS
                      if all(isinstance(r["lengths"][str(f)], float) for r in found[name])}
               for name in LENGTH_VARIANTS}

    def kept(name: str) -> bool:
        base = statistics.mean(numeric[name][1])
        return all(statistics.mean(v) >= base - HOLDS for v in numeric[name].values())

    return {"refused": sorted(set(LENGTH_FACTORS) - set(numeric["baseline"])), "windowed_kept": kept("rope+window"),
            "rope_kept": kept("rope")}
