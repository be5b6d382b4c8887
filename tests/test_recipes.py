"""Recipes build what they say: every recipe's data section, and the paper-size ViLT-B/32 layered over the
default recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser
from lightning import LightningDataModule

from vlp.cli import VLPCLI
from vlp.datamodules.shards import ShardDataModule
from vlp.datamodules.transforms import ViltTransform

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(
    path
    for path in CONFIGS.rglob("*.yaml")
    if "class_path" in (yaml.safe_load(path.read_text()).get("data") or {})
)
# the parts each recipe's data section names: (decoder, collator)
PARTS = {
    "e2e_vlp/coco_captioning.yaml": ("SampleDecoder", "E2ECollator"),
    "e2e_vlp/coco_vg_pretrain.yaml": ("ObjectDecoder", "E2ECollator"),
    "e2e_vlp/coco_vqav2.yaml": ("VQADecoder", "VQACollator"),
    "e2e_vlp/shapes_captioning.yaml": ("SampleDecoder", "E2ECollator"),
    "e2e_vlp/shapes_detection.yaml": ("ObjectDecoder", "E2ECollator"),
    "e2e_vlp/shapes_nlvr2.yaml": ("PairDecoder", "PairCollator"),
    "e2e_vlp/shapes_pretrain.yaml": ("ObjectDecoder", "E2ECollator"),
    "e2e_vlp/shapes_pretrain_encoder.yaml": ("ObjectDecoder", "E2ECollator"),
    "e2e_vlp/shapes_retrieval.yaml": ("SampleDecoder", "RetrievalCollator"),
    "e2e_vlp/shapes_vqa.yaml": ("VQADecoder", "VQACollator"),
    "ernie_vilg/coco_text_to_image.yaml": ("SampleDecoder", "E2ECollator"),
    "ernie_vilg/shapes_generative_vqa.yaml": ("VQADecoder", "GenerativeVQACollator"),
    "ernie_vilg/shapes_itm_reranker.yaml": ("SampleDecoder", "PretrainCollator"),
    "ernie_vilg/shapes_pretrain.yaml": ("SampleDecoder", "E2ECollator"),
    "ernie_vilg/shapes_pretrain_f8.yaml": ("SampleDecoder", "E2ECollator"),
    "probe/shapes_judge.yaml": ("ObjectDecoder", "E2ECollator"),
    "vilt/shapes_nlvr2.yaml": ("PairDecoder", "PairCollator"),
    "vilt/shapes_pretrain.yaml": ("SampleDecoder", "PretrainCollator"),
    "vilt/shapes_retrieval.yaml": ("SampleDecoder", "RetrievalCollator"),
    "vilt/shapes_vqa.yaml": ("VQADecoder", "VQACollator"),
    "vilt/coco_vg_sbu_gcc_pretrain.yaml": ("SampleDecoder", "PretrainCollator"),
    "vilt/vqav2.yaml": ("VQADecoder", "VQACollator"),
    "vilt/nlvr2.yaml": ("PairDecoder", "PairCollator"),
    "vilt/coco_retrieval.yaml": ("SampleDecoder", "RetrievalCollator"),
    "vilt/f30k_retrieval.yaml": ("SampleDecoder", "RetrievalCollator"),
    "vqgan/shapes_vqgan.yaml": ("SampleDecoder", "PretrainCollator"),
    "vqgan/shapes_vqgan_f8.yaml": ("SampleDecoder", "PretrainCollator"),
}


def test_every_recipe_with_data_is_listed() -> None:
    assert sorted(str(p.relative_to(CONFIGS)) for p in RECIPES) == sorted(PARTS)


class ParseOnlyCLI(VLPCLI):
    """The CLI's parsing of a recipe (its file references followed, its interpolations resolved), without
    building anything."""

    def instantiate_classes(self) -> None:
        pass


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_each_recipes_data_section_builds_its_parts(recipe: Path) -> None:
    """The data section as the CLI parses it, built alone (no data is read, no model is built)."""
    section = ParseOnlyCLI(args=["--config", str(recipe)], run=False).config.data.as_dict()
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data")
    data = parser.instantiate_classes(parser.parse_object({"data": section})).data
    assert isinstance(data, ShardDataModule) and isinstance(data.transform, ViltTransform)
    decoder, collator = PARTS[str(recipe.relative_to(CONFIGS))]
    assert (type(data.decoder).__name__, type(data.collator).__name__) == (decoder, collator)
    if recipe.name.startswith("shapes_"):
        assert data.synth is not None  # every shapes recipe generates its data on first use
    else:
        assert data.synth is None  # a recipe on converted datasets never writes into their folders


@pytest.mark.filterwarnings("ignore")
def test_vilt_b32_has_the_paper_sizes() -> None:
    cli = VLPCLI(
        args=[
            "--config",
            str(CONFIGS / "vilt/shapes_pretrain.yaml"),
            "--config",
            str(CONFIGS / "vilt/vilt_b32.yaml"),
        ],
        run=False,
    )
    model = cli.model.model
    encoder_params = sum(p.numel() for p in model.encoder.parameters())
    # 12 blocks x (4 x 768^2 attention + 2 x 768 x 3072 MLP + biases and norms) + final norm.
    assert encoder_params == 12 * (4 * 768 * 768 + 2 * 768 * 3072 + 4 * 768 + 3072 + 4 * 768 + 768) + 2 * 768
    assert len(model.encoder.blocks) == 12 and model.encoder.blocks[0].attn.num_heads == 12
    assert model.visual_embedder.patch_size == 32 and model.visual_embedder.max_image_len == 200
    assert cli.datamodule.transform.patch_size == 32 and cli.datamodule.transform.image_size == 384
    assert cli.datamodule.collator.max_text_len == 40 and cli.datamodule.collator.grounded_words  # kept
    assert cli.model.hparams.lr == 1e-4


@pytest.mark.filterwarnings("ignore")
def test_the_16px_layer_gives_the_ablation_sweeps_pretraining() -> None:
    """The recipe alone trains 8-px patches on checked negatives; configs/vilt/shapes_pretrain_p16.yaml over
    it gives 16-px patches on a 4x4 grid, unchecked negatives and 1500 steps, the setup of the ViLT
    ablation sweeps' figures (docs/ablations.md), whatever the recipe's own values."""
    recipe = str(CONFIGS / "vilt/shapes_pretrain.yaml")
    plain = VLPCLI(args=["--config", recipe], run=False)
    embedder = plain.model.model.visual_embedder
    assert (embedder.patch_size, embedder.pos_grid, plain.datamodule.transform.patch_size) == (8, 8, 8)
    assert type(plain.datamodule.collator.itm_negative_check).__name__ == "ShapesCaptionCheck"
    assert plain.trainer.max_steps == 1000

    layered = VLPCLI(
        args=["--config", recipe, "--config", str(CONFIGS / "vilt/shapes_pretrain_p16.yaml")], run=False
    )
    embedder = layered.model.model.visual_embedder
    assert (embedder.patch_size, embedder.pos_grid, layered.datamodule.transform.patch_size) == (16, 4, 16)
    assert layered.datamodule.collator.itm_negative_check is None
    assert (layered.trainer.max_steps, layered.trainer.val_check_interval) == (1500, 500)
    assert (
        layered.datamodule.collator.grounded_words == plain.datamodule.collator.grounded_words
    )  # the rest kept


# Where each full recipe (a file with a trainer section) is run for a few steps through the CLI.
RUN_BY = {
    "vilt/shapes_pretrain.yaml": "test_cli.py::test_fit_fast_dev_run_through_the_real_cli",
    "vilt/shapes_vqa.yaml": "test_finetune_recipes.py::test_recipe_runs_fast_dev_run_from_a_pretraining_checkpoint_and_prints_its_metric",
    "vilt/shapes_nlvr2.yaml": "test_finetune_recipes.py::test_recipe_runs_fast_dev_run_from_a_pretraining_checkpoint_and_prints_its_metric",
    "vilt/shapes_retrieval.yaml": "test_finetune_recipes.py::test_recipe_runs_fast_dev_run_from_a_pretraining_checkpoint_and_prints_its_metric",
    "e2e_vlp/shapes_pretrain.yaml": "test_e2e_recipes.py::test_recipe_runs_fast_dev_run_and_prints_its_metrics",
    "e2e_vlp/shapes_pretrain_encoder.yaml": "test_e2e_recipes.py::test_recipe_runs_fast_dev_run_and_prints_its_metrics",
    "e2e_vlp/shapes_detection.yaml": "test_e2e_recipes.py::test_recipe_runs_fast_dev_run_and_prints_its_metrics",
    "e2e_vlp/shapes_captioning.yaml": "test_e2e_recipes.py::test_recipe_runs_fast_dev_run_and_prints_its_metrics",
    "e2e_vlp/shapes_vqa.yaml": "test_e2e_recipes.py::test_recipe_runs_fast_dev_run_and_prints_its_metrics",
    "e2e_vlp/shapes_nlvr2.yaml": "tasks/test_e2e_finetune.py::test_recipe_runs_two_smoke_steps_and_prints_its_metrics",
    "e2e_vlp/shapes_retrieval.yaml": "tasks/test_e2e_finetune.py::test_recipe_runs_two_smoke_steps_and_prints_its_metrics",
    "ernie_vilg/shapes_pretrain.yaml": "test_ernie_vilg_recipes.py::test_recipe_runs_fast_dev_run_and_predicts",
    "ernie_vilg/shapes_pretrain_f8.yaml": "test_ernie_vilg_recipes.py::test_recipe_runs_fast_dev_run_and_predicts",
    "ernie_vilg/shapes_itm_reranker.yaml": "test_ernie_vilg_recipes.py::test_itm_recipe_trains_and_its_checkpoint_reranks_through_the_cli",
    "ernie_vilg/shapes_generative_vqa.yaml": "tasks/test_generative_vqa.py::test_recipe_runs_two_steps_through_the_smoke_trainer",
    "vqgan/shapes_vqgan.yaml": "test_vqgan_recipe.py::test_recipe_runs_fast_dev_run_and_prints_its_metrics",
    "vqgan/shapes_vqgan_f8.yaml": "test_vqgan_recipe.py::test_recipe_runs_fast_dev_run_and_prints_its_metrics",
    "probe/shapes_judge.yaml": "tasks/test_shapes_judge.py::test_recipe_fits_through_the_cli_and_its_checkpoint_loads_as_a_judge",
    "vilt/coco_vg_sbu_gcc_pretrain.yaml": "test_real_data_recipes.py::test_recipe_converts_its_data_trains_and_reports_its_metric",
    "vilt/vqav2.yaml": "test_real_data_recipes.py::test_recipe_converts_its_data_trains_and_reports_its_metric",
    "vilt/nlvr2.yaml": "test_real_data_recipes.py::test_recipe_converts_its_data_trains_and_reports_its_metric",
    "vilt/coco_retrieval.yaml": "test_real_data_recipes.py::test_recipe_converts_its_data_trains_and_reports_its_metric",
    "vilt/f30k_retrieval.yaml": "test_real_data_recipes.py::test_recipe_converts_its_data_trains_and_reports_its_metric",
    "e2e_vlp/coco_vg_pretrain.yaml": "test_real_data_e2e_recipes.py::test_pretraining_trains_on_coco_and_visual_genome_and_validates",
    "e2e_vlp/coco_captioning.yaml": "test_real_data_e2e_recipes.py::test_captioning_fine_tunes_from_the_pretraining_and_scores_cider",
    "e2e_vlp/coco_vqav2.yaml": "test_real_data_e2e_recipes.py::test_vqav2_fine_tunes_the_encoder_from_the_pretraining",
    "ernie_vilg/coco_text_to_image.yaml": "test_real_data_e2e_recipes.py::test_text_to_image_trains_from_a_pretrained_vqgan_folder_and_logs_its_nll",
}  # fmt: skip


def is_full_recipe(path: Path) -> bool:
    config = yaml.safe_load(path.read_text()) or {}
    return "trainer" in config and "class_path" in (config.get("model") or {})


def test_every_full_recipe_is_run_by_a_test() -> None:
    """A new recipe needs a test that runs it: the list above names one per recipe, and that test exists and
    names the recipe's file."""
    full = sorted(str(path.relative_to(CONFIGS)) for path in CONFIGS.rglob("*.yaml") if is_full_recipe(path))
    assert full == sorted(RUN_BY)
    tests = Path(__file__).parent
    for recipe, test in RUN_BY.items():
        file, name = test.split("::")
        source = (tests / file).read_text()
        assert f"def {name}(" in source, test
        assert Path(recipe).name in source or Path(recipe).parent.name + "/" in source, (recipe, file)
