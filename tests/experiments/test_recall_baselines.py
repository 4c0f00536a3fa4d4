"""The recall probe's no-lookup baselines (issue 22, item 4), computed from the probe's own sampler."""

from fractions import Fraction
from math import comb, factorial

import pytest
import torch

from gpt2_lightning.analysis.sections import recall
from gpt2_lightning.lm_loss import IGNORE_INDEX


def stirling2(n: int, k: int) -> int:
    rows = [[1]]
    for i in range(1, n + 1):
        rows.append([0] + [k_ * rows[i - 1][k_] + rows[i - 1][k_ - 1] if k_ < i else 1 for k_ in range(1, i + 1)])
    return rows[n][k]


def expected_inverse_distinct(n: int, values: int) -> float:
    """E[1 / D], D the number of distinct values among n uniform draws from `values` (the occupancy distribution)."""
    return float(sum(Fraction(comb(values, d) * stirling2(n, d) * factorial(d), values**n) / d
                     for d in range(1, min(n, values) + 1)))


@pytest.fixture(scope="module")
def baselines():
    return recall.no_lookup_baselines(samples=4096)


@pytest.mark.parametrize("pairs", recall.TASK.train_pairs)
def test_a_random_seen_value_scores_the_occupancy_expectation(baselines, pairs):
    exact = expected_inverse_distinct(pairs, recall.TASK.n_values)
    assert baselines["seen value"]["by_pairs"][str(pairs)] == pytest.approx(exact, abs=0.004)


def test_value_elimination_has_nothing_to_strike_off_when_no_answer_is_shown(baselines):
    """Zoology's sampler never shows an answer, so the heuristic the earlier probe's models learned cannot work:
    computed from the input, it equals a random seen value at every number of pairs and every distance."""
    for key in ("by_pairs", "by_distance"):
        assert baselines["value elimination"][key] == pytest.approx(baselines["seen value"][key], rel=1e-5)


def test_value_elimination_strikes_off_each_answer_the_input_shows():
    """On the earlier probe's layout (each answer shown after its query) elimination is computed, not assumed:
    values a, b, c stored, queried in order with answers shown, leave 3, 2 and 1 candidates."""
    k, a, b, c = 0, recall.TASK.n_keys, recall.TASK.n_keys + 1, recall.TASK.n_keys + 2
    inputs = torch.tensor([[k, a, k + 1, b, k + 2, c, k, a, k + 1, b, k + 2]])
    targets = torch.full_like(inputs, IGNORE_INDEX)
    targets[0, [6, 8, 10]] = torch.tensor([a, b, c])
    guessed = recall.no_lookup_per_query(inputs, targets, pairs=3)
    assert guessed["seen value"][0].tolist() == pytest.approx([1 / 3] * 3)
    assert guessed["value elimination"][0].tolist() == pytest.approx([1 / 3, 1 / 2, 1.0])
