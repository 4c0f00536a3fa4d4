"""Section 4.2, length extrapolation on text: each variant's validation loss on windows of 1×, 2× and 4× its
training length (learned positions refuse longer input)."""

from __future__ import annotations

from gpt2_lightning.analysis.budgets import Budget
from gpt2_lightning.analysis.lm_runs import eval_loss, lm_data
from gpt2_lightning.checkpoints import load

FACTORS = (1, 2, 4)
HOLDS = 0.05  # nats: a variant kept its loss while it stays within this of its 1× loss


def measure(budget: Budget, results: dict[str, list[dict]]) -> dict[str, dict[str, float | str]]:
    """{variant: {str(factor): loss, or the refusal's message}}, seed 1 of each variant."""
    datas = {f: lm_data(budget, budget.seeds[0], f * budget.block_size) for f in FACTORS}
    found = {}
    for name, per_seed in results.items():
        model = load(per_seed[0]["weights"]).eval()
        found[name] = {}
        for factor, data in datas.items():
            try:
                found[name][str(factor)] = eval_loss(model, data, budget.eval_batches)
            except ValueError as err:
                found[name][str(factor)] = str(err).split(";")[0]
    return found


def judge(found: dict[str, dict[str, float | str]]) -> dict:
    """Whether RoPE and RoPE + GQA-2 + window kept their loss within HOLDS at every longer length (one seed: a fixed
    threshold, not a test)."""

    def kept(name: str) -> bool:
        losses = [found[name][str(f)] for f in FACTORS]
        return all(isinstance(x, float) for x in losses) and all(x <= losses[0] + HOLDS for x in losses[1:])

    return {"rope_kept": kept("rope"), "window_kept": kept("rope+gqa2+window")}
