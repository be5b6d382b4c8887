"""A sweep's arms: the points of its axes (``grid``, ``zip``, ``random``) combined, each with its name and
overrides, and the grammar of an override key (``model.init_args.lr``, or ``STAGE:key`` for one stage)."""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from itertools import product
from typing import TYPE_CHECKING, Any

import yaml

from vlp.errors import UserError

if TYPE_CHECKING:
    from vlp.sweep.spec import SweepSpec

BASE_ARM = "base"
ARM_NAME = re.compile(r"^[a-z0-9_.=,-]+$")
DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "choice")


@dataclass(frozen=True)
class Point:
    """One value of an axis: its name part and its overrides (keys possibly ``STAGE:``-prefixed)."""

    name: str
    overrides: dict[str, Any]


@dataclass(frozen=True)
class Arm:
    name: str
    overrides: dict[str, Any]


def check_keys(overrides: dict[str, Any], stages: list[str], where: str, prefixes: bool = True) -> None:
    for key in overrides:
        stage, dotted = split_key(key)
        if stage is not None and (not prefixes or stage not in stages):
            known = (
                f"the stages are {', '.join(stages)}"
                if prefixes
                else "a stage's own overrides take no prefix"
            )
            raise UserError(f"{where}: key {key!r}: {stage!r} is not a stage prefix here; {known}")
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_.]*$", dotted) or dotted.startswith("--"):
            raise UserError(f"{where}: key {key!r}: a dotted recipe key as on the command line, without '--'")


def split_key(key: str) -> tuple[str | None, str]:
    """``"pretrain:a.b"`` -> ``("pretrain", "a.b")``; ``"a.b"`` -> ``(None, "a.b")``."""
    stage, sep, dotted = key.partition(":")
    return (stage, dotted) if sep else (None, key)


def stage_overrides(overrides: dict[str, Any], stage: str) -> dict[str, Any]:
    """The overrides that apply to ``stage``: unprefixed keys and ``stage:``-prefixed ones (prefix removed)."""
    chosen = {}
    for key, value in overrides.items():
        prefix, dotted = split_key(key)
        if prefix is None or prefix == stage:
            chosen[dotted] = value
    return chosen


def run_overrides(
    sweep: dict[str, Any], stage: str, stage_own: dict[str, Any], arm: dict[str, Any]
) -> dict[str, Any]:
    """A stage run's overrides, in order: the sweep's, the stage's own, the arm's (each of the sweep's
    and the arm's keys without a prefix or prefixed with this stage's name)."""
    return {**stage_overrides(sweep, stage), **stage_own, **stage_overrides(arm, stage)}


# ------------------------------------------------------------------------------------------------ arms


def arm_names(spec: SweepSpec, where: str = "sweep file") -> list[str]:
    return [arm.name for arm in arms(spec, where)]


