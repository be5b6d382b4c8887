"""Every sweep file in configs/sweeps: ``python -m vlp sweep run FILE --dry-run`` checks all its runs with
fit's parser and prints them, and starts nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from vlp.cli import main
from vlp.sweep.spec import load_spec
from vlp.sweep.trials import expand

REPO = Path(__file__).resolve().parents[2]
SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


def test_the_papers_ablations_and_the_tuning_sweeps_are_shipped() -> None:
    assert [path.stem for path in SWEEPS] == [
        "e2e_vlp_objectives",
        "ernie_vilg_end_to_end",
        "ernie_vilg_sampling",
        "ernie_vilg_sampling_f8",
        "ernie_vilg_sparse",
        "vilt_embedders",
        "vilt_itm_tuning",
        "vilt_randaugment",
        "vilt_wwm",
    ]


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_dry_run_checks_and_lists_every_run(
    path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)  # the files' paths are relative to the repository root
    spec = load_spec(path)
    existed = spec.out_dir.exists()
    main(["sweep", "run", str(path.relative_to(REPO)), "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    runs = expand(spec)
    assert lines[0] == f"sweep {spec.name}: checking {len(runs)} runs"
    assert len(lines) == 4 + len(runs)  # the check line, the header and its rule, a line per run, the count
    for run, line in zip(runs, lines[3:]):
        assert line.split()[:3] == [run.arm, str(run.seed), run.stage]
    assert re.fullmatch(rf"\d+ runs for {len(runs)} trial stages: .*", lines[-1])
    assert spec.out_dir.exists() == existed


def test_the_randaugment_arms_share_their_pretraining(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """RandAugment is a ``vqa:`` key: both arms pre-train the same run per seed, which runs once (in a
    fresh sweep folder: this machine's own may hold runs started in each trial's own folder)."""
    monkeypatch.chdir(REPO)
    data = yaml.safe_load((REPO / "configs" / "sweeps" / "vilt_randaugment.yaml").read_text())
    sweep_file = tmp_path / "randaugment.yaml"
    sweep_file.write_text(yaml.safe_dump({**data, "out": str(tmp_path / "out")}))
    main(["sweep", "run", str(sweep_file), "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "9 runs for 12 trial stages: pretrain 3 for 6, vqa 6 for 6"
    shared = [line.split() for line in lines[3:-1] if "shared with" in line]
    assert [row[:3] for row in shared] == [["randaugment=false", str(seed), "pretrain"] for seed in (0, 1, 2)]
    for row, seed in zip(shared, (0, 1, 2)):
        assert row[5] == str(tmp_path / "out" / f"randaugment=true/seed_{seed}/pretrain")
    assert not (tmp_path / "out").exists()
