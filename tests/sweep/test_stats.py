"""vlp.sweep.stats against hand computations. Values are dyadic fractions, so means, stds and differences
are exact in binary and compared with ==; the t quantiles are checked against their closed forms for 1 and 2
degrees of freedom with a relative 1e-12 (scipy inverts the distribution numerically: last-ulp differences)."""

from __future__ import annotations

import math

import pytest
from scipy.stats import t as student_t

from vlp.sweep.stats import difference, paired_difference, summarize, t_quantile, welch_difference

T1 = math.tan(math.pi * (0.975 - 0.5))  # Student's t, 1 df: the Cauchy quantile
T2 = (2 * 0.975 - 1) * math.sqrt(2 / (4 * 0.975 * (1 - 0.975)))  # Student's t, 2 df: closed form


def test_t_quantiles_match_their_closed_forms() -> None:
    assert t_quantile(1) == pytest.approx(T1, rel=1e-12)
    assert t_quantile(2) == pytest.approx(T2, rel=1e-12)
    assert pytest.approx(4.302652729749464, rel=1e-15) == T2  # the printed table value


def test_summary_of_three_values() -> None:
    s = summarize([0.5, 0.75, 1.0])
    assert (s.n, s.mean, s.std) == (3, 0.75, 0.25)  # std: sqrt((0.25**2 + 0 + 0.25**2) / 2)
    half = T2 * 0.25 / math.sqrt(3)
    assert s.ci_low == pytest.approx(0.75 - half, rel=1e-12)
    assert s.ci_high == pytest.approx(0.75 + half, rel=1e-12)


def test_summary_of_non_dyadic_values() -> None:
    """0.7 and 0.2 are not exact in binary: the sum and the hand value differ in the last ulp."""
    s = summarize([0.5, 0.7, 0.9])
    assert s.mean == pytest.approx(0.7, rel=1e-15)
    assert s.std == pytest.approx(0.2, rel=1e-14)
    assert s.ci_high == pytest.approx(0.7 + T2 * 0.2 / math.sqrt(3), rel=1e-12)


def test_one_value_has_no_std_and_no_interval_and_none_has_no_mean() -> None:
    one = summarize([0.625])
    assert (one.n, one.mean) == (1, 0.625)
    assert math.isnan(one.std) and math.isnan(one.ci_low) and math.isnan(one.ci_high)
    assert not one.has_interval
    empty = summarize([])
    assert empty.n == 0 and math.isnan(empty.mean)


def test_paired_difference_uses_only_seeds_in_both() -> None:
    a = {1: 1.0, 2: 1.375, 3: 1.75, 7: 100.0}  # seed 7 is not in b: left out
    b = {1: 0.5, 2: 0.75, 3: 1.0, 9: -100.0}
    d = paired_difference(a, b)
    assert d.paired and d.n_pairs == 3 and d.seeds == (1, 2, 3)
    assert (d.mean, d.std) == (0.625, 0.125)  # differences 0.5, 0.625, 0.75
    half = T2 * 0.125 / math.sqrt(3)
    assert d.ci_low == pytest.approx(0.625 - half, rel=1e-12)
    assert d.ci_high == pytest.approx(0.625 + half, rel=1e-12)
    assert difference(a, b) == d


def test_paired_difference_of_two_seeds_uses_one_degree_of_freedom() -> None:
    d = paired_difference({1: 0.25, 2: 0.375}, {1: 0.5, 2: 0.75})  # differences -0.25, -0.375
    assert (d.n_pairs, d.mean, d.std) == (2, -0.3125, 0.0625 * math.sqrt(2))
    assert d.ci_low == pytest.approx(-0.3125 - T1 * 0.0625, rel=1e-12)  # T1 * std / sqrt(2)
    assert d.ci_high == pytest.approx(-0.3125 + T1 * 0.0625, rel=1e-12)


def test_welch_interval_when_no_seed_is_shared() -> None:
    a, b = {1: 1.0, 2: 2.0, 3: 3.0}, {4: 2.0, 5: 4.0}
    d = difference(a, b)
    assert not d.paired and d.n_pairs == 0
    # var(a)/3 = 1/3, var(b)/2 = 1: se = sqrt(4/3); Welch-Satterthwaite df = (4/3)^2 / ((1/3)^2/2 + 1^2/1) = 32/19
    se = math.sqrt(4 / 3)
    half = float(student_t.ppf(0.975, 32 / 19)) * se
    assert d.mean == -1.0
    assert d.std == pytest.approx(se, rel=1e-15)
    assert d.ci_low == pytest.approx(-1.0 - half, rel=1e-12)
    assert d.ci_high == pytest.approx(-1.0 + half, rel=1e-12)


def test_welch_needs_two_values_per_arm_and_constant_arms_give_a_point() -> None:
    assert not welch_difference([1.0], [2.0, 3.0]).has_interval
    point = welch_difference([1.0, 1.0], [0.5, 0.5])
    assert (point.mean, point.ci_low, point.ci_high) == (0.5, 0.5, 0.5)
