"""The statistics of a sweep report: mean, sample standard deviation, Student's t 95 % interval, and the
difference between two arms (paired by seed, or Welch's when no seed is in both).

Plain Python floats summed left to right, so a report is the same on any machine and a test can write the
hand computation out in the same order. ``nan`` stands for "not defined at this n" (the std of one value,
the interval of fewer than two).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy.stats import t as student_t

LEVEL = 0.95
NAN = float("nan")


@dataclass(frozen=True)
class Summary:
    """``n`` values: their mean, sample std (ddof=1) and the 95 % t interval of the mean."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float

    @property
    def has_interval(self) -> bool:
        return not math.isnan(self.ci_low)


@dataclass(frozen=True)
class Difference:
    """``a - b`` between two arms: the mean difference and its 95 % interval.

    Paired (``paired=True``): the per-seed differences over the ``n_pairs`` seeds present in both arms,
    summarised like any sample (``std`` is the std of the differences). Welch (``paired=False``): the
    difference of the two arms' means with Welch's t interval; ``std`` is its standard error and
    ``n_pairs`` is 0."""

    mean: float
    std: float
    ci_low: float
    ci_high: float
    n_pairs: int
    paired: bool
    seeds: tuple[int, ...] = ()

    @property
    def has_interval(self) -> bool:
        return not math.isnan(self.ci_low)


def t_quantile(df: float) -> float:
    """The two-sided 95 % critical value of Student's t with ``df`` degrees of freedom."""
    return float(student_t.ppf(0.5 + LEVEL / 2, df))


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else NAN


def sample_std(values: Sequence[float]) -> float:
    """Standard deviation with ddof=1; ``nan`` for fewer than two values."""
    if len(values) < 2:
        return NAN
    centre = mean(values)
    return math.sqrt(sum((x - centre) ** 2 for x in values) / (len(values) - 1))


def summarize(values: Sequence[float]) -> Summary:
    """Mean ± t(0.975, n-1) * std / sqrt(n); no interval (``nan``) for n < 2."""
    n = len(values)
    centre, std = mean(values), sample_std(values)
    if n < 2:
        return Summary(n, centre, std, NAN, NAN)
    half = t_quantile(n - 1) * std / math.sqrt(n)
    return Summary(n, centre, std, centre - half, centre + half)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> Difference:
    """``a[seed] - b[seed]`` over the seeds in both (``a``, ``b``: seed -> value), summarised."""
    seeds = tuple(sorted(set(a) & set(b)))
    summary = summarize([a[seed] - b[seed] for seed in seeds])
    return Difference(summary.mean, summary.std, summary.ci_low, summary.ci_high, len(seeds), True, seeds)


def welch_difference(a: Sequence[float], b: Sequence[float]) -> Difference:
    """``mean(a) - mean(b)`` with Welch's t interval (unequal variances, Welch-Satterthwaite degrees of
    freedom); no interval unless both arms have two values or more."""
    centre = mean(a) - mean(b) if a and b else NAN
    if len(a) < 2 or len(b) < 2:
        return Difference(centre, NAN, NAN, NAN, 0, False)
    va, vb = sample_std(a) ** 2 / len(a), sample_std(b) ** 2 / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:  # both arms constant: the difference is known exactly
        return Difference(centre, se, centre, centre, 0, False)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t_quantile(df) * se
    return Difference(centre, se, centre - half, centre + half, 0, False)


def difference(a: Mapping[int, float], b: Mapping[int, float]) -> Difference:
    """Paired by seed when the arms share a seed, else Welch's interval on their values."""
    if set(a) & set(b):
        return paired_difference(a, b)
    return welch_difference(list(a.values()), list(b.values()))
