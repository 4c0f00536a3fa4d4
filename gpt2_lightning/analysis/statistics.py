"""The analysis's statistics: comparisons over seeds and documents that say when the data cannot decide.

Decisions, applied everywhere the analysis compares:
- **Untestable is said, never printed as certainty.** A t-test needs spread: when neither group varies (or a
  paired difference is the same for every seed), or a group has fewer than two values, the comparison is
  *untestable*: its p-value and interval are None, it prints "no variance: cannot test" (or "too few values:
  cannot test"), and every verdict on it is "inconclusive". No p = 0 and no zero-width interval is printed.
- **p-values print as bounds below 1e-4** ("p < 0.0001"): a t distribution's tail that far out says more about
  the normality assumption than about the effect.
- **Censored outcomes stay censored.** A run that never reached a level within its steps is censored at its
  last evaluated step, never counted as finishing there: Kaplan–Meier medians and a log-rank test.
- **Verdicts have three values**: "held", "did not hold", "inconclusive" (`verdict`). "Costs little / no worse"
  is only ever "held" through an equivalence test (TOST) against a margin fixed before the measurement.

scipy (the `analysis` extra) is imported inside the functions that need its distributions.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from typing import Literal

import numpy as np

ALPHA = 0.05  # a two-sided p below this (after Holm, where a section makes several comparisons) is significant
P_FLOOR = 1e-4  # p-values below this print as "p < 0.0001"

Expectation = Literal["lower", "higher", "equivalent"]
Verdict = Literal["held", "did not hold", "inconclusive"]


# ---- numbers as text ----------------------------------------------------------------------------------------


def number(value: float | int, digits: int = 3) -> str:
    """`value` with `digits` decimals; an integer (an int, or a float holding a whole number while `digits` is 0)
    prints without any, so step counts never show as 150.000."""
    if isinstance(value, int) or (digits == 0 and float(value).is_integer()):
        return str(int(value))
    return f"{value:.{digits}f}"


def format_p(p: float) -> str:
    """'p = 0.042', or 'p < 0.0001' below P_FLOOR: never 'p = 0'."""
    return f"p < {P_FLOOR:g}" if p < P_FLOOR else f"p = {p:.2g}"


def mean_sd(values: Sequence[float], digits: int = 3) -> str:
    """'mean ± sd' over seeds (sd 0 for a single value); integers stay integers at digits=0."""
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{number(mean, digits)} ± {number(sd, digits)}"


# ---- t-tests --------------------------------------------------------------------------------------------------


def _t():
    from scipy import stats

    return stats.t


@dataclasses.dataclass(frozen=True)
class Comparison:
    """mean(a) − mean(b) (or the mean paired difference) with its standard error and degrees of freedom, from which
    every p-value and interval follows; `se` None means untestable, and `why` says why."""

    diff: float
    se: float | None
    df: float | None
    test: str  # "Welch" or "paired"
    n: int  # values per group (pairs for a paired test)
    why: str = ""

    @property
    def testable(self) -> bool:
        return self.se is not None

    @property
    def p(self) -> float | None:
        """Two-sided p-value of "no difference"; None when untestable."""
        if self.se is None:
            return None
        return float(2 * _t().sf(abs(self.diff) / self.se, self.df))

    def interval(self, confidence: float = 0.95) -> tuple[float, float] | None:
        """The two-sided confidence interval of the difference; None when untestable."""
        if self.se is None:
            return None
        half = float(_t().ppf(0.5 + confidence / 2, self.df)) * self.se
        return self.diff - half, self.diff + half

    def minimum_detectable_effect(self, power: float = 0.8) -> float | None:
        """The smallest difference this design (its n and the spread it measured) detects at ALPHA with `power`;
        None when untestable. For Welch, the two groups' spread pooled as if equal."""
        if self.se is None:
            return None
        if self.test == "paired":
            return minimum_detectable_effect(self.n, self.se * math.sqrt(self.n), power=power, design="paired")
        return minimum_detectable_effect(self.n, self.se * math.sqrt(self.n / 2), power=power)

    def format(self, digits: int = 3, p: float | None = None) -> str:
        """'+0.120 [+0.010, +0.230], p = 0.04' (`p`: an adjusted p-value to print instead of the raw one), or the
        difference and why it cannot be tested."""
        sign = "+" if self.diff >= 0 else ""
        if self.se is None:
            return f"{sign}{number(self.diff, digits)}, {self.why}"
        low, high = self.interval()
        bounds = ", ".join(("+" if x >= 0 else "") + number(x, digits) for x in (low, high))
        return f"{sign}{number(self.diff, digits)} [{bounds}], {format_p(self.p if p is None else p)}"

    def __str__(self) -> str:
        return self.format()


def _untestable(diff: float, test: str, n: int, too_few: bool) -> Comparison:
    why = "too few values: cannot test" if too_few else "no variance: cannot test"
    return Comparison(diff, None, None, test, n, why)


