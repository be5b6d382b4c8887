"""``python -m vlp bench sweep-overhead``: its sweep file is a valid 2 x 2 sweep of the shipped recipe with
one fit at a time, a work folder that is not empty is refused, and a smallest run (1 repeat, fits of one
step) ends with both timed rows and the overhead per trial, the sweep's 4 runs done and the 4 fits by hand
with their metrics (not timed: slow, 8 fits)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vlp.bench import sweep_overhead
from vlp.bench.sweep_overhead import SweepOverheadConfig, shapes_settings, sweep_file, write_sweep
from vlp.cli import main
from vlp.errors import UserError
from vlp.sweep.command import run_sweep
from vlp.sweep.spec import load_spec
from vlp.sweep.trials import expand

pytestmark = pytest.mark.filterwarnings("ignore")
REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "configs/vilt/shapes_pretrain.yaml"
SMALLEST = ["--steps", "1", "--repeats", "1", "--batch_size", "4", "--train_samples", "16", "--threads", "1"]


def test_sweep_file_is_two_learning_rates_by_two_seeds_one_fit_at_a_time(tmp_path: Path) -> None:
    config = SweepOverheadConfig(steps=3, batch_size=4, train_samples=16, threads=1)
    spec = sweep_file(config, RECIPE, tmp_path / "shapes", shapes_settings(config), tmp_path / "sweep")
    path = write_sweep(tmp_path, 0, spec)
    loaded = load_spec(path)
    assert (loaded.launcher.kind, loaded.launcher.parallel, loaded.launcher.threads) == ("local", 1, 1)
    runs = expand(loaded)
    assert [run.trial for run in runs] == [
        "lr=0.001/seed_0", "lr=0.001/seed_1", "lr=0.0005/seed_0", "lr=0.0005/seed_1",
    ]  # fmt: skip
    assert (
        runs[0].overrides["trainer.max_steps"] == 3 and runs[0].overrides["data.init_args.num_workers"] == 0
    )
    lines: list[str] = []
    run_sweep(path, dry_run=True, report=lines.append)  # every fit command line parses with fit's parser
    assert "checking 4 runs" in lines[0] and not (tmp_path / "sweep").exists()


def test_a_work_folder_that_is_not_empty_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("kept")
    with pytest.raises(UserError, match="not an empty folder"):
        sweep_overhead.main([*SMALLEST, "--workdir", str(tmp_path)])
    assert (tmp_path / "mine.txt").read_text() == "kept"


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="train_samples"):
        SweepOverheadConfig(batch_size=8, train_samples=4)
    with pytest.raises(ValueError, match="repeats"):
        SweepOverheadConfig(repeats=0)


@pytest.mark.slow
def test_smallest_run_reports_both_sides_and_the_overhead_per_trial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    work, out = tmp_path / "work", tmp_path / "sweep_overhead.md"
    main(["bench", "sweep-overhead", *SMALLEST, "--workdir", str(work), "--out", str(out)])
    printed = capsys.readouterr().out
    lines = printed.strip().splitlines()
    last = re.fullmatch(r"overhead per trial: (-?\d+\.\d\d) s", lines[-1])
    assert last is not None
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ")}
    sweep, by_hand = rows["`sweep run` (4 trials)"], rows["the same 4 fits by hand"]
    walls = [float(row.split(" | ")[1]) for row in (sweep, by_hand)]
    assert all(wall > 0 for wall in walls)
    assert float(last.group(1)) == pytest.approx((walls[0] - walls[1]) / 4, abs=0.01)  # rounding of each
    assert "with 1 threads" in printed and out.read_text().strip() == printed.strip()
    for run in expand(load_spec(work / "sweep_0.yaml")):
        assert json.loads((run.folder(work / "sweep_0") / "status.json").read_text())["state"] == "done"
        metrics = json.loads((run.folder(work / "by_hand_0") / "metrics.json").read_text())
        assert metrics["complete"] and "val/itm_acc" in metrics["final"]
