"""Launching and resuming: what ``sweep run`` does with each trial from its runs' status.json, how a stage
restarts (from last.ckpt, or afresh with the old files moved aside), and 2 x 2 sweeps of a tiny recipe run
end to end locally and through submitit's local executor, killed mid-way and finished by running again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sweep_parts import COLLATOR, SHARED_ARMS, shared_first_stage, tiny_recipe, two_by_two, write_yaml

from vlp.errors import UserError
from vlp.sweep.command import plan_trial, run_sweep, status_lines
from vlp.sweep.launch import resume_args
from vlp.sweep.results import build_report
from vlp.sweep.spec import load_spec, parse_spec
from vlp.sweep.status import Status, read_status, write_status
from vlp.sweep.trials import expand

pytestmark = pytest.mark.filterwarnings("ignore")
REPO = Path(__file__).resolve().parents[2]
ARMS = ["whole_word_masking=true", "whole_word_masking=false"]
TRIALS = [f"{arm}/seed_{seed}" for arm in ARMS for seed in (0, 1)]


# ------------------------------------------------------------------------------------------- planning


def chain(tmp_path: Path) -> list:
    spec = parse_spec(
        {"name": "s", "recipe": "r.yaml", "stages": [{"name": "pre"}, {"name": "ft", "init_from": "pre"}]}
    )
    return expand(spec)


def set_status(tmp_path: Path, run_dir: str, **fields: object) -> None:
    write_status(tmp_path / run_dir, Status(**fields))


def test_plan_starts_new_skips_done_and_leaves_failed_without_retry(tmp_path: Path) -> None:
    runs = chain(tmp_path)
    assert plan_trial(runs, tmp_path, False, None).action == "start"
    set_status(tmp_path, runs[0].run_dir, state="done", exit_code=0, attempts=1)
    step = plan_trial(runs, tmp_path, False, None)
    assert (step.action, step.stage, step.why) == ("start", "ft", "new")
    set_status(tmp_path, runs[1].run_dir, state="failed", exit_code=1, attempts=1)
    assert plan_trial(runs, tmp_path, False, None).action == "failed"
    assert plan_trial(runs, tmp_path, True, None).action == "start"
    set_status(tmp_path, runs[1].run_dir, state="done", exit_code=0, attempts=2)
    assert plan_trial(runs, tmp_path, False, None).action == "done"


def test_plan_leaves_a_live_run_and_restarts_a_dead_one(tmp_path: Path) -> None:
    runs = chain(tmp_path)
    folder = (tmp_path / runs[0].run_dir).resolve()
    # a live process whose command line names the run folder, as a fit's does
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(folder)])
    try:
        host = os.uname().nodename
        set_status(tmp_path, runs[0].run_dir, state="running", host=host, pid=process.pid, attempts=1)
        assert plan_trial(runs, tmp_path, False, None).action == "active"
    finally:
        process.kill()
        process.wait()
    step = plan_trial(runs, tmp_path, False, None)
    assert (step.action, step.stage) == ("start", "pre") and step.why.startswith("dead (running")
    # stopped cleanly before its end (a stop request saved last.ckpt): resumed
    set_status(tmp_path, runs[0].run_dir, state="queued", exit_code=0, host=host, pid=process.pid, attempts=1)
    assert plan_trial(runs, tmp_path, False, None).why == "stopped before its end: resumes"


def test_restart_resumes_from_last_ckpt_or_moves_the_old_attempt_aside(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"state")
    assert resume_args(run) == ["--ckpt_path", "last"]
    (run / "hpc_ckpt_1.ckpt").write_bytes(b"slurm")
    assert resume_args(run) == []  # Lightning resumes SLURM's requeue checkpoint by itself

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    write_status(fresh, Status(state="failed", exit_code=1, attempts=1))
    (fresh / "metrics.csv").write_text("step\n")
    (fresh / "fit.log").write_text("first\n")
    assert resume_args(fresh) == []
    assert sorted(p.name for p in fresh.iterdir()) == ["attempt_1", "status.json"]
    assert (fresh / "attempt_1" / "fit.log").read_text() == "first\n"
    (fresh / "fit.log").write_text("second\n")
    resume_args(fresh)
    assert (fresh / "attempt_2" / "fit.log").read_text() == "second\n"


def test_a_predict_stage_runs_vlp_predict_afresh_and_is_done_with_its_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A predict stage never resumes: an earlier attempt's files (a checkpoint among them) are moved aside,
    ``vlp predict`` runs with the stage's options only, and ``metrics.json`` complete makes it done."""
    from vlp.sweep import launch

    run = tmp_path / "gen"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"earlier")
    write_status(run, Status(state="failed", exit_code=1, attempts=1, run_seconds=100.0))
    commands: list[list[str]] = []
    child = (
        "import json, pathlib; "
        f"pathlib.Path({str(run / 'metrics.json')!r}).write_text(json.dumps({{'final': {{}}, 'complete': True}}))"
    )

    real = launch.fit_command

    def command(argv: list[str], command: str = "fit") -> list[str]:
        commands.append(real(argv, command)[3:])
        return [sys.executable, "-c", child]

    monkeypatch.setattr(launch, "fit_command", command)
    status = launch.run_stage(
        launch.StageJob("arm/seed_0/gen", str(run), ("--config", "r.yaml"), "predict"), {}
    )
    assert commands == [["predict", "--config", "r.yaml"]]
    assert (status.state, status.exit_code, status.attempts) == ("done", 0, 2)
    assert status.run_seconds is not None and 100.0 < status.run_seconds < 100.0 + 60  # both attempts
    assert (run / "attempt_1" / "checkpoints" / "last.ckpt").read_bytes() == b"earlier"


