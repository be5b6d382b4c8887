"""``python -m vlp bench zoo-load`` at a tiny size: both loaders give the same model, the table and the JSON
report the same timed repeats, and the last line is the ratio of the medians."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vlp.bench.zoo_load import ZooLoadConfig
from vlp.cli import main

TINY = [
    "--hidden_size=32",
    "--num_layers=2",
    "--num_heads=4",
    "--intermediate_size=64",
    "--vocab_size=60",
    "--max_text_len=12",
    "--image_size=64",
    "--patch_size=16",
    "--repeats=2",
    "--warmup=1",
    "--threads=1",
]


def test_tiny_run_prints_the_table_and_writes_the_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, record = tmp_path / "zoo_load.md", tmp_path / "zoo_load.json"
    main(["bench", "zoo-load", *TINY, "--out", str(out), "--json", str(record)])
    printed = capsys.readouterr().out.strip()
    lines = printed.splitlines()
    result = json.loads(record.read_text())
    assert result["config"]["hidden_size"] == 32 and result["threads"] == 1
    assert {side: len(values) for side, values in result["seconds"].items()} == {"vlp": 2, "transformers": 2}
    assert all(value > 0 for values in result["seconds"].values() for value in values)
    assert result["max_abs_difference"] <= 1e-4 and result["file_bytes"]["vlp"] > 0
    last = re.fullmatch(r"load time ratio vlp / transformers: (\d+\.\d\d)", lines[-1])
    assert last is not None and float(last[1]) == pytest.approx(
        result["ratio_vlp_over_transformers"], abs=0.005
    )
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| `")}
    assert set(rows) == {"`vlp.zoo.load(folder)`", "`ViltModel.from_pretrained(folder)`"}
    median = float(rows["`vlp.zoo.load(folder)`"].split(" | ")[1])
    assert median == pytest.approx(result["median_seconds"]["vlp"], abs=0.0005)
    assert out.read_text().strip() == printed


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="does not split into 5 heads"):
        ZooLoadConfig(num_heads=5)
    with pytest.raises(ValueError, match="repeats"):
        ZooLoadConfig(repeats=0)
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        ZooLoadConfig(image_size=100)
