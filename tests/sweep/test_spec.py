"""The sweep file: its typed parsing (a misspelt key or a bad value named), and its expansion into runs
(grid, zip, random, stages, prefixes) against tables written out by hand."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from vlp.errors import UserError
from vlp.sweep.spec import load_spec, parse_spec
from vlp.sweep.trials import expand, option

WWM = "data.init_args.collator.init_args.whole_word_masking"
LR = "model.init_args.lr"


def spec(**more: Any) -> dict[str, Any]:
    return {"name": "s", "recipe": "r.yaml", **more}


def table(data: dict[str, Any]) -> list[tuple[Any, ...]]:
    """``(arm, seed, stage, overrides, run_dir, after)`` of every run."""
    return [(r.arm, r.seed, r.stage, r.overrides, r.run_dir, r.after) for r in expand(parse_spec(data))]


def test_no_axes_is_one_arm_base_per_seed_in_stage_main() -> None:
    assert table(spec(seeds=[3, 1], overrides={"trainer.max_steps": 5})) == [
        ("base", 3, "main", {"trainer.max_steps": 5}, "base/seed_3/main", None),
        ("base", 1, "main", {"trainer.max_steps": 5}, "base/seed_1/main", None),
    ]


def test_grid_is_every_combination_named_by_last_key_parts() -> None:
    data = spec(axes=[{"grid": {WWM: [True, False], LR: [0.001, 0.0003]}}])
    assert table(data) == [
        ("whole_word_masking=true,lr=0.001", 0, "main", {WWM: True, LR: 0.001}, "whole_word_masking=true,lr=0.001/seed_0/main", None),
        ("whole_word_masking=true,lr=0.0003", 0, "main", {WWM: True, LR: 0.0003}, "whole_word_masking=true,lr=0.0003/seed_0/main", None),
        ("whole_word_masking=false,lr=0.001", 0, "main", {WWM: False, LR: 0.001}, "whole_word_masking=false,lr=0.001/seed_0/main", None),
        ("whole_word_masking=false,lr=0.0003", 0, "main", {WWM: False, LR: 0.0003}, "whole_word_masking=false,lr=0.0003/seed_0/main", None),
    ]  # fmt: skip


def test_zip_pairs_values_with_names_and_axes_multiply_first_axis_slowest() -> None:
    model = "model.init_args.model"
    data = spec(
        axes=[
            {"zip": {"names": ["patch", "cnn"], model: ["m/vilt.yaml", "m/cnn.yaml"], LR: [0.001, 0.0005]}},
            {"grid": {WWM: [True, False]}},
        ],
        seeds=[0, 1],
    )
    arms_seeds = [(arm, seed, overrides) for arm, seed, _, overrides, _, _ in table(data)]
    assert arms_seeds == [
        ("patch,whole_word_masking=true", 0, {model: "m/vilt.yaml", LR: 0.001, WWM: True}),
        ("patch,whole_word_masking=true", 1, {model: "m/vilt.yaml", LR: 0.001, WWM: True}),
        ("patch,whole_word_masking=false", 0, {model: "m/vilt.yaml", LR: 0.001, WWM: False}),
        ("patch,whole_word_masking=false", 1, {model: "m/vilt.yaml", LR: 0.001, WWM: False}),
        ("cnn,whole_word_masking=true", 0, {model: "m/cnn.yaml", LR: 0.0005, WWM: True}),
        ("cnn,whole_word_masking=true", 1, {model: "m/cnn.yaml", LR: 0.0005, WWM: True}),
        ("cnn,whole_word_masking=false", 0, {model: "m/cnn.yaml", LR: 0.0005, WWM: False}),
        ("cnn,whole_word_masking=false", 1, {model: "m/cnn.yaml", LR: 0.0005, WWM: False}),
    ]


def test_zip_without_names_names_by_values_with_slashes_as_dashes() -> None:
    data = spec(axes=[{"zip": {"model.init_args.model": ["configs/model/a.yaml", "configs/model/b.yaml"]}}])
    assert [row[0] for row in table(data)] == ["model=configs-model-a.yaml", "model=configs-model-b.yaml"]


def test_random_draws_from_its_seed_rounded_to_four_digits() -> None:
    # random.Random(7).random() gives 0.32383, 0.15085, 0.65093, 0.07244, 0.53588, 0.36569: per point the
    # log-uniform lr from the first (1e-4 * 100 ** u), then the choice from the second (index int(u * 3)).
    space = {LR: {"log_uniform": [1.0e-4, 1.0e-2]}, "model.init_args.warmup": {"choice": [0.0, 0.1, 0.2]}}
    data = spec(axes=[{"random": {"n": 3, "seed": 7, "space": space}}])
    assert [(row[0], row[3]) for row in table(data)] == [
        ("lr=0.0004443,warmup=0.0", {LR: 0.0004443, "model.init_args.warmup": 0.0}),
        ("lr=0.002004,warmup=0.0", {LR: 0.002004, "model.init_args.warmup": 0.0}),
        ("lr=0.00118,warmup=0.1", {LR: 0.00118, "model.init_args.warmup": 0.1}),
    ]


def test_stages_chain_with_prefixed_keys_and_init_from() -> None:
    data = spec(
        recipe=["pre.yaml", "cpu.yaml"],
        overrides={"trainer.max_steps": 9, "vqa:trainer.max_steps": 4},
        axes=[{"grid": {f"pretrain:{WWM}": [True, False]}}],
        stages=[
            {"name": "pretrain"},
            {"name": "vqa", "recipe": "vqa.yaml", "init_from": "pretrain", "overrides": {LR: 0.01}},
        ],
        seeds=[5],
    )
    runs = expand(parse_spec(data))
    assert [(r.arm, r.stage, r.recipe, r.overrides, r.run_dir, r.after) for r in runs] == [
        ("whole_word_masking=true", "pretrain", ("pre.yaml", "cpu.yaml"), {"trainer.max_steps": 9, WWM: True}, "whole_word_masking=true/seed_5/pretrain", None),
        ("whole_word_masking=true", "vqa", ("vqa.yaml",), {"trainer.max_steps": 4, LR: 0.01}, "whole_word_masking=true/seed_5/vqa", "whole_word_masking=true/seed_5/pretrain"),
        ("whole_word_masking=false", "pretrain", ("pre.yaml", "cpu.yaml"), {"trainer.max_steps": 9, WWM: False}, "whole_word_masking=false/seed_5/pretrain", None),
        ("whole_word_masking=false", "vqa", ("vqa.yaml",), {"trainer.max_steps": 4, LR: 0.01}, "whole_word_masking=false/seed_5/vqa", "whole_word_masking=false/seed_5/pretrain"),
    ]  # fmt: skip


def test_a_predict_stage_runs_predict_with_its_stages_weights_and_records_its_metrics(tmp_path: Path) -> None:
    data = spec(
        stages=[{"name": "a"}, {"name": "gen", "command": "predict", "init_from": "a"}],
        metrics=[{"name": "predict/semantic_score", "mode": "max", "stage": "gen"}],
    )
    fit, predict = expand(parse_spec(data))
    assert (fit.command, predict.command) == ("fit", "predict")
    assert predict.record()["command"] == "predict"
    out = tmp_path / "out"
    assert f"--model.init_args.init_from={out.resolve()}/base/seed_0/a/checkpoints/last.ckpt" in predict.argv(
        out
    )
    callback = {
        "class_path": "vlp.sweep.callback.MetricsRecord",
        "init_args": {"modes": {"predict/semantic_score": "max"}},
    }
    assert predict.argv(out)[-1] == "--trainer.callbacks+=" + json.dumps(callback, sort_keys=True)


def test_a_predict_stage_may_read_a_checkpoint_its_overrides_or_axes_name() -> None:
    ckpt = "model.init_args.init_from"
    for data in (
        spec(overrides={ckpt: "runs/a/last.ckpt"}, stages=[{"name": "gen", "command": "predict"}]),
        spec(stages=[{"name": "gen", "command": "predict", "overrides": {ckpt: "runs/a/last.ckpt"}}]),
        spec(
            axes=[{"grid": {f"gen:{ckpt}": ["a.ckpt", "b.ckpt"]}}],
            stages=[{"name": "gen", "command": "predict"}],
        ),
    ):
        run = expand(parse_spec(data))[0]
        assert run.command == "predict" and run.after is None
        assert any(arg.startswith(f"--{ckpt}=") for arg in run.argv(Path("out")))


def test_argv_is_recipes_overrides_then_folder_seed_init_from_and_the_metrics_callback(
    tmp_path: Path,
) -> None:
    data = spec(
        axes=[{"grid": {LR: [0.001]}}],
        stages=[{"name": "a"}, {"name": "b", "recipe": "b.yaml", "init_from": "a", "overrides": {"x.y": 2}}],
        metrics=[{"name": "val/acc", "mode": "max"}],
    )
    run = expand(parse_spec(data))[1]
    out = tmp_path / "out"
    callback = {"class_path": "vlp.sweep.callback.MetricsRecord", "init_args": {"modes": {"val/acc": "max"}}}
    assert run.argv(out) == [
        "--config", "b.yaml",
        "--x.y=2",
        "--model.init_args.lr=0.001",
        f"--trainer.default_root_dir={out.resolve()}/lr=0.001/seed_0/b",
        "--seed_everything=0",
        f"--model.init_args.init_from={out.resolve()}/lr=0.001/seed_0/a/checkpoints/last.ckpt",
        "--trainer.callbacks+=" + json.dumps(callback, sort_keys=True),
    ]  # fmt: skip


def test_option_writes_values_the_command_line_reads_back() -> None:
    assert option("k", "configs/a.yaml") == "--k=configs/a.yaml"
    assert option("k", {"mlm": 1.0}) == '--k={"mlm": 1.0}'
    assert option("k", "0.5") == '--k="0.5"'
    assert option("k", "true") == '--k="true"'
    assert option("k", None) == "--k=null"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (spec(seedz=[0]), "unknown key 'seedz' (did you mean 'seeds'?)"),
        (spec(launcher={"kind": "lokal"}), "launcher.kind"),
        (spec(metrics=[{"name": "val/a", "mood": "max"}]), "mood"),
        (spec(seeds=[0, 0]), "seeds [0, 0]"),
        (spec(axes=[{"gird": {LR: [1]}}]), "axes[0]: one of {grid: ...}"),
        (spec(axes=[{"zip": {LR: [1, 2], WWM: [True]}}]), "axes[0].zip: lists of one length"),
        (spec(axes=[{"grid": {"vqa:" + LR: [1]}}]), "'vqa' is not a stage prefix"),
        (spec(axes=[{"grid": {"--model.init_args.lr": [1]}}]), "without '--'"),
        (spec(axes=[{"random": {"n": 2, "space": {LR: {"log_uniform": [0, 1]}}}}]), "lo > 0"),
        (spec(axes=[{"zip": {"names": ["a", "a"], LR: [1, 2]}}]), "arm 'a' appears twice"),
        (spec(axes=[{"zip": {"names": ["A b"], LR: [1]}}]), "arm name 'A b'"),
        (spec(stages=[{"name": "ft", "init_from": "pre"}]), "stages[0].init_from 'pre'"),
        (spec(axes=[{"grid": {LR: [1, 2]}}], baseline="lr=3"), "baseline 'lr=3' is not an arm"),
        (spec(axes=[{"grid": {LR: [1, 2]}}], claims=["lr=1 > lr=3 on val/a"]), "unknown arm 'lr=3'"),
        (spec(launcher={"kind": "local", "partition": "gpu"}), "launcher.partition is for kind: slurm"),
        (spec(metrics=[{"name": "val/a", "stage": "ft"}]), "metrics[0].stage 'ft'"),
        (
            spec(stages=[{"name": "gen", "command": "predict"}]),
            "stages[0] (gen) predicts, from no weights in arm base",
        ),
        (
            spec(
                axes=[
                    {
                        "zip": {
                            "names": ["a", "b"],
                            "gen:model.init_args.init_from": ["a.ckpt", None],
                            LR: [1, 2],
                        }
                    }
                ],
                stages=[{"name": "gen", "command": "predict"}],
            ),
            "from no weights in arm b",
        ),
        (spec(stages=[{"name": "a", "command": "evaluate"}]), "command"),
        (
            spec(
                stages=[
                    {"name": "a"},
                    {"name": "p", "command": "predict", "init_from": "a"},
                    {"name": "b", "init_from": "p"},
                ]
            ),
            "stages[2].init_from 'p' is a predict stage, which writes no checkpoint",
        ),
    ],
)
def test_a_bad_sweep_file_is_refused_naming_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=r"^sweep file: ") as error:
        parse_spec(data)
    assert message in str(error.value)


def test_load_spec_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nrecipe: r.yaml\nseeds: [0\n")
    with pytest.raises(UserError, match=re.escape(f"sweep file {path}: not valid YAML")):
        load_spec(path)
    with pytest.raises(UserError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")
