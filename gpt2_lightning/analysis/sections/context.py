"""Section 4.1, using the context: LAMBADA-style last-word prediction (the full passage against its last few
tokens) per variant and seed, and samples from each variant."""

from __future__ import annotations

import numpy as np
import torch

from gpt2_lightning.analysis.budgets import Budget
from gpt2_lightning.analysis.english import CompactData, last_word_passages
from gpt2_lightning.analysis.held_out_text import answer_scores
from gpt2_lightning.analysis.statistics import bootstrap_ci, holm, paired, verdict
from gpt2_lightning.checkpoints import load
from gpt2_lightning.generate import Sampling, sample_next_token
from gpt2_lightning.model import GPT

LOCAL_CONTEXT = 8  # the control: the same passages cut to their last few tokens
PROMPTS = ("The President said that", "Call me Ishmael. The sea", "In the coming year, the Congress")
SAMPLE_TOKENS = 40


@torch.no_grad()
def sample_without_rare(model: GPT, ids: torch.Tensor, new: int, rare: int, generator: torch.Generator) -> torch.Tensor:
    """Sampled continuation (temperature 0.8, top-k 40) that never picks the compact vocabulary's rare-token id,
    which stands for thousands of different tokens and would otherwise fill the text."""
    for _ in range(new):
        logits = model(ids)[:, -1]
        logits[:, rare] = logits.min(dim=-1).values - 1.0  # the lowest: top-k never keeps it
        ids = torch.cat(
            [ids, sample_next_token(logits, Sampling(temperature=0.8, top_k=40, generator=generator))[:, None]], dim=1)
    return ids


def measure(budget: Budget, results: dict[str, list[dict]], data: CompactData, val_tokens: np.ndarray) -> dict:
    """Per variant and seed: top-1 and mean answer log-probability from the full passage and from its last
    LOCAL_CONTEXT tokens, and each passage's gain (full minus local log-probability); samples from seed 1."""
    inputs, answers = last_word_passages(val_tokens, data.vocab, budget.block_size, budget.passages,
                                         local=LOCAL_CONTEXT)
    scores = {}
    for name, per_seed in results.items():
        scores[name] = []
        for r in per_seed:
            model = load(r["weights"]).eval()
            (full_top1, full), (local_top1, local) = (answer_scores(model, inputs, answers),
                                                      answer_scores(model, inputs[:, -LOCAL_CONTEXT:], answers))
            scores[name].append({"full_top1": full_top1, "local_top1": local_top1,
                                 "full_logp": float(np.mean(full)), "local_logp": float(np.mean(local)),
                                 "gains": [f - lo for f, lo in zip(full, local)]})
    samples = {}
    for prompt in PROMPTS:
        ids = data.vocab.encode(prompt)[None]
        samples[prompt] = {}
        for name, per_seed in results.items():
            model = load(per_seed[0]["weights"]).eval()
            new = min(SAMPLE_TOKENS, budget.block_size - ids.size(1))
            out = sample_without_rare(model, ids, new, data.vocab.rare, torch.Generator().manual_seed(0))
            samples[prompt][name] = data.vocab.decode(out[0, ids.size(1):])
    return {"passages": len(answers), "scores": scores, "samples": samples}


def judge(found: dict) -> dict:
    """The gain from the passage per variant: over seeds, against zero (expected higher, Holm over the variants)
    and against the baseline (paired by seed); over documents, a bootstrap interval of the seed-mean gain per
    passage (the held-out passages are a fixed sample). The expectation (every variant gains) held when every
    variant's gain is significantly above zero, did not hold when one is significantly below, else inconclusive."""
    scores = found["scores"]
    gains = {name: [float(np.mean(s["gains"])) for s in per_seed] for name, per_seed in scores.items()}
    names = list(scores)
    uses = {n: paired(gains[n], [0.0] * len(gains[n])) for n in names}
    adjusted = dict(zip(names, holm([uses[n].p for n in names])))
    verdicts = {n: verdict(uses[n], "higher", p=adjusted[n]) for n in names}
    overall = ("held" if all(v == "held" for v in verdicts.values())
               else "did not hold" if "did not hold" in verdicts.values() else "inconclusive")
    per_passage = {n: np.mean([s["gains"] for s in scores[n]], axis=0) for n in names}
    return {"gains": gains, "uses": uses, "adjusted": adjusted, "verdicts": verdicts, "verdict": overall,
            "vs_baseline": {n: paired(gains[n], gains["baseline"]) for n in names if n != "baseline"},
            "bootstrap": {n: bootstrap_ci(per_passage[n]) for n in names}}