def test_earlier_attempts_time_is_recorded_or_the_one_attempts_span() -> None:
    from vlp.sweep.launch import earlier_seconds

    span = {"started": "2026-01-01T10:00:00+00:00", "finished": "2026-01-01T10:12:00+00:00"}
    assert earlier_seconds(Status()) == 0.0
    assert earlier_seconds(Status(attempts=2, run_seconds=90.5, **span)) == 90.5
    assert earlier_seconds(Status(attempts=1, **span)) == 720.0  # written before run_seconds was
    assert earlier_seconds(Status(attempts=2, **span)) is None  # the first attempt's time is lost


# ------------------------------------------------------------------------------------------ end to end


def check_done(out: Path, attempts: dict[str, int]) -> None:
    """Every trial done with metrics.json from the callback, the arm's setting and the seed in its config."""
    records = json.loads((out / "trials.json").read_text())
    assert [r["trial"] for r in records] == TRIALS
    for record in records:
        folder = out / record["run_dir"]
        status = read_status(folder)
        assert status is not None and (status.state, status.exit_code) == ("done", 0), record["trial"]
        assert status.attempts == attempts.get(record["trial"], 1), record["trial"]
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["complete"] and 0.0 <= metrics["final"]["val/itm_acc"] <= 1.0
        assert [v["step"] for v in metrics["validations"]] == [3]
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert config["seed_everything"] == record["seed"]
        wwm = config["data"]["init_args"]["collator"]["init_args"]["whole_word_masking"]
        assert wwm == (record["arm"] == ARMS[0])
        assert (folder / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_local_two_by_two_runs_then_skips_done_and_refuses_another_sweep_in_its_folder(
    tmp_path: Path, tiny_shapes: Path
) -> None:
    spec = two_by_two(tmp_path, tiny_shapes, {"kind": "local", "parallel": 2})
    lines: list[str] = []
    results = run_sweep(spec, report=lines.append)
    assert results == {trial: ["done"] for trial in TRIALS}
    assert "local: 4 trials, 2 at a time (OMP_NUM_THREADS=1, MKL_NUM_THREADS=1)" in lines  # 2 cores, 2 runs
    out = tmp_path / "sweep"
    check_done(out, {})
    assert (out / "sweep.yaml").read_text() == spec.read_text()
    assert run_sweep(spec, report=lines.append) == {}
    assert "4 done" in status_lines(spec).splitlines()[0]

    changed = yaml.safe_load(spec.read_text())
    changed["seeds"] = [0, 2]
    changed["launcher"]["parallel"] = 1  # how runs start may change, and seeds be added; not what ran
    with pytest.raises(UserError, match="these keys differ: seeds"):
        run_sweep(write_yaml(tmp_path / "changed.yaml", changed))


@pytest.mark.slow
def test_submitit_local_executor_two_by_two(tmp_path: Path, tiny_shapes: Path) -> None:
    launcher = {"kind": "slurm", "cluster": "local", "time_min": 10, "threads": 1}
    spec = two_by_two(tmp_path, tiny_shapes, launcher)
    results = run_sweep(spec, report=print)
    assert results == {trial: ["done"] for trial in TRIALS}
    out = tmp_path / "sweep"
    check_done(out, {})
    job_ids = {read_status(out / t / "main").job_id for t in TRIALS}
    assert len(job_ids) == 4 and None not in job_ids
    assert len(list((out / "jobs").glob("*_submitted.pkl"))) == 4


def kill_sweep_when(spec: Path, done: Path, running: Path) -> None:
    """Run ``sweep run spec`` in a process group and SIGKILL it (the sweep and its running fit at once)
    as soon as the run in ``done`` is done and the one in ``running`` runs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sweep = subprocess.Popen(
        [sys.executable, "-m", "vlp", "sweep", "run", str(spec)], cwd=REPO, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and sweep.poll() is None:
            finished = (read_status(done) or Status()).state == "done"
            if finished and (read_status(running) or Status()).state == "running":
                break
            time.sleep(0.2)
        assert sweep.poll() is None, "the sweep ended before it could be killed"
    finally:
        os.killpg(sweep.pid, signal.SIGKILL)
        sweep.wait()


@pytest.mark.slow
def test_a_killed_sweep_finishes_only_what_is_missing_when_run_again(
    tmp_path: Path, tiny_shapes: Path
) -> None:
    spec = two_by_two(tmp_path, tiny_shapes, {"kind": "local", "parallel": 1})
    out = tmp_path / "sweep"
    first, second = (out / t / "main" for t in TRIALS[:2])
    kill_sweep_when(spec, done=first, running=second)
    assert (read_status(second) or Status()).state == "running"  # as the killed sweep left it
    assert not (out / TRIALS[2]).exists()

    lines: list[str] = []
    results = run_sweep(spec, report=lines.append)
    assert results == {trial: ["done"] for trial in TRIALS[1:]}  # the first trial is not run again
    assert f"done   {TRIALS[0]}" in lines
    assert any(line.startswith(f"to run {TRIALS[1]} from main: dead (running") for line in lines)
    check_done(out, {TRIALS[1]: 2})


@pytest.mark.slow
def test_a_two_stage_trial_starts_its_second_stage_from_the_first_ones_checkpoint(
    tmp_path: Path, tiny_shapes: Path
) -> None:
    recipe = write_yaml(tmp_path / "tiny.yaml", tiny_recipe(tiny_shapes, steps=2))
    spec = write_yaml(
        tmp_path / "chain.yaml",
        {
            "name": "chain",
            "recipe": str(recipe),
            "stages": [{"name": "pre"}, {"name": "ft", "init_from": "pre", "overrides": {COLLATOR: False}}],
            "metrics": [{"name": "val/itm_acc", "mode": "max", "stage": "pre"}],
            "out": str(tmp_path / "sweep"),
        },
    )
    assert run_sweep(spec, report=print) == {"base/seed_0": ["done", "done"]}
    pre, ft = tmp_path / "sweep" / "base" / "seed_0" / "pre", tmp_path / "sweep" / "base" / "seed_0" / "ft"
    config = yaml.safe_load((ft / "config.yaml").read_text())
    assert config["model"]["init_args"]["init_from"] == str((pre / "checkpoints" / "last.ckpt").resolve())
    assert json.loads((pre / "metrics.json").read_text())["best"]["val/itm_acc"]["step"] == 2
    assert json.loads((ft / "metrics.json").read_text())["best"] == {}  # no metric of the sweep at ft


def fit_starts(out: Path) -> dict[str, int]:
    """``{run folder: fits started in it}``, from the command line each start writes into its fit.log
    (an earlier attempt's, moved into ``attempt_<n>/``, counted in its run folder)."""
    starts: dict[str, int] = {}
    for log in sorted(out.rglob("fit.log")):
        folder = log.parent.parent if log.parent.name.startswith("attempt_") else log.parent
        key = folder.relative_to(out).as_posix()
        starts[key] = starts.get(key, 0) + log.read_text().count("\n$ ")
    return starts


@pytest.mark.slow
def test_a_shared_first_stage_runs_once_per_seed_through_a_kill_an_only_run_and_a_resume(
    tmp_path: Path, tiny_shapes: Path
) -> None:
    """2 arms (ft learning rate) x 2 seeds; both arms' pre is one run per seed: 6 fits, not 8. The sweep
    is killed while the first trial's ft runs; ``--only`` the other arm then runs seed 1's shared pre (the
    first arm's) and its own fine-tunes; the full run restarts the killed fit and runs the last one."""
    fast, slow = SHARED_ARMS
    spec = shared_first_stage(tmp_path, tiny_shapes, {"kind": "local", "parallel": 1})
    out = tmp_path / "sweep"
    pre, ft = out / fast / "seed_0" / "pre", out / fast / "seed_0" / "ft"
    kill_sweep_when(spec, done=pre, running=ft)
    assert fit_starts(out) == {f"{fast}/seed_0/ft": 1, f"{fast}/seed_0/pre": 1}

    lines: list[str] = []
    results = run_sweep(spec, only=[slow], report=lines.append)
    assert results == {f"{slow}/seed_0": ["done", "done"], f"{slow}/seed_1": ["done", "done"]}
    assert f"to run {slow}/seed_1 from pre: new" in lines
    assert f"start  {fast}/seed_1/pre" in lines  # the first arm's folder
    results = run_sweep(spec, report=lines.append)
    assert results == {f"{fast}/seed_0": ["done", "done"], f"{fast}/seed_1": ["done", "done"]}
    assert any(line.startswith(f"to run {fast}/seed_0 from ft: dead (running") for line in lines)

    assert fit_starts(out) == {
        f"{fast}/seed_0/ft": 2, f"{fast}/seed_0/pre": 1, f"{fast}/seed_1/ft": 1, f"{fast}/seed_1/pre": 1,
        f"{slow}/seed_0/ft": 1, f"{slow}/seed_1/ft": 1,
    }  # fmt: skip
    for seed in (0, 1):
        config = yaml.safe_load((out / slow / f"seed_{seed}" / "ft" / "config.yaml").read_text())
        ckpt = out / fast / f"seed_{seed}" / "pre" / "checkpoints" / "last.ckpt"
        assert config["model"]["init_args"]["init_from"] == str(ckpt.resolve())
        assert (config["model"]["init_args"]["lr"], config["seed_everything"]) == (0.0005, seed)
    assert status_lines(spec).splitlines()[0] == f"sweep shared in {out}: 6 runs (8 trial stages): 6 done"

    loaded = load_spec(spec)
    report = build_report(out, loaded.metrics, loaded.baseline, [])
    rows = {(row.arm, row.metric.name): row for row in report.rows}
    shared = [json.loads((out / fast / f"seed_{s}" / "pre" / "metrics.json").read_text()) for s in (0, 1)]
    expected = {seed: record["final"]["val/itm_acc"] for seed, record in enumerate(shared)}
    assert rows[fast, "val/itm_acc"].values == rows[slow, "val/itm_acc"].values == expected
    assert rows[slow, "val/itm_acc"].summary.n == rows[slow, "val/itm_loss"].summary.n == 2
    assert report.issues == []


def test_sigterm_stops_the_sweep_cleanly_its_fits_recorded_queued_and_nothing_new_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in fit (a child that, like a fit, saves and exits 0 on SIGTERM) runs in the first of three
    trials, one at a time; SIGTERM to the sweep reaches it, it is recorded ``queued`` (to be resumed), the
    other trials never start, and the sweep returns with its handlers restored."""
    from vlp.sweep import launch
    from vlp.sweep.spec import Launcher

    ready = tmp_path / "child_ready"  # written once the child's handler is installed: SIGTERM before that
    # would kill the child outright (exit -15, "failed"), which is not what a fit does
    child = (
        "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); "
        f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"
    )
    monkeypatch.setattr(launch, "fit_command", lambda argv, command="fit": [sys.executable, "-c", child])
    chains = [
        launch.ChainJob(
            f"arm/seed_{i}", (launch.StageJob(f"arm/seed_{i}/main", str(tmp_path / f"r{i}"), ()),), {}
        )
        for i in range(3)
    ]
    before = signal.getsignal(signal.SIGTERM)

    def stop_soon() -> None:
        for _ in range(600):  # once the first run's child is up and handles SIGTERM
            status = read_status(tmp_path / "r0")
            if status is not None and status.pid is not None and ready.exists():
                break
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    import threading

    threading.Thread(target=stop_soon, daemon=True).start()
    lines: list[str] = []
    states = launch.launch_local(chains, Launcher(parallel=1), report=lines.append)
    assert states == {"arm/seed_0": ["queued"], "arm/seed_1": [], "arm/seed_2": []}
    status = read_status(tmp_path / "r0")
    assert status is not None and (status.state, status.exit_code) == ("queued", 0)
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
    assert any(line.startswith("stop") for line in lines)
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_a_predict_stage_draws_with_its_fit_stages_weights_and_is_reported(
    tmp_path: Path, shapes64: Path, vqgan_checkpoint: Path
) -> None:
    """The ERNIE-ViLG recipe, 2 steps, then a predict stage from its last.ckpt through the real
    ``vlp predict``: metrics.json holds the task's predict metrics, and the report reads them."""
    recipe = REPO / "configs" / "ernie_vilg" / "shapes_pretrain.yaml"
    overrides = {
        "model.init_args.vqgan_checkpoint": str(vqgan_checkpoint),
        "model.init_args.meteor": False,
        "model.init_args.max_caption_len": 8,
        "model.init_args.num_candidates": 2,
        "data.init_args.root": str(shapes64),
        "data.init_args.synth": None,
        "data.init_args.batch_size": 4,
        "data.init_args.eval_batch_size": 4,
        "data.init_args.num_workers": 0,
        "trainer.max_steps": 2,
        "trainer.val_check_interval": 2,
        "trainer.limit_val_batches": 1,
    }
    spec = write_yaml(
        tmp_path / "draw.yaml",
        {
            "name": "draw",
            "recipe": str(recipe),
            "overrides": overrides,
            "stages": [{"name": "main"}, {"name": "draw", "command": "predict", "init_from": "main"}],
            "metrics": [{"name": "predict/cider", "mode": "max", "stage": "draw"}],
            "launcher": {"kind": "local", "parallel": 1},
            "out": str(tmp_path / "sweep"),
        },
    )
    assert run_sweep(spec, report=print) == {"base/seed_0": ["done", "done"]}
    draw = tmp_path / "sweep" / "base" / "seed_0" / "draw"
    metrics = json.loads((draw / "metrics.json").read_text())
    assert metrics["complete"] and metrics["validations"] == []
    assert 0.0 <= metrics["final"]["predict/cider"] <= 10.0
    assert "$ " in (draw / "fit.log").read_text() and " predict " in (draw / "fit.log").read_text()
    assert list(draw.rglob("images_rank0_batch00000.png"))
    assert not (draw / "checkpoints").exists()  # a prediction trains nothing
    report = build_report(tmp_path / "sweep", load_spec(spec).metrics, None, [])
    assert report.rows[0].values == {0: metrics["final"]["predict/cider"]}
