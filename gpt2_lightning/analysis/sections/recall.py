"""Section 3.1, associative recall: where sharing key/value heads starts to cost, per number of pairs and per
key–query distance."""

from __future__ import annotations

import statistics

import torch

from gpt2_lightning.analysis.budgets import Budget
from gpt2_lightning.analysis.probe_runs import LEARNED, PROBE, probe_spec
from gpt2_lightning.analysis.probes import AssociativeRecall, accuracy, eval_generator, train_probe
from gpt2_lightning.analysis.run_cache import RunCache
from gpt2_lightning.analysis.statistics import Comparison, holm, paired, verdict

TASK = AssociativeRecall()
VARIANTS = {"MHA": None, "GQA-4": 4, "GQA-2": 2, "MQA": 1}  # name → n_kv_head
MOST = max(TASK.train_pairs)
EDGES = [0, MOST, 2 * MOST, 3 * MOST, 4 * MOST]  # key–query distance buckets at the most pairs


def no_lookup_baselines(samples: int = 2048, seed: int = 0) -> dict[str, dict]:
    """What a model that looks up nothing scores, from the probe's own sampler (review of the analysis, item 1):

    - "seen value": each query answered with a value drawn uniformly from the distinct values in the sequence;
    - "value elimination": drawn from those not yet given as an answer to an earlier query (the answers are in the
      input), so its accuracy rises with later queries — which sit closer to their keys on average.

    Expected accuracies, {"by_pairs": {pairs: acc}, "by_distance": {bucket: acc at the most pairs}} each, computed
    exactly per query (1 / candidates when the true value is a candidate) and averaged over `samples` sequences.
    """
    generator, found = torch.Generator().manual_seed(seed), {}
    for name in ("seen value", "value elimination"):
        found[name] = {"by_pairs": {}, "by_distance": {}}
    for pairs in TASK.train_pairs:
        inputs, targets, distances = TASK.sample(samples, generator, pairs)
        values = inputs[:, 0 : 2 * pairs : 2]  # (n, pairs) the stored values
        answers = targets[:, 2 * pairs :: 2]  # (n, pairs) each query's value, in query order
        left = torch.zeros(samples, TASK.vocab_size).scatter_add_(1, values, torch.ones(samples, pairs))  # counts
        seen = (1 / (left > 0).sum(1, keepdim=True)).expand(samples, pairs)  # the true value is always present
        eliminated = torch.empty(samples, pairs)
        for q in range(pairs):  # a value stored twice stays a candidate until given twice
            candidates = left > 0
            eliminated[:, q] = candidates.gather(1, answers[:, q : q + 1]).squeeze(1) / candidates.sum(1)
            left.scatter_add_(1, answers[:, q : q + 1], -torch.ones(samples, 1))
        for name, acc in (("seen value", seen), ("value elimination", eliminated)):
            found[name]["by_pairs"][str(pairs)] = acc.mean().item()
            if pairs == MOST:
                bucket = torch.bucketize(distances.flatten(), torch.tensor(EDGES[1:-1]), right=True)
                found[name]["by_distance"] = {str(b): acc.flatten()[bucket == b].mean().item()
                                              for b in range(len(EDGES) - 1)}
    return found


def _run(budget: Budget, kv: int | None, seed: int) -> dict:
    model = train_probe(TASK, PROBE.config(TASK, pos_encoding="rope", n_kv_head=kv), PROBE, budget.recall_steps, seed)
    generator, by_pairs, by_distance = eval_generator(seed), {}, {}
    for pairs in TASK.train_pairs:
        inputs, targets, distances = TASK.sample(budget.probe_eval, generator, pairs)
        correct = accuracy(model, inputs, targets).float()
        by_pairs[str(pairs)] = correct.mean().item()
        if pairs == MOST:
            bucket = torch.bucketize(distances.flatten(), torch.tensor(EDGES[1:-1]), right=True)
            by_distance = {str(b): correct[bucket == b].mean().item() for b in range(len(EDGES) - 1)}
    return {"by_pairs": by_pairs, "by_distance": by_distance}


def measure(budget: Budget, cache: RunCache) -> dict[str, list[dict]]:
    """{variant: [per seed, in budget.probe_seeds order: {"by_pairs": {pairs: acc}, "by_distance": {bucket: acc}}]}."""
    return {name: [cache.run(f"recall-{name}-seed{seed}", probe_spec(budget, TASK, {"n_kv_head": kv},
                                                                     budget.recall_steps),
                             lambda: _run(budget, kv, seed))
                   for seed in budget.probe_seeds] for name, kv in VARIANTS.items()}


def judge(found: dict[str, list[dict]]) -> dict:
    """Each shared-head variant against MHA at the most pairs (paired by seed: same data, same evaluation stream),
    Holm-adjusted over the three, each expected lower. The expectation (accuracy falls from MHA to MQA) held when
    MQA is significantly lower and the means fall monotonically; it did not hold when a variant is significantly
    higher; it is inconclusive otherwise, and always when MHA itself did not learn the
    task (the probe then ranks learning speed, not storage)."""
    at_most = {name: [r["by_pairs"][str(MOST)] for r in per_seed] for name, per_seed in found.items()}
    shared = list(VARIANTS)[1:]
    comparisons: dict[str, Comparison] = {name: paired(at_most[name], at_most["MHA"]) for name in shared}
    adjusted = dict(zip(shared, holm([comparisons[n].p for n in shared])))
    verdicts = {n: verdict(comparisons[n], "lower", p=adjusted[n]) for n in shared}
    means = [statistics.mean(at_most[n]) for n in VARIANTS]
    monotone = all(a >= b for a, b in zip(means, means[1:]))
    learned = statistics.mean(at_most["MHA"]) >= LEARNED
    cost = next((n for n in shared if verdicts[n] == "held"), None)
    if not learned:
        overall = "inconclusive"
    elif verdicts["MQA"] == "held" and monotone:
        overall = "held"
    elif "did not hold" in verdicts.values():
        overall = "did not hold"
    else:
        overall = "inconclusive"
    return {"at_most": at_most, "comparisons": comparisons, "adjusted": adjusted, "verdicts": verdicts,
            "monotone": monotone, "learned": learned, "cost": cost, "verdict": overall}
