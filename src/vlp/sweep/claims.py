"""A sweep's claims and their verdicts.

A claim is one of::

    ARM_A > ARM_B on METRIC              A's value is greater than B's
    ARM_A < ARM_B on METRIC              A's value is less than B's
    ARM_A ~ ARM_B on METRIC within TOL   parity: |A - B| is within TOL

``>`` and ``<`` compare the metric's values as numbers whatever its mode (for a loss, "A < B" says A's loss
is lower). The verdict reads the 95 % interval of the difference A - B (paired by seed, or Welch's when no
seed is in both arms, :func:`vlp.sweep.stats.difference`):

- ``>``: holds if the interval lies entirely above 0, does not hold if entirely below 0; ``<`` mirrored;
- ``~``: holds if the interval lies within [-TOL, TOL], does not hold if it lies entirely outside it;
- otherwise, or without an interval (fewer than two pairs), inconclusive at this n.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from vlp.errors import UserError
from vlp.sweep.stats import Difference

Op = Literal[">", "<", "~"]
Outcome = Literal["holds", "does not hold", "inconclusive"]

GRAMMAR = "'A > B on METRIC', 'A < B on METRIC' or 'A ~ B on METRIC within TOL'"
_CLAIM = re.compile(
    r"^\s*(?P<left>[^\s<>~]+)\s*(?P<op>[<>~])\s*(?P<right>[^\s<>~]+)\s+on\s+(?P<metric>\S+)"
    r"(?:\s+within\s+(?P<tol>\S+))?\s*$"
)


@dataclass(frozen=True)
class Claim:
    text: str
    left: str
    op: Op
    right: str
    metric: str
    tolerance: float | None = None


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    outcome: Outcome
    difference: Difference
    reason: str


def parse_claim(text: str, arms: Collection[str], metrics: Collection[str]) -> Claim:
    """``text`` as a :class:`Claim` over the sweep's ``arms`` and ``metrics`` (names); a
    :class:`~vlp.errors.UserError` naming the claim and what is wrong otherwise."""
    match = _CLAIM.match(text)
    if match is None:
        raise UserError(f"claim {text!r}: not of the form {GRAMMAR}")
    op: Op = match["op"]  # type: ignore[assignment]
    for side in ("left", "right"):
        if match[side] not in arms:
            raise UserError(f"claim {text!r}: unknown arm {match[side]!r}; the arms are {', '.join(arms)}")
    if match["left"] == match["right"]:
        raise UserError(f"claim {text!r}: compares arm {match['left']!r} with itself")
    if match["metric"] not in metrics:
        raise UserError(
            f"claim {text!r}: unknown metric {match['metric']!r}; the sweep's metrics are {', '.join(metrics)}"
        )
    return Claim(text, match["left"], op, match["right"], match["metric"], _tolerance(text, op, match["tol"]))


def _tolerance(text: str, op: Op, given: str | None) -> float | None:
    if op != "~":
        if given is not None:
            raise UserError(
                f"claim {text!r}: 'within {given}' is for parity claims ('A ~ B on METRIC within TOL')"
            )
        return None
    if given is None:
        raise UserError(f"claim {text!r}: a parity claim needs its tolerance: 'A ~ B on METRIC within TOL'")
    try:
        tolerance = float(given)
    except ValueError:
        tolerance = math.nan
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise UserError(f"claim {text!r}: tolerance {given!r} is not a positive number (e.g. 'within 0.01')")
    return tolerance


def judge(claim: Claim, difference: Difference) -> Verdict:
    """The verdict on ``claim`` from ``difference`` (left arm minus right arm)."""
    if not difference.has_interval:
        return Verdict(claim, "inconclusive", difference, _no_interval(claim, difference))
    low, high = difference.ci_low, difference.ci_high
    if claim.op == "~":
        tol = claim.tolerance or 0.0
        outcome: Outcome = (
            "holds"
            if -tol <= low and high <= tol
            else "does not hold"
            if low > tol or high < -tol
            else "inconclusive"
        )
    else:
        sign = 1.0 if claim.op == ">" else -1.0
        lo, hi = sorted((sign * low, sign * high))
        outcome = "holds" if lo > 0 else "does not hold" if hi < 0 else "inconclusive"
    return Verdict(claim, outcome, difference, describe(claim, difference))


def describe(claim: Claim, difference: Difference) -> str:
    """The numbers behind a verdict: ``A - B = mean, 95 % CI [low, high]``, how it was computed, and n."""
    text = (
        f"{claim.left} - {claim.right} = {difference.mean:+.4g}, 95 % CI "
        f"[{difference.ci_low:+.4g}, {difference.ci_high:+.4g}]"
    )
    if claim.tolerance is not None:
        text += f" against ±{claim.tolerance:g}"
    return f"{text}, {_how(difference)}"


def _how(difference: Difference) -> str:
    if difference.paired:
        return f"paired over n={difference.n_pairs} seeds"
    return "Welch's interval on the two arms (no seed in both, so no pairing)"


def _no_interval(claim: Claim, difference: Difference) -> str:
    if difference.paired:
        return f"n={difference.n_pairs} paired seed{'s' if difference.n_pairs != 1 else ''}: no interval"
    if math.isnan(difference.mean):
        return "no values in one of the arms"
    return (
        f"{claim.left} - {claim.right} = {difference.mean:+.4g}; Welch's interval (no seed in both arms) "
        "needs two values in each arm: no interval"
    )
