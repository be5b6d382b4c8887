"""Every sweep file in configs/sweeps: ``python -m vlp sweep run FILE --dry-run`` checks all its runs with
fit's parser and prints them, and starts nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlp.cli import main
from vlp.sweep.spec import load_spec
from vlp.sweep.trials import expand

REPO = Path(__file__).resolve().parents[2]
SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


def test_the_issue_ablations_are_shipped() -> None:
    assert [path.stem for path in SWEEPS] == [
        "e2e_vlp_objectives",
        "ernie_vilg_end_to_end",
        "ernie_vilg_sparse",
        "vilt_embedders",
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
    assert len(lines) == 3 + len(runs)  # the check line, the header and its rule, a line per run
    for run, line in zip(runs, lines[3:]):
        assert line.split()[:3] == [run.arm, str(run.seed), run.stage]
        assert str(spec.out_dir / run.run_dir) in line
    assert spec.out_dir.exists() == existed
