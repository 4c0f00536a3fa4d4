"""Section 3.2, passkey retrieval at a distance: the window's receptive field, L·(w−1) positions through L layers."""

from __future__ import annotations

import math
import statistics

from gpt2_lightning.analysis.budgets import Budget
from gpt2_lightning.analysis.probe_runs import PROBE, PROBE_WINDOW, probe_spec
from gpt2_lightning.analysis.probes import Passkey, accuracy, eval_generator, train_probe
from gpt2_lightning.analysis.run_cache import RunCache

TASK = Passkey()
REACH = PROBE.n_layer * (PROBE_WINDOW - 1)
DISTANCES = sorted({8, 16, REACH - 2, REACH, REACH + 1, REACH + 2, 2 * REACH, TASK.length - 1})
WINDOWED = f"window {PROBE_WINDOW}"
VARIANTS = {"full attention": {"pos_encoding": "rope"},
            WINDOWED: {"pos_encoding": "rope", "sliding_window": PROBE_WINDOW}}
CHANCE = 1 / TASK.n_keys


def chance_band(budget: Budget) -> float:
    """The highest accuracy that still counts as chance: three binomial standard deviations above it."""
    return CHANCE + 3 * math.sqrt(CHANCE * (1 - CHANCE) / budget.probe_eval)


def _run(budget: Budget, fields: dict, seed: int) -> dict:
    model = train_probe(TASK, PROBE.config(TASK, **fields), PROBE, budget.passkey_steps, seed)
    generator = eval_generator(seed)
    return {str(d): accuracy(model, *TASK.at_distance(budget.probe_eval, generator, d)).float().mean().item()
            for d in DISTANCES}


def measure(budget: Budget, cache: RunCache) -> dict[str, list[dict]]:
    """{variant: [per seed: {str(distance): accuracy}]}."""
    return {name: [cache.run(f"passkey-{name.replace(' ', '')}-seed{seed}",
                             probe_spec(budget, TASK, fields, budget.passkey_steps), lambda: _run(budget, fields, seed))
                   for seed in budget.probe_seeds] for name, fields in VARIANTS.items()}


def judge(budget: Budget, found: dict[str, list[dict]]) -> dict:
    """Against the chance band (a binomial bound per distance, not a comparison of variants): the window at chance
    at every distance past its reach, retrieving within it, and full attention retrieving everywhere."""
    band = chance_band(budget)
    mean = {name: {d: statistics.mean(r[str(d)] for r in per_seed) for d in DISTANCES}
            for name, per_seed in found.items()}
    return {"band": band, "mean": mean,
            "falls": all(mean[WINDOWED][d] <= band for d in DISTANCES if d > REACH),
            "within": all(mean[WINDOWED][d] > band for d in DISTANCES if d <= REACH),
            "full": all(mean["full attention"][d] > band for d in DISTANCES)}
