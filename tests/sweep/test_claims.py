"""vlp.sweep.claims: the claim grammar, its error messages, and the verdict rule on given intervals."""

from __future__ import annotations

import pytest

from vlp.errors import UserError
from vlp.sweep.claims import Claim, judge, parse_claim
from vlp.sweep.stats import NAN, Difference

ARMS = ("base", "wide", "whole_word_masking=true")
METRICS = ("val/acc", "val/loss")


def paired(low: float, high: float, n: int = 3) -> Difference:
    return Difference((low + high) / 2, 0.1, low, high, n, True)


def test_parse_the_three_forms() -> None:
    assert parse_claim("wide > base on val/acc", ARMS, METRICS) == Claim(
        "wide > base on val/acc", "wide", ">", "base", "val/acc"
    )
    assert parse_claim("whole_word_masking=true<base on val/loss", ARMS, METRICS).op == "<"
    parity = parse_claim("  wide ~ base on val/loss within 0.05 ", ARMS, METRICS)
    assert (parity.op, parity.tolerance, parity.metric) == ("~", 0.05, "val/loss")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("wide > narrow on val/acc", "unknown arm 'narrow'; the arms are base, wide"),
        ("wide > base on val/f1", "unknown metric 'val/f1'; the sweep's metrics are val/acc, val/loss"),
        ("wide beats base on val/acc", "not of the form"),
        ("wide > base", "not of the form"),
        ("wide > wide on val/acc", "compares arm 'wide' with itself"),
        ("wide ~ base on val/acc", "a parity claim needs its tolerance"),
        ("wide ~ base on val/acc within -1", "tolerance '-1' is not a positive number"),
        ("wide ~ base on val/acc within abc", "tolerance 'abc' is not a positive number"),
        ("wide > base on val/acc within 0.1", "'within 0.1' is for parity claims"),
    ],
)
def test_a_bad_claim_names_itself_and_the_problem(text: str, message: str) -> None:
    with pytest.raises(UserError, match="claim") as caught:
        parse_claim(text, ARMS, METRICS)
    assert repr(text) in str(caught.value)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "low", "high", "outcome"),
    [
        ("wide > base on val/acc", 0.01, 0.2, "holds"),
        ("wide > base on val/acc", -0.2, -0.01, "does not hold"),
        ("wide > base on val/acc", -0.01, 0.2, "inconclusive"),
        ("wide < base on val/loss", -0.2, -0.01, "holds"),
        ("wide < base on val/loss", 0.01, 0.2, "does not hold"),
        ("wide < base on val/loss", -0.2, 0.0, "inconclusive"),  # touching 0 is not above it
        ("wide ~ base on val/loss within 0.05", -0.04, 0.05, "holds"),
        ("wide ~ base on val/loss within 0.05", 0.06, 0.2, "does not hold"),
        ("wide ~ base on val/loss within 0.05", -0.3, -0.051, "does not hold"),
        ("wide ~ base on val/loss within 0.05", 0.0, 0.06, "inconclusive"),
    ],
)
def test_verdict_rule(text: str, low: float, high: float, outcome: str) -> None:
    verdict = judge(parse_claim(text, ARMS, METRICS), paired(low, high))
    assert verdict.outcome == outcome
    assert f"[{low:+.4g}, {high:+.4g}]" in verdict.reason and "paired over n=3 seeds" in verdict.reason


def test_no_interval_is_inconclusive_and_says_why() -> None:
    claim = parse_claim("wide > base on val/acc", ARMS, METRICS)
    one_pair = judge(claim, Difference(0.5, NAN, NAN, NAN, 1, True))
    assert (one_pair.outcome, one_pair.reason) == ("inconclusive", "n=1 paired seed: no interval")
    welch = judge(claim, Difference(0.5, NAN, NAN, NAN, 0, False))
    assert welch.outcome == "inconclusive" and "needs two values in each arm" in welch.reason


def test_welch_fallback_is_named_in_the_reason() -> None:
    claim = parse_claim("wide > base on val/acc", ARMS, METRICS)
    verdict = judge(claim, Difference(0.5, 0.1, 0.2, 0.8, 0, False))
    assert verdict.outcome == "holds"
    assert "Welch's interval on the two arms (no seed in both, so no pairing)" in verdict.reason
