"""Fixtures of the bench tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="session")
def shapes_p16_task() -> Any:
    """The 16-px shapes recipe's task (configs/vilt/shapes_pretrain.yaml with shapes_pretrain_p16.yaml
    layered), built through the CLI: the model whose sizes the CPU benches build in code."""
    from vlp.cli import VLPCLI

    recipe = [CONFIGS / "vilt/shapes_pretrain.yaml", CONFIGS / "vilt/shapes_pretrain_p16.yaml"]
    return VLPCLI(args=["--config", str(recipe[0]), "--config", str(recipe[1])], run=False).model
