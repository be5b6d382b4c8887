"""vlp.sweep.report on a sweep folder written here with fixed numbers: arms base, wide, deep (seed 3
failed) and fresh (seed 2 never started). Metric values are dyadic fractions, so means, stds and paired
differences are exact and compared with ==; intervals use the t quantile's closed form for 1 and 2 degrees
of freedom with a relative 1e-12 (scipy inverts the distribution numerically: last-ulp differences)."""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vlp.cli import main as cli_main
from vlp.errors import UserError
from vlp.sweep.report import CSV_COLUMNS, main, write_report
from vlp.sweep.results import Report, Row, build_report

T1 = math.tan(math.pi * (0.975 - 0.5))  # Student's t quantile, 1 df
T2 = (2 * 0.975 - 1) * math.sqrt(2 / (4 * 0.975 * (1 - 0.975)))  # Student's t quantile, 2 df
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RECIPE = Path(__file__).resolve().parents[2] / "configs" / "vilt" / "shapes_pretrain.yaml"

ACC = {
    "base": {1: 0.5, 2: 0.75, 3: 1.0},
    "wide": {1: 1.0, 2: 1.375, 3: 1.75},  # base + 0.5, 0.625, 0.75
    "deep": {1: 0.25, 2: 0.375, 3: 100.0},  # seed 3 failed: its 100.0 must not count
    "fresh": {1: 0.625},  # seed 2 missing
}
LOSS = {
    "base": {1: 2.0, 2: 1.5, 3: 1.0},
    "wide": {1: 2.0, 2: 1.625, 3: 1.25},  # base + 0, 0.125, 0.25
    "deep": {1: 3.0, 2: 3.0},
    "fresh": {},  # seed 1 is done but never logged val/loss
}
CLAIMS = [
    "wide > base on val/acc",  # holds
    "base > wide on val/acc",  # does not hold
    "deep > base on val/acc",  # inconclusive: 2 pairs
    "wide ~ base on val/loss within 0.5",  # holds
]


@dataclass(frozen=True)
class FakeMetric:
    name: str
    mode: str
    stage: str | None = None


@dataclass(frozen=True)
class FakeSpec:
    out: str
    metrics: list[FakeMetric] = field(
        default_factory=lambda: [FakeMetric("val/acc", "max"), FakeMetric("val/loss", "min", "main")]
    )
    baseline: str | None = "base"
    claims: list[str] = field(default_factory=lambda: list(CLAIMS))


def validations(arm: str, seed: int) -> list[dict]:
    """Two validations ending at the final values; base seed 1 peaks in between (0.875 at step 15)."""
    acc, loss = ACC[arm][seed], LOSS[arm].get(seed)
    first, last = {"step": 10, "epoch": 0, "val/acc": acc - 0.25}, {"step": 20, "epoch": 1, "val/acc": acc}
    if loss is not None:
        first["val/loss"], last["val/loss"] = loss + 0.5, loss
    middle = (
        [{"step": 15, "epoch": 0, "val/acc": 0.875, "val/loss": 0.25}] if (arm, seed) == ("base", 1) else []
    )
    return [first, *middle, last]


def write_sweep(out: Path) -> None:
    trials = []
    for arm in ACC:
        for seed in (1, 2, 3) if arm != "fresh" else (1, 2):
            run_dir = f"{arm}/seed_{seed}/main"
            trials.append(
                {
                    "trial": f"{arm}/seed_{seed}",
                    "arm": arm,
                    "seed": seed,
                    "stage": "main",
                    "run_id": f"{list(ACC).index(arm):012x}",  # one per arm: the arms train different things
                    "run_dir": run_dir,
                    "overrides": {},
                    "recipe": ["configs/vilt/shapes_pretrain.yaml"],
                    "after": None,
                }
            )
            if seed not in ACC[arm]:
                continue  # never started: no run folder
            failed = (arm, seed) == ("deep", 3)
            status = {
                "state": "failed" if failed else "done",
                "exit_code": 1 if failed else 0,
                "job_id": None,
                "host": "localhost",
                "pid": 1234,
                "started": "2024-01-01T00:00:00",
                "finished": "2024-01-01T00:01:00",
                "attempts": 1,
            }
            curve = validations(arm, seed)
            metrics = {
                "final": {k: v for k, v in curve[-1].items() if k.startswith("val/")},
                "validations": curve,
            }
            (out / run_dir).mkdir(parents=True)
            (out / run_dir / "status.json").write_text(json.dumps(status))
            (out / run_dir / "metrics.json").write_text(json.dumps(metrics))
    (out / "trials.json").write_text(json.dumps(trials))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    out = tmp_path / "sweeps" / "demo"
    out.mkdir(parents=True)
    write_sweep(out)
    return out