def welch(a: Sequence[float], b: Sequence[float]) -> Comparison:
    """Welch's unequal-variance t-test of mean(a) − mean(b), for groups that share nothing (no pairing)."""
    diff = statistics.mean(a) - statistics.mean(b)
    if len(a) < 2 or len(b) < 2:
        return _untestable(diff, "Welch", min(len(a), len(b)), too_few=True)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return _untestable(diff, "Welch", min(len(a), len(b)), too_few=False)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch–Satterthwaite
    return Comparison(diff, math.sqrt(va + vb), df, "Welch", min(len(a), len(b)))


def paired(a: Sequence[float], b: Sequence[float]) -> Comparison:
    """The paired t-test of mean(a − b), for runs paired by seed (same data order, same initialisation of the
    tensors both variants share): seed-to-seed variation cancels."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    differences = [x - y for x, y in zip(a, b)]
    diff = statistics.mean(differences)
    if len(differences) < 2:
        return _untestable(diff, "paired", len(differences), too_few=True)
    sd = statistics.stdev(differences)
    if sd == 0:
        return _untestable(diff, "paired", len(differences), too_few=False)
    return Comparison(diff, sd / math.sqrt(len(differences)), len(differences) - 1, "paired", len(differences))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (untestable entries, None, stay None and do not count
    towards the family's size): compare each adjusted value with ALPHA to keep the family-wise error at ALPHA."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def tost(comparison: Comparison, margin: float) -> float | None:
    """The p-value of the two one-sided tests that the difference lies within (−margin, +margin): below ALPHA, the
    two are equivalent at that margin. None when the comparison is untestable."""
    if comparison.se is None:
        return None
    t = _t()
    below = float(t.sf((comparison.diff + margin) / comparison.se, comparison.df))  # H0: diff <= −margin
    above = float(t.cdf((comparison.diff - margin) / comparison.se, comparison.df))  # H0: diff >= +margin
    return max(below, above)


def noninferiority(comparison: Comparison, margin: float) -> float | None:
    """The one-sided p-value that the difference lies below +margin (H0: difference >= margin), for "a is no worse
    than b" where a higher value is worse (e.g. steps to learn): below ALPHA, a is shown worse by less than `margin`,
    or better. None when the comparison is untestable."""
    if comparison.se is None:
        return None
    return float(_t().cdf((comparison.diff - margin) / comparison.se, comparison.df))


def minimum_detectable_effect(n: int, sd: float, alpha: float = ALPHA, power: float = 0.8,
                              design: Literal["two-sample", "paired"] = "two-sample") -> float:
    """The smallest true difference a two-sided t-test at `alpha` detects with probability `power`: two groups of
    `n` values with standard deviation `sd`, or `n` pairs whose differences have standard deviation `sd`.

    Solved exactly on the noncentral t distribution (not the normal approximation, which is far off at n = 3)."""
    from scipy import optimize, stats

    if n < 2 or sd <= 0:
        raise ValueError(f"need n >= 2 and sd > 0, got n={n}, sd={sd}")
    df = 2 * n - 2 if design == "two-sample" else n - 1
    scale = sd * math.sqrt(2 / n if design == "two-sample" else 1 / n)  # the standard error of the difference
    critical = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(effect: float) -> float:
        shift = effect / scale
        # the lower tail as the upper tail of the mirrored shift: nct.cdf returns NaN that far out
        return stats.nct.sf(critical, df, shift) + stats.nct.sf(critical, df, -shift) - power

    return float(optimize.brentq(shortfall, 1e-9 * scale, 40 * scale))  # noncentrality 40: power ~1 at df >= 1


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float | None]:
    """(mean, half-width of its t-interval) of repeated measurements, e.g. timings; the half-width is None with
    fewer than two."""
    data = np.asarray(values, dtype=float)
    if data.size < 2:
        return float(data.mean()), None
    half = float(_t().ppf(0.5 + confidence / 2, data.size - 1)) * float(data.std(ddof=1)) / data.size**0.5
    return float(data.mean()), half


# ---- bootstrap over documents ---------------------------------------------------------------------------------


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, resamples: int = 4000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over documents (one value per document; for a paired comparison,
    each document's difference), resampling documents with replacement: the uncertainty of a fixed held-out set."""
    data = np.asarray(values, dtype=float)
    if data.size < 2:
        raise ValueError("a bootstrap needs at least two documents")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, (resamples, data.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


# ---- proportions ----------------------------------------------------------------------------------------------


def wilson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval of a binomial proportion (e.g. queries answered right out of those asked): unlike the
    normal approximation p ± z·sqrt(p(1 − p)/n) it stays inside [0, 1] and keeps a width at 0 or n successes, where
    a probe's accuracy often sits."""
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials > 0, got {successes} of {trials}")
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    p, n = successes / trials, trials
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


# ---- censored times: Kaplan–Meier and the log-rank test -------------------------------------------------------


def kaplan_meier(times: Sequence[float], reached: Sequence[bool]) -> list[tuple[float, float]]:
    """The Kaplan–Meier estimate of P(not yet reached at t): (t, survival) after each time at which some run
    reached the level. A run with `reached` False is censored at its time (it ran that long without reaching)."""
    at_risk, survival, curve = len(times), 1.0, []
    for t in sorted(set(times)):
        events = sum(1 for x, r in zip(times, reached) if x == t and r)
        if events:
            survival *= 1 - events / at_risk
            curve.append((t, survival))
        at_risk -= sum(1 for x in times if x == t)
    return curve


def km_median(times: Sequence[float], reached: Sequence[bool]) -> float | None:
    """The Kaplan–Meier median time to reach: the first time survival falls to 0.5 or below; None when it never
    does (more than half the runs censored before reaching), which reports as "> the longest run"."""
    return next((t for t, s in kaplan_meier(times, reached) if s <= 0.5 + 1e-12), None)


@dataclasses.dataclass(frozen=True)
class Survival:
    """A log-rank comparison of times to reach a level: group a against group b."""

    median_a: float | None
    median_b: float | None
    observed_a: int  # runs of a that reached the level
    expected_a: float  # how many would have, had both groups the same hazard
    p: float | None  # None: no run of either group reached the level, nothing to compare
    why: str = ""

    @property
    def testable(self) -> bool:
        return self.p is not None

    @property
    def diff(self) -> float:
        """Negative when a reaches the level sooner than b (more events than expected under equal hazards)."""
        return self.expected_a - self.observed_a

    def format(self) -> str:
        medians = f"median {_median_text(self.median_a)} vs {_median_text(self.median_b)}"
        return f"{medians}, {self.why}" if self.p is None else f"{medians}, log-rank {format_p(self.p)}"

    def __str__(self) -> str:
        return self.format()


def _median_text(median: float | None) -> str:
    return "not reached" if median is None else number(median, 0)


def logrank(times_a: Sequence[float], reached_a: Sequence[bool], times_b: Sequence[float],
            reached_b: Sequence[bool]) -> Survival:
    """The log-rank test (Mantel's, one degree of freedom) that two groups reach a level at the same rate, with
    censored runs at risk up to their last time and never counted as reaching."""
    from scipy import stats

    medians = km_median(times_a, reached_a), km_median(times_b, reached_b)
    runs = [(t, r, 0) for t, r in zip(times_a, reached_a)] + [(t, r, 1) for t, r in zip(times_b, reached_b)]
    observed_a, expected_a, variance = 0, 0.0, 0.0
    for t in sorted({t for t, r, _ in runs if r}):
        at_risk = [(x, r, g) for x, r, g in runs if x >= t]
        n, n_a = len(at_risk), sum(1 for _, _, g in at_risk if g == 0)
        d = sum(1 for x, r, _ in at_risk if x == t and r)
        observed_a += sum(1 for x, r, g in at_risk if x == t and r and g == 0)
        expected_a += d * n_a / n
        if n > 1:
            variance += d * (n_a / n) * (1 - n_a / n) * (n - d) / (n - 1)
    if variance == 0:
        return Survival(*medians, observed_a, expected_a, None, "no run reached it: cannot test")
    statistic = (observed_a - expected_a) ** 2 / variance
    return Survival(*medians, observed_a, expected_a, float(stats.chi2.sf(statistic, 1)))


# ---- verdicts ------------------------------------------------------------------------------------------------


def verdict(test: Comparison | Survival, expected: Expectation, *, p: float | None = None,
            margin: float | None = None) -> Verdict:
    """Whether a measurement bore out its expectation, decided by the data or said to be undecided.

    expected "lower" / "higher" (a − b below / above zero): "held" when the difference is significant (`p`, e.g.
    Holm-adjusted, else the test's own) in that direction; "did not hold" when it is significant the other way,
    or when, given a `margin`, the two are shown equivalent within it; otherwise "inconclusive".
    expected "equivalent" (needs `margin`, a Comparison): "held" when TOST shows |a − b| < margin; "did not
    hold" when the 1 − 2·ALPHA interval lies wholly beyond the margin; otherwise "inconclusive".
    An untestable comparison is always "inconclusive"."""
    if not test.testable:
        return "inconclusive"
    if expected == "equivalent":
        if margin is None or not isinstance(test, Comparison):
            raise ValueError("an equivalence verdict needs a t-test comparison and a margin")
        if tost(test, margin) < ALPHA:
            return "held"
        low, high = test.interval(1 - 2 * ALPHA)
        return "did not hold" if low > margin or high < -margin else "inconclusive"
    p = test.p if p is None else p
    if p < ALPHA:
        return "held" if (test.diff < 0) == (expected == "lower") else "did not hold"
    if margin is not None and isinstance(test, Comparison) and tost(test, margin) < ALPHA:
        return "did not hold"
    return "inconclusive"
