"""The commands of README.md and docs/*.md work as printed.

Every ```bash block of those pages is read (``\\`` continuations joined, comments dropped). The fast tests
check that each command is one vlp knows: a ``make`` target of the Makefile, or a ``python -m vlp`` command
whose options parse. The slow test runs them all in page order in an empty folder, each training,
evaluation or prediction shortened by the documented ``--config configs/trainer/smoke.yaml``, then runs
the README's Python example against the checkpoint they wrote.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from vlp.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LIGHTNING = ("fit", "validate", "test", "predict")
SMOKE = ["--config", "configs/trainer/smoke.yaml"]
SHELL_TOOLS = {
    "tar"
}  # ordinary tools a page may use on what vlp wrote (e.g. to take an image out of a shard)


def code_blocks(page: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", page.read_text(encoding="utf-8"), flags=re.M | re.S)


def commands(page: Path) -> list[str]:
    """The shell commands of a page's bash blocks, one string each."""
    found = []
    for block in code_blocks(page, "bash"):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
            if line:
                found.append(line)
    return found


def split(command: str) -> tuple[dict[str, str], list[str]]:
    """Leading ``NAME=value`` words (the environment) and the rest of the command."""
    words = shlex.split(command)
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    return env, words


ALL = [(page, command) for page in PAGES for command in commands(page)]


def test_the_pages_have_commands() -> None:
    assert any(c.startswith("make fit") for _, c in ALL) and any(c.startswith("make test") for _, c in ALL)
    assert len(ALL) > 10


@pytest.mark.parametrize(("page", "command"), ALL, ids=[f"{p.name}:{c[:60]}" for p, c in ALL])
def test_each_command_is_a_vlp_command_that_parses(
    page: Path, command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, words = split(command)
    if words[0] == "make":
        targets = re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), flags=re.M)
        assert words[1] in targets, f"{page.name}: make {words[1]} is not a Makefile target"
        return
    if words[0] in SHELL_TOOLS:
        return
    assert words[:3] == ["python", "-m", "vlp"], f"{page.name}: {command!r} is not a vlp command"
    monkeypatch.chdir(ROOT)
    # a training command's options are parsed and validated (--print_config); a tool command's exist
    check = [*words[3:], "--print_config" if words[3] in LIGHTNING else "--help"]
    with pytest.raises(SystemExit) as exit_info:
        main(check)
    assert exit_info.value.code in (0, None), capsys.readouterr().err


def shortened(words: list[str]) -> list[str]:
    if words[0] == "make" and words[1] == "fit":
        return [sys.executable, "-m", "vlp", "fit", "--config", "configs/vilt/shapes_pretrain.yaml", *SMOKE]
    words = [sys.executable, *words[1:]]
    if words[3] in LIGHTNING:
        words += SMOKE
    return words


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_command_of_a_page_runs_in_order_on_a_fresh_folder(page: Path, tmp_path: Path) -> None:
    """Each page is written for a fresh clone: its commands run in order in an empty folder beside the
    recipes (the README's Python example last, on the checkpoint the page's commands wrote)."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    (tmp_path / "benchmarks").symlink_to(ROOT / "benchmarks")
    base = {**os.environ, "PYTHONHASHSEED": "0"}
    for command in commands(page):
        env, words = split(command)
        if (words[0] == "make" and words[1] != "fit") or words[3:4] == ["bench"]:
            continue  # install / test / lint: the suite itself and its set-up; benchmarks: minutes each
        argv = ["bash", "-c", command] if words[0] in SHELL_TOOLS else shortened(words)
        result = subprocess.run(
            argv, cwd=tmp_path, env={**base, **env}, capture_output=True, text=True, timeout=900
        )
        assert result.returncode == 0, f"{page.name}: {command}\n{result.stderr[-3000:]}"
    for example in code_blocks(page, "python"):
        if not (tmp_path / "scene.png").exists():
            from PIL import Image

            Image.new("RGB", (64, 64), (200, 20, 20)).save(tmp_path / "scene.png")
        result = subprocess.run(
            [sys.executable, "-c", example],
            cwd=tmp_path,
            env=base,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
