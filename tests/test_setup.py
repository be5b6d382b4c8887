"""The set-up a fresh clone gets: the lock file pins what pyproject.toml asks for, `make install` installs
from it, `make fit` passes ARGS on, and CI installs from the lock into a new environment."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_lock_pins_every_dependency_of_pyproject_exactly() -> None:
    tomllib = pytest.importorskip("tomllib")  # the standard library's from Python 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if line and not line.startswith((" ", "#", "-"))
    )
    pinned = {name(k) for k in pins}
    assert wanted <= pinned, sorted(wanted - pinned)
    assert pins["torch"] == "2.14.1"  # requirements/lock-constraints.txt


def dry_run(*args: str) -> str:
    return subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_make_install_installs_the_lock_and_fit_passes_args_on() -> None:
    install = dry_run("-B", "install")
    assert "pip install -r requirements.lock" in install and "pip install --no-deps -e ." in install
    fit = dry_run("fit", "ARGS=--trainer.max_steps=3 --ckpt_path last")
    assert (
        "-m vlp fit --config configs/vilt/shapes_pretrain.yaml --trainer.max_steps=3 --ckpt_path last" in fit
    )


def test_ci_tests_in_a_new_environment_from_the_lock() -> None:
    run = (ROOT / ".ci/run").read_text()
    assert "mktemp -d" in run and "make test VENV=" in run


def test_git_ignores_no_file_the_recipes_read() -> None:
    """The run outputs (``/data``, ``/runs``) are ignored at the top only: a recipe's parts under ``configs/``
    (``configs/data/`` included) must reach every clone."""
    files = [str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml")]
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *files], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert ignored.stdout.split() == []
