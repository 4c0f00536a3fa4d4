"""The recall probe's no-lookup baselines (issue 22, item 4), computed from the probe's own sampler."""

from fractions import Fraction
from math import comb, factorial

import pytest

from gpt2_lightning.analysis.sections import recall


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


def test_value_elimination_beats_a_seen_value_and_rises_with_distance(baselines):
    """The review's signature of elimination: accuracy rising with key–query distance (later queries, fewer
    candidates), which a model that looks nothing up shows too."""
    for pairs in recall.TASK.train_pairs:
        assert baselines["value elimination"]["by_pairs"][str(pairs)] > baselines["seen value"]["by_pairs"][str(pairs)]
    by_distance = [baselines["value elimination"]["by_distance"][str(b)] for b in range(len(recall.EDGES) - 1)]
    assert by_distance == sorted(by_distance) and by_distance[-1] > 3 * by_distance[0]