def report_of(out: Path, **changes: object) -> Report:
    spec = FakeSpec(str(out))
    return build_report(out, spec.metrics, spec.baseline, spec.claims, **changes)  # type: ignore[arg-type]


def row(report: Report, arm: str, metric: str) -> Row:
    return next(r for r in report.rows if r.arm == arm and r.metric.name == metric)


def test_arm_summaries_equal_the_hand_computation(sweep: Path) -> None:
    report = report_of(sweep)
    base = row(report, "base", "val/acc")
    assert (base.summary.n, base.n_missing, base.summary.mean, base.summary.std) == (3, 0, 0.75, 0.25)
    half = T2 * 0.25 / math.sqrt(3)
    assert base.summary.ci_low == pytest.approx(0.75 - half, rel=1e-12)
    assert base.summary.ci_high == pytest.approx(0.75 + half, rel=1e-12)
    assert base.diff is None  # the baseline against itself

    deep = row(report, "deep", "val/acc")  # the failed seed 3 (100.0) is not averaged in
    assert (deep.summary.n, deep.n_missing, deep.summary.mean) == (2, 1, 0.3125)
    fresh = row(report, "fresh", "val/acc")
    assert (fresh.summary.n, fresh.n_missing, fresh.summary.mean) == (1, 1, 0.625)
    assert math.isnan(fresh.summary.std) and not fresh.summary.has_interval
    assert row(report, "fresh", "val/loss").summary.n == 0


def test_paired_differences_equal_the_hand_computation(sweep: Path) -> None:
    report = report_of(sweep)
    wide = row(report, "wide", "val/acc").diff
    assert wide is not None and wide.paired
    assert (wide.n_pairs, wide.mean, wide.std) == (3, 0.625, 0.125)  # differences 0.5, 0.625, 0.75
    assert wide.ci_low == pytest.approx(0.625 - T2 * 0.125 / math.sqrt(3), rel=1e-12)
    assert wide.ci_high == pytest.approx(0.625 + T2 * 0.125 / math.sqrt(3), rel=1e-12)

    deep = row(report, "deep", "val/acc").diff  # seeds 1, 2: differences -0.25, -0.375
    assert deep is not None and (deep.n_pairs, deep.mean) == (2, -0.3125)
    assert deep.ci_low == pytest.approx(-0.3125 - T1 * 0.0625, rel=1e-12)  # T1 * (0.0625 sqrt 2) / sqrt 2

    fresh = row(report, "fresh", "val/acc").diff
    assert fresh is not None and (fresh.n_pairs, fresh.mean) == (1, 0.125) and not fresh.has_interval


def test_verdicts(sweep: Path) -> None:
    verdicts = {v.claim.text: v for v in report_of(sweep).verdicts}
    assert [verdicts[text].outcome for text in CLAIMS] == ["holds", "does not hold", "inconclusive", "holds"]
    assert "paired over n=2 seeds" in verdicts["deep > base on val/acc"].reason
    low = 0.125 - T2 * 0.125 / math.sqrt(3)  # loss differences 0, 0.125, 0.25
    assert f"[{low:+.4g}, " in verdicts["wide ~ base on val/loss within 0.5"].reason


def test_missing_and_failed_trials_are_flagged(sweep: Path) -> None:
    issues = {(i.trial, i.state): i.detail for i in report_of(sweep).issues}
    assert issues == {
        ("deep/seed_3", "failed"): "exit code 1",
        ("fresh/seed_2", "missing"): "no status.json",
        ("fresh/seed_1", "done"): "no final value of val/loss in metrics.json",
    }