def arms(spec: SweepSpec, where: str = "sweep file") -> list[Arm]:
    """Every arm, in order: the product of the axes' points (the first axis varies slowest)."""
    stages = [s.name for s in spec.stage_list]
    axes = [axis_points(axis, index, stages, where) for index, axis in enumerate(spec.axes)]
    result = []
    for combination in product(*axes):
        overrides: dict[str, Any] = {}
        for point in combination:
            overrides.update(point.overrides)
        name = ",".join(point.name for point in combination) or BASE_ARM
        result.append(Arm(name, overrides))
    names = [arm.name for arm in result]
    for name in names:
        if not ARM_NAME.match(name):
            raise UserError(f"{where}: arm name {name!r}: use [a-z0-9_.=,-] (give the axis `names`)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"{where}: arm {repeated[0]!r} appears twice; give the axis distinct `names`")
    return result


def axis_points(axis: dict[str, Any], index: int, stages: list[str], where: str) -> list[Point]:
    at = f"{where}: axes[{index}]"
    if not isinstance(axis, dict) or len(axis) != 1 or next(iter(axis)) not in ("grid", "zip", "random"):
        raise UserError(f"{at}: one of {{grid: ...}}, {{zip: ...}}, {{random: ...}}, got {axis!r}")
    kind, body = next(iter(axis.items()))
    if not isinstance(body, dict) or not body:
        raise UserError(f"{at}.{kind}: a mapping of keys, got {body!r}")
    if kind == "grid":
        return grid_points(body, stages, f"{at}.grid")
    if kind == "zip":
        return zip_points(body, stages, f"{at}.zip")
    return random_points(body, stages, f"{at}.random")


def grid_points(body: dict[str, Any], stages: list[str], at: str) -> list[Point]:
    check_keys(body, stages, at)
    for key, values in body.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{at}: {key}: a non-empty list of values, got {values!r}")
    keys = list(body)
    return [
        Point(",".join(value_name(k, v) for k, v in zip(keys, values)), dict(zip(keys, values)))
        for values in product(*body.values())
    ]


def zip_points(body: dict[str, Any], stages: list[str], at: str) -> list[Point]:
    body = dict(body)
    names = body.pop("names", None)
    check_keys(body, stages, at)
    lengths = {key: len(v) if isinstance(v, list) else -1 for key, v in body.items()}
    if not body or min(lengths.values()) < 1 or len(set(lengths.values())) != 1:
        raise UserError(f"{at}: lists of one length under each key, got lengths {lengths}")
    count = next(iter(lengths.values()))
    if names is not None and (not isinstance(names, list) or len(names) != count):
        raise UserError(f"{at}.names: a list of {count} names, one per value, got {names!r}")
    keys = list(body)
    points = []
    for i in range(count):
        overrides = {key: body[key][i] for key in keys}
        name = str(names[i]) if names is not None else ",".join(value_name(k, overrides[k]) for k in keys)
        points.append(Point(name, overrides))
    return points


def random_points(body: dict[str, Any], stages: list[str], at: str) -> list[Point]:
    unknown = set(body) - {"n", "seed", "space", "names"}
    if (
        unknown
        or not isinstance(body.get("n"), int)
        or body["n"] < 1
        or not isinstance(body.get("space"), dict)
    ):
        raise UserError(
            f"{at}: {{n: COUNT, seed: SEED, space: {{key: {{log_uniform: [lo, hi]}}, ...}}}}, got {body!r}"
        )
    seed = body.get("seed", 0)
    if not isinstance(seed, int):
        raise UserError(f"{at}.seed: an integer, got {seed!r}")
    space = body["space"]
    check_keys(space, stages, f"{at}.space")
    distributions = {key: parse_distribution(value, f"{at}.space.{key}") for key, value in space.items()}
    rng = random.Random(seed)
    points = []
    for _ in range(body["n"]):
        overrides = {key: draw(rng, kind, args) for key, (kind, args) in distributions.items()}
        points.append(Point(",".join(value_name(k, v) for k, v in overrides.items()), overrides))
    return points


def parse_distribution(value: Any, at: str) -> tuple[str, list[Any]]:
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in DISTRIBUTIONS:
        raise UserError(f"{at}: one of {', '.join(f'{{{d}: [...]}}' for d in DISTRIBUTIONS)}, got {value!r}")
    kind, args = next(iter(value.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise UserError(f"{at}.choice: a non-empty list, got {args!r}")
        return kind, args
    numbers = isinstance(args, list) and len(args) == 2 and all(isinstance(a, (int, float)) for a in args)
    if not numbers or args[0] >= args[1] or (kind == "log_uniform" and args[0] <= 0):
        raise UserError(
            f"{at}.{kind}: [lo, hi] with lo < hi{' and lo > 0' if kind == 'log_uniform' else ''}, got {args!r}"
        )
    if kind == "int_uniform" and not all(isinstance(a, int) for a in args):
        raise UserError(f"{at}.int_uniform: two integers, got {args!r}")
    return kind, args


def draw(rng: random.Random, kind: str, args: list[Any]) -> Any:
    """One value of a distribution from ``rng``: uniform and log-uniform from one ``rng.random()``."""
    if kind == "choice":
        return args[int(rng.random() * len(args))]
    if kind == "int_uniform":
        return args[0] + int(rng.random() * (args[1] - args[0] + 1))
    lo, hi = (math.log(args[0]), math.log(args[1])) if kind == "log_uniform" else args
    value = lo + (hi - lo) * rng.random()
    return round_significant(math.exp(value) if kind == "log_uniform" else value)


def round_significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def value_name(key: str, value: Any) -> str:
    """``model.init_args.lr``, ``0.001`` -> ``lr=0.001``: the key's last dotted part, the value in lower
    case with ``/`` as ``-``."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
    text = text.lower().replace("/", "-").replace(" ", "").replace("'", "").replace('"', "")
    return f"{split_key(key)[1].rsplit('.', 1)[-1]}={text}"
