"""``python -m vlp sweep report SWEEP.yaml [--out DIR] [--value final|best]``: a sweep folder's results.

Reads ``<out>/trials.json`` and each run folder's ``status.json`` and ``metrics.json`` (formats:
``docs/sweeps.md``) and writes, into the sweep folder:

- ``results.csv``: one row per arm and metric (:data:`CSV_COLUMNS`);
- ``results.md``: a table per metric, the claims with their verdicts and the numbers behind them, and the
  trials that are missing, failed or unfinished;
- ``plots/<metric>.png`` (each arm's mean with its 95 % interval, its seeds as dots) and
  ``plots/curves_<metric>.png`` (each arm's validation curve, the mean over its seeds at each step; none
  for a predict stage's ``predict/...`` metrics and ``run/minutes``, one value per run).

Only runs whose ``status.json`` says ``done`` count; the others are listed, never averaged in. These three
outputs are the report's own and are rewritten by the next report; nothing else in the folder is touched.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Sequence
from pathlib import Path

from vlp.sweep.results import VALUE_KINDS, Report, SpecLike, build_report
from vlp.sweep.stats import Difference, Summary

CSV_COLUMNS = (
    "arm",
    "metric",
    "stage",
    "n",
    "n_missing",
    "mean",
    "std",
    "ci_low",
    "ci_high",
    "diff_mean",
    "diff_ci_low",
    "diff_ci_high",
    "n_pairs",
)


# ---- writing it ----------------------------------------------------------------------------------------


def write_report(report: Report, out_dir: Path) -> list[Path]:
    """Write ``results.csv``, ``results.md`` and the plots into ``out_dir``; the paths written."""
    from vlp.sweep.plots import plot_curves, plot_metric

    out_dir = Path(out_dir)
    written = [write_csv(report, out_dir / "results.csv"), write_markdown(report, out_dir / "results.md")]
    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for metric in report.metrics:
        note, stage = f"{report.value} value, stage {metric.stage}", f"stage {metric.stage}"
        rows, curves = report.rows_of(metric), report.curves[metric.label]
        written.append(plot_metric(plots / f"{metric.label}.png", metric.name, note, rows, report.baseline))
        if has_curves(metric.name):
            written.append(plot_curves(plots / f"curves_{metric.label}.png", metric.name, stage, curves))
    return written


def has_curves(name: str) -> bool:
    """Whether a metric has validation curves: a predict stage's (``predict/...``) and the run time
    (``run/minutes``) are one value per run."""
    return not name.startswith(("predict/", "run/"))


def _csv_number(x: float | int | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else repr(x)


def write_csv(report: Report, path: Path) -> Path:
    """One row per arm and metric; an undefined number (an interval at n < 2, a difference without a
    baseline) is empty. ``n_pairs`` 0 with a difference: Welch's interval (no seed in both arms)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in report.rows:
            s, d = row.summary, row.diff
            writer.writerow(
                [row.arm, row.metric.name, row.metric.stage, s.n, row.n_missing]
                + [_csv_number(x) for x in (s.mean, s.std, s.ci_low, s.ci_high)]
                + [_csv_number(x) for x in ((d.mean, d.ci_low, d.ci_high, d.n_pairs) if d else (None,) * 4)]
            )
    return path


def fmt(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.4g}"


def interval_text(n: int, low: float, high: float) -> str:
    if math.isnan(low):
        return f"n={n}" if n < 2 else "—"
    return f"[{fmt(low)}, {fmt(high)}]"


def _diff_text(diff: Difference | None) -> str:
    """``+0.05 [0.02, 0.08] (3 pairs)``; ``Welch`` when no seed is in both arms."""
    if diff is None:
        return ""
    if math.isnan(diff.mean):
        return "no values"
    kind = f"{diff.n_pairs} pair{'s' if diff.n_pairs != 1 else ''}" if diff.paired else "Welch"
    interval = f"[{fmt(diff.ci_low)}, {fmt(diff.ci_high)}]" if diff.has_interval else "no interval"
    return f"{diff.mean:+.4g} {interval} ({kind})"