def test_best_value_by_mode_and_curves(sweep: Path) -> None:
    report = report_of(sweep, value="best")
    # base seed 1 peaked at 0.875 (acc, max) and 0.25 (loss, min) at step 15
    assert row(report, "base", "val/acc").summary.mean == (0.875 + 0.75 + 1.0) / 3
    assert row(report, "base", "val/loss").values == {1: 0.25, 2: 1.5, 3: 1.0}
    # mean over seeds at each step; step 15 only has seed 1
    assert report.curves["val-acc"]["base"] == [(10, (0.25 + 0.5 + 0.75) / 3), (15, 0.875), (20, 0.75)]
    assert report.curves["val-acc"]["deep"] == [(10, (0.0 + 0.125) / 2), (20, 0.3125)]  # failed seed left out


def test_written_files(sweep: Path) -> None:
    report = report_of(sweep)
    written = write_report(report, sweep)
    assert {p.relative_to(sweep).as_posix() for p in written} == {
        "results.csv",
        "results.md",
        "plots/val-acc.png",
        "plots/curves_val-acc.png",
        "plots/val-loss.png",
        "plots/curves_val-loss.png",
    }
    for path in written:
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG_MAGIC

    with (sweep / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 8  # 4 arms x 2 metrics
    wide = next(r for r in rows if r["arm"] == "wide" and r["metric"] == "val/acc")
    assert (wide["stage"], wide["n"], wide["n_missing"], wide["mean"], wide["std"]) == (
        "main",
        "3",
        "0",
        "1.375",
        "0.375",
    )
    assert (wide["diff_mean"], wide["n_pairs"]) == ("0.625", "3")
    assert float(wide["diff_ci_low"]) == pytest.approx(0.625 - T2 * 0.125 / math.sqrt(3), rel=1e-12)
    fresh = next(r for r in rows if r["arm"] == "fresh" and r["metric"] == "val/acc")
    assert (fresh["std"], fresh["ci_low"], fresh["diff_ci_low"], fresh["n_pairs"]) == ("", "", "", "1")
    base = next(r for r in rows if r["arm"] == "base" and r["metric"] == "val/acc")
    assert base["diff_mean"] == base["n_pairs"] == ""

    markdown = (sweep / "results.md").read_text()
    assert "## val/acc (stage main, mode max)" in markdown
    assert "| fresh | 1 | 1 | 0.625 | n=1 | +0.125 no interval (1 pair) |" in markdown
    assert "- `deep > base on val/acc`: **inconclusive** (" in markdown
    assert "| deep/seed_3 | main | failed | exit code 1 |" in markdown
    assert "| fresh/seed_2 | main | missing | no status.json |" in markdown


def test_plots_are_deterministic(sweep: Path, tmp_path: Path) -> None:
    report = report_of(sweep)
    first = tmp_path / "first"
    first.mkdir()
    write_report(report, first)
    write_report(report, sweep)
    for name in ("val-acc.png", "curves_val-loss.png"):
        assert (first / "plots" / name).read_bytes() == (sweep / "plots" / name).read_bytes()


def test_bad_inputs_name_the_problem(sweep: Path, tmp_path: Path) -> None:
    spec = FakeSpec(str(sweep))
    with pytest.raises(
        UserError, match="baseline 'narrow' is not an arm of the sweep; the arms are base, wide"
    ):
        build_report(sweep, spec.metrics, "narrow", [])
    with pytest.raises(UserError, match="claim 'wide > base on val/f1': unknown metric 'val/f1'"):
        build_report(sweep, spec.metrics, "base", ["wide > base on val/f1"])
    with pytest.raises(
        UserError, match=re.escape("metric 'val/acc': stage 'finetune' is not in trials.json")
    ):
        build_report(sweep, [FakeMetric("val/acc", "max", "finetune")], None, [])
    with pytest.raises(UserError, match=re.escape("metrics ['val/acc', 'val/acc']: each metric once")):
        build_report(sweep, [FakeMetric("val/acc", "max"), FakeMetric("val/acc", "min")], None, [])
    with pytest.raises(UserError, match=re.escape("trials.json: no trials.json; run the sweep first")):
        build_report(tmp_path / "nowhere", spec.metrics, None, [])


def test_a_metric_without_stage_is_read_at_the_last_stage(tmp_path: Path) -> None:
    """Two stages; wide/seed_2's pretrain failed, so its finetune never started."""
    trials = []
    for arm, seed in [("base", 1), ("base", 2), ("wide", 1), ("wide", 2)]:
        for stage in ("pretrain", "finetune"):
            run_dir = tmp_path / arm / f"seed_{seed}" / stage
            entry = {"trial": f"{arm}/seed_{seed}", "arm": arm, "seed": seed, "stage": stage}
            trials.append({**entry, "run_dir": str(run_dir.relative_to(tmp_path)), "after": None})
            if (arm, seed, stage) == ("wide", 2, "finetune"):
                continue
            run_dir.mkdir(parents=True)
            failed = (arm, seed, stage) == ("wide", 2, "pretrain")
            state = {"state": "failed" if failed else "done", "exit_code": 137 if failed else 0}
            (run_dir / "status.json").write_text(json.dumps(state))
            acc = {"pretrain": 9.0, "finetune": seed + (0.5 if arm == "wide" else 0.0)}[stage]
            (run_dir / "metrics.json").write_text(json.dumps({"final": {"val/acc": acc}, "validations": []}))
    (tmp_path / "trials.json").write_text(json.dumps(trials))
    report = build_report(tmp_path, [FakeMetric("val/acc", "max")], "base", ["wide > base on val/acc"])
    assert [m.stage for m in report.metrics] == ["finetune"]
    wide = row(report, "wide", "val/acc")
    assert (wide.values, wide.n_missing) == ({1: 1.5}, 1)
    assert wide.diff is not None and (wide.diff.n_pairs, wide.diff.mean) == (1, 0.5)
    assert report.verdicts[0].outcome == "inconclusive"
    assert report.verdicts[0].reason == "n=1 paired seed: no interval"
    assert [(i.trial, i.stage, i.state, i.detail) for i in report.issues] == [
        ("wide/seed_2", "pretrain", "failed", "exit code 137"),
        ("wide/seed_2", "finetune", "missing", "no status.json"),
    ]
    assert report.curves["val-acc"]["base"] == []
    write_report(report, tmp_path)  # an empty curve still gives a plot
    assert (tmp_path / "plots" / "curves_val-acc.png").read_bytes()[:8] == PNG_MAGIC


def test_a_predict_stages_metric_is_reported_without_curves(tmp_path: Path) -> None:
    trials = []
    for arm, seed in [("base", 1), ("base", 2), ("guided", 1), ("guided", 2)]:
        run_dir = tmp_path / arm / f"seed_{seed}" / "draw"
        run_dir.mkdir(parents=True)
        trials.append({"trial": f"{arm}/seed_{seed}", "arm": arm, "seed": seed, "stage": "draw",
                       "command": "predict", "run_dir": str(run_dir.relative_to(tmp_path)), "after": None})  # fmt: skip
        (run_dir / "status.json").write_text(json.dumps({"state": "done", "exit_code": 0}))
        score = 0.25 * seed + (0.5 if arm == "guided" else 0.0)
        record = {"final": {"predict/semantic_score": score}, "validations": [], "best": {}, "complete": True}
        (run_dir / "metrics.json").write_text(json.dumps(record))
    (tmp_path / "trials.json").write_text(json.dumps(trials))
    metric = FakeMetric("predict/semantic_score", "max")
    report = build_report(tmp_path, [metric], "base", ["guided > base on predict/semantic_score"])
    guided = row(report, "guided", "predict/semantic_score")
    assert guided.values == {1: 0.75, 2: 1.0}
    assert guided.diff is not None and (guided.diff.n_pairs, guided.diff.mean) == (2, 0.5)
    write_report(report, tmp_path)
    assert (tmp_path / "plots" / "predict-semantic_score.png").read_bytes()[:8] == PNG_MAGIC
    assert not list((tmp_path / "plots").glob("curves_*"))
    assert "curves" not in (tmp_path / "results.md").read_text()


def test_run_minutes_is_the_runs_timed_attempts_or_its_one_attempts_span(tmp_path: Path) -> None:
    statuses = {
        ("dense", 1): {"run_seconds": 600.0, "attempts": 2},
        ("dense", 2): {"started": "2026-01-01T10:00:00+00:00", "finished": "2026-01-01T10:12:00+00:00", "attempts": 1},
        ("sparse", 1): {"run_seconds": 480.0, "attempts": 1},
        ("sparse", 2): {"started": "2026-01-01T10:00:00+00:00", "finished": "2026-01-01T10:30:00+00:00", "attempts": 2},
    }  # fmt: skip
    trials = []
    for (arm, seed), status in statuses.items():
        run_dir = tmp_path / arm / f"seed_{seed}" / "main"
        run_dir.mkdir(parents=True)
        trials.append({"trial": f"{arm}/seed_{seed}", "arm": arm, "seed": seed, "stage": "main",
                       "run_dir": str(run_dir.relative_to(tmp_path)), "after": None})  # fmt: skip
        (run_dir / "status.json").write_text(json.dumps({"state": "done", "exit_code": 0, **status}))
        (run_dir / "metrics.json").write_text(json.dumps({"final": {}, "validations": [], "complete": True}))
    (tmp_path / "trials.json").write_text(json.dumps(trials))
    report = build_report(tmp_path, [FakeMetric("run/minutes", "min")], "dense", [])
    assert row(report, "dense", "run/minutes").values == {1: 10.0, 2: 12.0}
    sparse = row(report, "sparse", "run/minutes")
    assert (sparse.values, sparse.n_missing) == ({1: 8.0}, 1)  # seed 2: two attempts, untimed
    assert [(i.trial, i.detail) for i in report.issues] == [
        ("sparse/seed_2", "no run time in status.json (resumed before run_seconds was recorded)")
    ]
    write_report(report, tmp_path)
    assert not list((tmp_path / "plots").glob("curves_*"))


def write_sweep_file(path: Path, out: str | None) -> Path:
    """A sweep file whose arms are base, wide, deep and fresh (a zip axis with names)."""
    lines = [
        "name: demo",
        f"recipe: {RECIPE}",
        "axes:",
        "  - zip: {names: [base, wide, deep, fresh], model.init_args.lr: [0.001, 0.002, 0.003, 0.004]}",
        "seeds: [1, 2, 3]",
        "metrics: [{name: val/acc, mode: max}, {name: val/loss, mode: min, stage: main}]",
        "baseline: base",
        "claims:",
        *[f"  - {claim}" for claim in CLAIMS],
        *([f"out: {out}"] if out is not None else []),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_main_reads_the_sweep_file(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep_file = write_sweep_file(tmp_path / "demo.yaml", out=str(sweep))
    report = main([str(sweep_file)])
    assert [v.outcome for v in report.verdicts] == ["holds", "does not hold", "inconclusive", "holds"]
    printed = capsys.readouterr().out
    assert f"wrote {sweep / 'results.csv'}" in printed
    assert "deep > base on val/acc: inconclusive (deep - base = -0.3125" in printed
    assert "3 trial stages missing, failed or without a value" in printed
    assert (sweep / "plots" / "curves_val-loss.png").read_bytes()[:8] == PNG_MAGIC


def test_main_default_and_given_sweep_folder(
    sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep_file = write_sweep_file(tmp_path / "demo.yaml", out=None)
    monkeypatch.chdir(tmp_path)  # out defaults to sweeps/<name>, relative to the working folder
    assert main([str(sweep_file), "--value", "best"]).value == "best"
    assert (sweep / "results.md").is_file()
    (sweep / "results.md").unlink()
    cli_main(["sweep", "report", str(sweep_file)])  # python -m vlp sweep report SWEEP.yaml
    assert (sweep / "results.md").is_file()
    elsewhere = tmp_path / "copy"
    with pytest.raises(UserError, match=re.escape(f"{elsewhere / 'trials.json'}: no trials.json")):
        main([str(sweep_file), "--out", str(elsewhere)])


def write_shared_sweep(out: Path, old_format: bool) -> None:
    """Arms base and wide at seeds 1-3, stages pre then ft; the arms differ in ft only, so each seed's pre
    is one run, in base's folder (val/pre 0.5, 0.75, 1.0). ``old_format``: trials.json as written before
    stages were shared (each trial stage in its own folder), and wide/seed_1's pre run started in its own
    folder then (done there, val/pre 0.625): the report reads it there."""
    pre = {1: 0.5, 2: 0.75, 3: 1.0}
    acc = {"base": {1: 0.25, 2: 0.5, 3: 0.75}, "wide": {1: 0.5, 2: 1.0, 3: 1.5}}
    entries, folders = [], {}
    for arm in ("base", "wide"):
        for seed in (1, 2, 3):
            trial = f"{arm}/seed_{seed}"
            shared = arm == "wide" and (old_format is False or seed != 1)
            pre_dir = f"base/seed_{seed}/pre" if shared and not old_format else f"{trial}/pre"
            for stage, run_dir, after, run_id in [
                ("pre", pre_dir, None, "00000000000p"),
                ("ft", f"{trial}/ft", pre_dir, f"0000000000f{arm[0]}"),
            ]:
                entry = {"trial": trial, "arm": arm, "seed": seed, "stage": stage, "run_id": run_id,
                         "run_dir": run_dir, "after": after}  # fmt: skip
                if not old_format:
                    entry["shared_with"] = f"base/seed_{seed}" if shared and stage == "pre" else None
                entries.append(entry)
            if not shared:
                folders[f"{trial}/pre"] = {"val/pre": pre[seed] if arm == "base" else 0.625}
            folders[f"{trial}/ft"] = {"val/acc": acc[arm][seed]}
    for run_dir, final in folders.items():
        (out / run_dir).mkdir(parents=True)
        (out / run_dir / "status.json").write_text(json.dumps({"state": "done", "exit_code": 0}))
        (out / run_dir / "metrics.json").write_text(json.dumps({"final": final, "validations": []}))
    (out / "trials.json").write_text(json.dumps(entries))


SHARED_METRICS = [FakeMetric("val/pre", "max", "pre"), FakeMetric("val/acc", "max", "ft")]


def test_a_shared_stages_metric_counts_in_every_arm_that_shares_it(tmp_path: Path) -> None:
    write_shared_sweep(tmp_path, old_format=False)
    report = build_report(tmp_path, SHARED_METRICS, "base", ["wide > base on val/acc"])
    base, wide = row(report, "base", "val/pre"), row(report, "wide", "val/pre")
    assert base.values == wide.values == {1: 0.5, 2: 0.75, 3: 1.0}  # read from base's folders for both
    assert (wide.summary.n, wide.n_missing, wide.summary.mean, wide.summary.std) == (3, 0, 0.75, 0.25)
    assert wide.diff is not None and (wide.diff.n_pairs, wide.diff.mean, wide.diff.std) == (3, 0.0, 0.0)
    acc = row(report, "wide", "val/acc")
    assert (acc.summary.n, acc.summary.mean, acc.summary.std) == (3, 1.0, 0.5)
    assert acc.diff is not None and (acc.diff.n_pairs, acc.diff.mean, acc.diff.std) == (3, 0.5, 0.25)
    assert acc.diff.ci_low == pytest.approx(0.5 - T2 * 0.25 / math.sqrt(3), rel=1e-12)
    assert report.issues == []


def test_the_report_of_a_folder_from_before_sharing_reads_each_run_where_it_is(tmp_path: Path) -> None:
    write_shared_sweep(tmp_path, old_format=True)
    report = build_report(tmp_path, SHARED_METRICS, "base", [])
    wide = row(report, "wide", "val/pre")
    assert wide.values == {1: 0.625, 2: 0.75, 3: 1.0}  # its own started run, then base's shared runs
    assert wide.diff is not None and (wide.diff.n_pairs, wide.diff.mean) == (3, 0.125 / 3)
    assert report.issues == []
