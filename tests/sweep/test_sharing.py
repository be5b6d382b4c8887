"""Shared stage runs: trial stages of one identity (run id, seed, and the identity of the stage they start
from) are one run, in the folder of the first trial that has it; a sweep folder whose trials.json has no
shared_with (each trial stage in its own folder) keeps the runs started there. Expansion against tables written out by
hand, the status, ``--retry-failed`` and ``--only`` planning, and the launcher running a shared run once
(stand-in fits)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from sweep_parts import LR, SHARED_ARMS, shared_first_stage, write_yaml

from vlp.sweep.check import check_runs, resolved_config
from vlp.sweep.command import plan_trial, selected, status_lines
from vlp.sweep.launch import ChainJob, StageJob, run_chains, sharing_groups
from vlp.sweep.spec import load_spec, parse_spec
from vlp.sweep.status import Status, write_status
from vlp.sweep.trials import Run, expand, place_records, place_runs

FAST, SLOW = SHARED_ARMS  # lr=0.001, lr=0.0005


def where(runs: list[Run]) -> list[tuple[str, str, str, str | None, str | None, str | None]]:
    """``(trial, stage, run_dir, after, shared_with, same_run_as)`` of every trial stage."""
    return [(r.trial, r.stage, r.run_dir, r.after, r.shared_with, r.same_run_as) for r in runs]


SHARED_TABLE = [
    (f"{FAST}/seed_0", "pre", f"{FAST}/seed_0/pre", None, None, None),
    (f"{FAST}/seed_0", "ft", f"{FAST}/seed_0/ft", f"{FAST}/seed_0/pre", None, None),
    (f"{FAST}/seed_1", "pre", f"{FAST}/seed_1/pre", None, None, None),
    (f"{FAST}/seed_1", "ft", f"{FAST}/seed_1/ft", f"{FAST}/seed_1/pre", None, None),
    (f"{SLOW}/seed_0", "pre", f"{FAST}/seed_0/pre", None, f"{FAST}/seed_0", None),
    (f"{SLOW}/seed_0", "ft", f"{SLOW}/seed_0/ft", f"{FAST}/seed_0/pre", None, None),
    (f"{SLOW}/seed_1", "pre", f"{FAST}/seed_1/pre", None, f"{FAST}/seed_1", None),
    (f"{SLOW}/seed_1", "ft", f"{SLOW}/seed_1/ft", f"{FAST}/seed_1/pre", None, None),
]  # fmt: skip


def test_a_stage_the_arms_run_alike_is_one_run_per_seed_in_the_first_trials_folder(
    tmp_path: Path, tiny_shapes: Path
) -> None:
    spec = load_spec(shared_first_stage(tmp_path, tiny_shapes, {"kind": "local"}))
    out = tmp_path / "sweep"
    runs = check_runs(expand(spec), out)
    assert where(runs) == SHARED_TABLE
    ids = {(r.arm, r.seed, r.stage): r.run_id for r in runs}
    assert len({ids[arm, seed, "pre"] for arm in SHARED_ARMS for seed in (0, 1)}) == 1
    assert ids[FAST, 0, "ft"] == ids[FAST, 1, "ft"] != ids[SLOW, 0, "ft"] == ids[SLOW, 1, "ft"]
    # a shared run is its owner's run: the same command line, in the owner's folder
    assert runs[4].argv(out) == runs[0].argv(out)
    # the later stage starts from the shared run's checkpoint, and that is the command line the check parsed
    config = resolved_config(runs[5].argv(out))
    assert config["model"]["init_args"]["init_from"] == str(
        (out / FAST / "seed_0/pre/checkpoints/last.ckpt").resolve()
    )
    assert config["model"]["init_args"]["lr"] == 0.0005
    record = runs[4].record()
    assert (record["run_dir"], record["shared_with"], record["same_run_as"]) == (f"{FAST}/seed_0/pre", f"{FAST}/seed_0", None)  # fmt: skip
    assert [run.sharing_text() for run in runs[4:6]] == [f"shared with {FAST}/seed_0", "-"]
    # --only SLOW still holds the pre-training its trials need, in the FAST trials' folders
    only = selected(spec, runs, [SLOW])
    assert [(r.trial, r.run_dir) for r in only] == [(r[0], r[2]) for r in SHARED_TABLE[4:]]


def chain_spec(**more: object) -> list[Run]:
    """Stages a, then b from a's checkpoint, then c from b's; arms x, y differ in ``a:`` only."""
    data = {
        "name": "s",
        "recipe": "r.yaml",
        "axes": [{"zip": {"names": ["x", "y"], "a:model.init_args.lr": [0.1, 0.2]}}],
        "stages": [{"name": "a"}, {"name": "b", "init_from": "a"}, {"name": "c", "init_from": "b"}],
        "seeds": [0, 1],
        **more,
    }
    return expand(parse_spec(data))


def test_the_chain_before_a_stage_is_part_of_its_identity(tmp_path: Path) -> None:
    """Hand-given run ids: b and c have one id in both arms, but they start from different a runs, so
    nothing is shared; the seeds never share a run."""
    ids = {"a": {"x": "a_x", "y": "a_y"}, "b": {"x": "b", "y": "b"}, "c": {"x": "c", "y": "c"}}
    runs = place_runs(chain_spec(), tmp_path, lambda run: ids[run.stage][run.arm])
    assert [(r.run_dir, r.after, r.shared_with) for r in runs] == [
        (f"{r.trial}/{r.stage}", f"{r.trial}/{prev}" if prev else None, None)
        for r, prev in zip(runs, [None, "a", "b"] * 4)
    ]
    # the same ids for a too: each stage is shared, the chain follows the owner's folders
    same = place_runs(chain_spec(), tmp_path, lambda run: run.stage)
    assert where(same)[6:9] == [
        ("y/seed_0", "a", "x/seed_0/a", None, "x/seed_0", None),
        ("y/seed_0", "b", "x/seed_0/b", "x/seed_0/a", "x/seed_0", None),
        ("y/seed_0", "c", "x/seed_0/c", "x/seed_0/b", "x/seed_0", None),
    ]
    assert len({r.run_dir for r in same}) == 6  # 3 stages x 2 seeds


OLD_FOLDER_TABLE = [
    (f"{FAST}/seed_0", "pre", f"{FAST}/seed_0/pre", None, None, None),
    (f"{FAST}/seed_0", "ft", f"{FAST}/seed_0/ft", f"{FAST}/seed_0/pre", None, None),
    (f"{FAST}/seed_1", "pre", f"{FAST}/seed_1/pre", None, None, None),
    (f"{FAST}/seed_1", "ft", f"{FAST}/seed_1/ft", f"{FAST}/seed_1/pre", None, None),
    (f"{SLOW}/seed_0", "pre", f"{SLOW}/seed_0/pre", None, None, f"{FAST}/seed_0"),  # started before: kept
    (f"{SLOW}/seed_0", "ft", f"{SLOW}/seed_0/ft", f"{SLOW}/seed_0/pre", None, None),
    (f"{SLOW}/seed_1", "pre", f"{FAST}/seed_1/pre", None, f"{FAST}/seed_1", None),
    (f"{SLOW}/seed_1", "ft", f"{SLOW}/seed_1/ft", f"{FAST}/seed_1/pre", None, None),
]  # fmt: skip


def old_folder(tmp_path: Path) -> tuple[Path, list[Run]]:
    """A sweep folder whose trials.json has no shared_with: each trial stage in its own
    folder; FAST/seed_0/pre done, SLOW/seed_0/pre stopped part-way (queued, with a last.ckpt)."""
    spec_path = write_yaml(
        tmp_path / "shared.yaml",
        {"name": "shared", "recipe": "tiny.yaml", "axes": [{"grid": {f"ft:{LR}": [0.001, 0.0005]}}],
         "seeds": [0, 1], "stages": [{"name": "pre"}, {"name": "ft", "init_from": "pre"}],
         "metrics": [{"name": "val/itm_acc", "stage": "pre"}], "out": str(tmp_path / "sweep")},
    )  # fmt: skip
    out = tmp_path / "sweep"
    runs = expand(load_spec(spec_path))
    records = [
        {**run.record(), "run_id": "pre000000000" if run.stage == "pre" else f"ft_{run.arm}"} for run in runs
    ]
    for record in records:  # the keys of that format
        del record["shared_with"], record["same_run_as"]
    out.mkdir()
    (out / "trials.json").write_text(json.dumps(records))
    done = Status(state="done", exit_code=0, attempts=1)
    write_status(out / FAST / "seed_0/pre", done)
    (out / FAST / "seed_0/pre/metrics.json").write_text(json.dumps({"final": {"val/itm_acc": 0.75}}))
    write_status(out / SLOW / "seed_0/pre", Status(state="queued", exit_code=0, attempts=1))
    (out / SLOW / "seed_0/pre/checkpoints").mkdir(parents=True)
    (out / SLOW / "seed_0/pre/checkpoints/last.ckpt").write_bytes(b"partial")
    return spec_path, runs


def test_a_folder_from_before_sharing_keeps_its_started_runs_and_shares_the_rest(tmp_path: Path) -> None:
    spec_path, runs = old_folder(tmp_path)
    out = tmp_path / "sweep"
    ids = {f"{r['trial']}/{r['stage']}": r["run_id"] for r in json.loads((out / "trials.json").read_text())}
    placed = place_runs(runs, out, lambda run: ids[run.home])
    assert where(placed) == OLD_FOLDER_TABLE
    old = json.loads((out / "trials.json").read_text())
    assert [(r["run_dir"], r["after"], r["shared_with"], r["same_run_as"]) for r in place_records(old, out)] == [
        row[2:] for row in OLD_FOLDER_TABLE
    ]  # fmt: skip
    # the partly trained run resumes in its own folder; the other seed's trial waits on the shared run
    assert plan_trial([r for r in placed if r.trial == f"{SLOW}/seed_0"], out, False, None).why == (
        "stopped before its end: resumes"
    )
    assert plan_trial([r for r in placed if r.trial == f"{SLOW}/seed_1"], out, False, None).stage == "pre"

    lines = status_lines(spec_path).splitlines()
    assert lines[0] == f"sweep shared in {out}: 7 runs (8 trial stages): 5 -, 1 done, 1 queued"
    rows = {tuple(line.split()[:2]): line for line in lines[3:]}
    assert (
        "own: started in this trial's folder (same run as lr=0.001/seed_0)" in rows[(f"{SLOW}/seed_0", "pre")]
    )
    assert "queued" in rows[(f"{SLOW}/seed_0", "pre")]
    assert "shared with lr=0.001/seed_1" in rows[(f"{SLOW}/seed_1", "pre")]
    assert rows[(f"{FAST}/seed_0", "pre")].split()[2:] == ["done", "1", "0", "-", "val/itm_acc=0.7500"]


def test_retry_failed_restarts_the_shared_run_for_every_trial_that_needs_it(tmp_path: Path) -> None:
    ids = {"a": "a", "b": "b", "c": "c"}  # one id per stage: both arms share all three
    runs = place_runs(chain_spec(), tmp_path, lambda run: ids[run.stage])
    write_status(tmp_path / "x/seed_0/a", Status(state="done", exit_code=0, attempts=1))
    write_status(tmp_path / "x/seed_0/b", Status(state="failed", exit_code=1, attempts=1))
    for trial in ("x/seed_0", "y/seed_0"):
        of_trial = [r for r in runs if r.trial == trial]
        step = plan_trial(of_trial, tmp_path, False, None)
        assert (step.action, step.stage) == ("failed", "b")
        step = plan_trial(of_trial, tmp_path, True, None)
        assert (step.action, step.stage, step.why) == ("start", "b", "failed (exit 1): retried")


# ------------------------------------------------------------------------------------------ launching

FAKE_FIT = """
import json, pathlib, sys
folder = pathlib.Path(sys.argv[1])
with open(folder.parent.parent.parent / "starts.txt", "a") as log:
    log.write(str(folder) + "\\n")