def _mean_text(summary: Summary) -> str:
    if summary.n == 0:
        return "—"
    return fmt(summary.mean) + (f" ± {fmt(summary.std)}" if summary.n > 1 else "")


def write_markdown(report: Report, path: Path) -> Path:
    lines = ["# Sweep results", ""]
    lines.append(
        f"Value: each run's {report.value} validation value. Mean ± sample std (ddof=1) over seeds; 95 % "
        "interval of the mean with Student's t. "
        + (
            f"Difference: arm - {report.baseline} per seed (seeds in both arms), its mean and 95 % t interval "
            "(Welch's interval when no seed is in both)."
            if report.baseline
            else "No baseline: no differences."
        )
    )
    for metric in report.metrics:
        lines += ["", f"## {metric.name} (stage {metric.stage}, mode {metric.mode})", ""]
        header = ["arm", "n", "missing", "mean ± std", "95 % CI"]
        if report.baseline:
            header.append(f"Δ vs {report.baseline} (95 % CI)")
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in report.rows_of(metric):
            s = row.summary
            cells = [
                row.arm + (" (baseline)" if row.arm == report.baseline else ""),
                str(s.n),
                str(row.n_missing),
                _mean_text(s),
                interval_text(s.n, s.ci_low, s.ci_high),
            ]
            if report.baseline:
                cells.append(_diff_text(row.diff))
            lines.append("| " + " | ".join(cells) + " |")
        curves = f" ![curves](plots/curves_{metric.label}.png)" if has_curves(metric.name) else ""
        lines += ["", f"![{metric.name}](plots/{metric.label}.png){curves}"]
    lines += ["", "## Claims", ""]
    if not report.verdicts:
        lines.append("No claims.")
    for verdict in report.verdicts:
        lines.append(f"- `{verdict.claim.text}`: **{verdict.outcome}** ({verdict.reason})")
    lines += ["", "## Missing or failed", ""]
    if not report.issues:
        lines.append("None: every trial is done and has every metric.")
    else:
        lines += ["| trial | stage | state | detail |", "|---|---|---|---|"]
        lines += [f"| {i.trial} | {i.stage} | {i.state} | {i.detail} |" for i in report.issues]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- the command ---------------------------------------------------------------------------------------


def sweep_folder(spec: SpecLike) -> Path:
    """The sweep file's ``out``, by default ``sweeps/<name>``."""
    return Path(spec.out) if spec.out is not None else Path("sweeps") / spec.name


def main(argv: Sequence[str]) -> Report:
    parser = argparse.ArgumentParser(
        prog="python -m vlp sweep report",
        description="Write results.csv, results.md and plots/ for a sweep from its run folders.",
        allow_abbrev=False,
    )
    parser.add_argument("spec", type=Path, help="the sweep file")
    parser.add_argument(
        "--out", type=Path, default=None, help="the sweep folder (default: the sweep file's out)"
    )
    parser.add_argument(
        "--value",
        choices=VALUE_KINDS,
        default="final",
        help="each run's last validation value, or its best by mode",
    )
    cfg = parser.parse_args(list(argv))
    from vlp.sweep.spec import load_spec

    spec = load_spec(cfg.spec)
    out = cfg.out if cfg.out is not None else sweep_folder(spec)
    report = build_report(out, spec.metrics, spec.baseline, spec.claims, cfg.value)
    for path in write_report(report, out):
        print(f"wrote {path}")
    for verdict in report.verdicts:
        print(f"{verdict.claim.text}: {verdict.outcome} ({verdict.reason})")
    if report.issues:
        print(
            f"{len(report.issues)} trial stages missing, failed or without a value: see {out / 'results.md'}"
        )
    return report
