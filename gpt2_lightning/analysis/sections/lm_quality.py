"""Section 4, language-model quality: every variant's final validation loss over seeds against the baseline, the
unigram loss as the floor of a model that ignores context, and training throughput."""

from __future__ import annotations

import statistics

import numpy as np
import torch

from gpt2_lightning.analysis.budgets import Budget
from gpt2_lightning.analysis.english import CompactData
from gpt2_lightning.analysis.lm_runs import LM_VARIANTS, lm_data
from gpt2_lightning.analysis.statistics import Comparison, holm, paired, verdict

MARGIN = 0.05  # nats: "costs little" means equivalent to the baseline within this, fixed before measuring
EXPECTED = {"rope": "lower", "gqa2": "higher", "window": "equivalent"}  # what each variant should do to the loss


def measure(budget: Budget, results: dict[str, list[dict]]) -> tuple[dict, CompactData, np.ndarray]:
    """(findings, the seed-1 DataModule, its validation tokens). Findings: per variant the final validation loss
    and the throughput per seed, every curve, the unigram loss, and the corpus's size and coverage."""
    data = lm_data(budget, budget.seeds[0])
    val_tokens = np.concatenate(list(data.split_tokens(validation=True)))
    found = {"unigram": data.vocab.unigram_loss(data.vocab.table[torch.from_numpy(val_tokens)]),
             "n_tokens": data.cache.n_tokens, "coverage": data.vocab.coverage,
             "finals": {name: [r["curve"][-1][1] for r in per_seed] for name, per_seed in results.items()},
             "tokens_per_sec": {name: [r["tokens_per_sec"] for r in per_seed] for name, per_seed in results.items()},
             "curves": {name: [r["curve"] for r in per_seed] for name, per_seed in results.items()}}
    return found, data, val_tokens


def judge(found: dict) -> dict:
    """Each variant against the baseline, paired by seed (the same data order), Holm-adjusted over the four. RoPE
    is expected lower, GQA-2 higher (a cost: "did not hold" only when shown equivalent within MARGIN), the window
    equivalent within MARGIN (TOST: absence of a difference is never counted as equivalence)."""
    finals = found["finals"]
    others = [n for n in LM_VARIANTS if n != "baseline"]
    comparisons: dict[str, Comparison] = {n: paired(finals[n], finals["baseline"]) for n in others}
    adjusted = dict(zip(others, holm([comparisons[n].p for n in others])))
    verdicts = {n: verdict(comparisons[n], expected, p=adjusted[n], margin=MARGIN) for n, expected in EXPECTED.items()}
    throughput = {n: statistics.median(v) / statistics.median(found["tokens_per_sec"]["baseline"]) - 1
                  for n, v in found["tokens_per_sec"].items()}
    return {"comparisons": comparisons, "adjusted": adjusted, "verdicts": verdicts, "throughput_change": throughput,
            "below_unigram": statistics.mean(finals["baseline"]) - found["unigram"]}