if folder.name == "fail":
    sys.exit(3)
(folder / "metrics.json").write_text(json.dumps({"final": {}, "validations": [], "complete": True}))
"""


def stage(out: Path, name: str) -> StageJob:
    return StageJob(name, str(out / "runs" / "t" / name), (str(out / "runs" / "t" / name),))


def test_a_run_several_chains_hold_starts_once_and_each_chain_goes_on_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stand-in fits (a child that records its start and finishes, or exits 3 in a folder named
    ``fail``): chains A and B share ``pre``, C and D share ``fail``; two at a time."""
    from vlp.sweep import launch

    monkeypatch.setattr(
        launch, "fit_command", lambda argv, command="fit": [sys.executable, "-c", FAKE_FIT, *argv]
    )
    pre, a, b, fail, c, d = (stage(tmp_path, n) for n in ("pre", "a", "b", "fail", "c", "d"))
    chains = [
        ChainJob("A", (pre, a)),
        ChainJob("B", (pre, b)),
        ChainJob("C", (fail, c)),
        ChainJob("D", (fail, d)),
    ]
    lines: list[str] = []
    results = run_chains(chains, [{}, {}], report=lines.append)
    assert results == {"A": ["done", "done"], "B": ["done", "done"], "C": ["failed"], "D": ["failed"]}
    starts = sorted(Path(p).name for p in (tmp_path / "starts.txt").read_text().split())
    assert starts == ["a", "b", "fail", "pre"]  # each run once; c and d never start
    assert sum(line.startswith("start  pre") for line in lines) == 1

    # run again: pre, a and b are done; the failed run starts once more for both chains
    results = run_chains(chains, [{}], report=lines.append)
    assert results == {"A": ["done", "done"], "B": ["done", "done"], "C": ["failed"], "D": ["failed"]}
    assert sorted(Path(p).name for p in (tmp_path / "starts.txt").read_text().split()) == [
        "a", "b", "fail", "fail", "pre"
    ]  # fmt: skip


def test_submitit_tasks_are_groups_of_trials_that_share_runs() -> None:
    def chain(trial: str, *folders: str) -> ChainJob:
        return ChainJob(trial, tuple(StageJob(f, f, ()) for f in folders))

    a, b = chain("a", "p0", "a0"), chain("b", "p0", "b0")
    c, d, e = chain("c", "p1", "c1"), chain("d", "p1", "d1"), chain("e", "e0")
    assert sharing_groups([a, c, b, e, d]) == [(a, b), (c, d), (e,)]
    x, y, z = chain("x", "f1"), chain("y", "f2"), chain("z", "f1", "f2")  # z joins x's and y's groups
    assert sharing_groups([x, y, z]) == [(x, y, z)]
