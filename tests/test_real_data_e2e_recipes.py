"""The paper-scale E2E-VLP and ERNIE-ViLG recipes on real-schema data: tiny raw COCO (Karpathy split,
captions, instances), Visual Genome (with bottom-up style vocabulary files) and VQAv2 downloads are
converted by ``python -m vlp data convert`` in-process, then each recipe runs through the CLI shrunk to the
shapes recipes' tiny models (64 px, batch 2, two steps, one validation batch, configs/trainer/smoke.yaml,
no init_from, a tiny random VQGAN) and validates with its metric: detection mAP, CIDEr-D, VQA accuracy,
text->image NLL. The fine-tunes start from the pre-training run's checkpoint, as the recipes do."""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent / "datamodules" / "convert"))
sys.path.insert(0, str(Path(__file__).parent / "datamodules"))
from convert_helpers import coco_root
from test_visual_genome import write_vg, write_vocab
from vqav2_shards import write_raw_vqav2

from vlp.cli import VLPCLI, main
from vlp.datamodules.normalise import normalise_pixels
from vlp.datamodules.transforms import ViltTransform
from vlp.models.vqgan.model import CONFIG_KEY, VQGAN
from vlp.tasks.vqgan_codes import load_vqgan
from vlp.zoo import save_pretrained

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRETRAIN = "e2e_vlp/coco_vg_pretrain.yaml"
CAPTIONING = "e2e_vlp/coco_captioning.yaml"
VQAV2 = "e2e_vlp/coco_vqav2.yaml"
TEXT_TO_IMAGE = "ernie_vilg/coco_text_to_image.yaml"

pytestmark = pytest.mark.filterwarnings("ignore")


def convert(dataset: str, root: Path, out: Path, *options: str) -> Path:
    main(["data", "convert", dataset, "--root", str(root), "--out", str(out), "--workers", "1",
          "--progress", "false", *options])  # fmt: skip
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The converted folders the recipes' headers name, from tiny raw downloads."""
    tmp = tmp_path_factory.mktemp("real")
    coco = coco_root(tmp / "raw" / "coco")
    vg = write_vg(tmp / "raw" / "vg")
    objects = write_vocab(tmp / "raw" / "objects_vocab.txt", ["car,cars", "trees,tree", "man", "bird"])
    attributes = write_vocab(tmp / "raw" / "attributes_vocab.txt", ["green", "red", "shiny"])
    karpathy = json.loads((coco / "karpathy" / "dataset_coco.json").read_text())  # the recipe's one-liner
    held_out = [str(i["cocoid"]) for i in karpathy["images"] if i["split"] in ("val", "test")]
    exclude = tmp / "raw" / "karpathy_val_test_ids.txt"
    exclude.write_text("\n".join(held_out) + "\n")
    return {
        "coco": convert("coco", coco, tmp / "coco_karpathy"),
        "vg": convert("visual-genome", vg, tmp / "vg_e2e_vlp", "--qa", "false", "--object-vocab",
                      str(objects), "--attribute-vocab", str(attributes), "--exclude-coco-ids", str(exclude)),
        "coco_instances": convert("coco", coco, tmp / "coco_instances", "--split-source", "official",
                                  "--instances", "true"),
        "vqav2": convert("vqav2", write_raw_vqav2(tmp / "raw" / "vqav2"), tmp / "vqav2",
                         "--splits", "[train, val, test-dev]", "--min-answer-count", "1"),
    }  # fmt: skip


def model_part(name: str) -> dict[str, Any]:
    return yaml.safe_load((CONFIGS / "model" / name).read_text())


def shrunk(recipe: str, run: Path) -> dict[str, Any]:
    """The recipe on one CPU process in fp32, its run in ``run``, data read in the main process with
    batches of 2; the model and the data's sizes are set by each test."""
    config = yaml.safe_load((CONFIGS / recipe).read_text())
    trainer = config["trainer"]
    trainer.update(accelerator="cpu", devices=1, strategy="auto", precision="32-true", log_every_n_steps=1)
    trainer["default_root_dir"] = str(run)
    config["model"]["init_args"]["init_from"] = None
    data = config["data"]["init_args"]
    data.update(batch_size=2, eval_batch_size=2, num_workers=0)
    return config


def fit(config: dict[str, Any], folder: Path) -> dict[str, float]:
    """``vlp fit`` of ``config`` with the smoke trainer; the last value of each metric it logged."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    main(["fit", "--config", str(path), "--config", str(CONFIGS / "trainer/smoke.yaml")])
    logged: dict[str, float] = {}
    with (Path(config["trainer"]["default_root_dir"]) / "metrics.csv").open(newline="") as file:
        for row in csv.DictReader(file):
            logged.update({key: float(value) for key, value in row.items() if value not in ("", None)})
    return logged


def assert_finite(logged: dict[str, float], keys: list[str]) -> None:
    missing = [key for key in keys if key not in logged]
    assert not missing, f"not logged: {missing}; logged: {sorted(logged)}"
    assert all(math.isfinite(logged[key]) for key in keys), {key: logged[key] for key in keys}


def detection_sizes(config: dict[str, Any], vocab: Path) -> None:
    """The detection head over the converted vocab.json's lists (the recipe: 1600 and 400)."""
    lists = json.loads(vocab.read_text())
    head = config["model"]["init_args"]["objectives"]["detection"]["init_args"]["head"]["init_args"]
    head.update(num_classes=len(lists["categories"]), num_attributes=len(lists.get("attributes", [])))


def tiny_e2e(config: dict[str, Any], model: str = "e2e_vlp_shapes.yaml") -> None:
    config["model"]["init_args"]["model"] = model_part(model)
    config["data"]["init_args"]["transform"]["init_args"] = {"image_size": 64, "patch_size": 32}


@pytest.fixture(scope="module")
def pretrained(
    data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, float], Path]:
    """The pre-training recipe shrunk, on its two converted folders: its logged metrics and last.ckpt."""
    tmp = tmp_path_factory.mktemp("pretrain")
    config = shrunk(PRETRAIN, tmp / "run")
    tiny_e2e(config)
    config["data"]["init_args"]["root"] = [str(data["coco"]), str(data["vg"])]
    detection_sizes(config, data["vg"] / "vocab.json")
    logged = fit(config, tmp)
    return logged, tmp / "run" / "checkpoints" / "last.ckpt"


def test_pretraining_trains_on_coco_and_visual_genome_and_validates(
    pretrained: tuple[dict[str, float], Path],
) -> None:
    logged, checkpoint = pretrained
    assert_finite(logged, ["train/loss", "val/mlm_loss", "val/itm_acc", "val/detection_loss",
                           "val/caption_loss", "val/map", "val/map_50", "val/map_75"])  # fmt: skip
    # the validation images (COCO's Karpathy val, converted with captions only) have no objects list: none
    # is annotated, so the mAP has no ground truth (COCO's -1) rather than scoring them as empty images
    assert logged["val/map"] == -1.0
    assert checkpoint.is_file()


def with_val_split(folder: Path, out: Path, samples: int) -> Path:
    """A copy of a converted folder whose ``val`` split is the first ``samples`` of its ``train`` split."""
    copy = Path(shutil.copytree(folder, out))
    (copy / "val").mkdir()
    with tarfile.open(sorted((copy / "train").glob("*.tar"))[0]) as source:
        members = source.getmembers()
        keys = list(dict.fromkeys(member.name.split(".")[0] for member in members))[:samples]
        with tarfile.open(copy / "val" / "shard-000000.tar", "w") as shard:
            for member in members:
                if member.name.split(".")[0] in keys:
                    shard.addfile(member, source.extractfile(member))
    return copy


def test_pretraining_maps_the_annotated_images_of_a_mixed_validation_batch(
    data: dict[str, Path], tmp_path: Path
) -> None:
    """Validation over a Visual Genome image (annotated) and COCO's (not): the mAP scores the first."""
    vg = with_val_split(data["vg"], tmp_path / "vg_e2e_vlp", samples=1)
    config = shrunk(PRETRAIN, tmp_path / "run")
    tiny_e2e(config)
    config["data"]["init_args"]["root"] = [str(vg), str(data["coco"])]  # the one val batch: VG's, then COCO's
    detection_sizes(config, vg / "vocab.json")
    logged = fit(config, tmp_path)
    assert_finite(logged, ["val/detection_loss", "val/map", "val/map_50", "val/map_75", "val/mar_100"])
    assert 0.0 <= logged["val/map"] <= logged["val/map_50"] <= 1.0  # ground truth present: not -1


def test_pretraining_logs_coco_map_on_converted_coco_instances(data: dict[str, Path], tmp_path: Path) -> None:
    config = shrunk(PRETRAIN, tmp_path / "run")
    tiny_e2e(config)
    config["data"]["init_args"]["root"] = str(data["coco_instances"])  # the official val split has a box
    detection_sizes(config, data["coco_instances"] / "vocab.json")
    logged = fit(config, tmp_path)
    assert_finite(logged, ["val/map", "val/map_50", "val/map_75", "val/mar_100"])
    assert 0.0 <= logged["val/map"] <= logged["val/map_50"] <= 1.0  # ground truth present: not -1


def test_captioning_fine_tunes_from_the_pretraining_and_scores_cider(
    data: dict[str, Path], pretrained: tuple[dict[str, float], Path], tmp_path: Path
) -> None:
    config = shrunk(CAPTIONING, tmp_path / "run")
    tiny_e2e(config)
    task = config["model"]["init_args"]
    task.update(init_from=str(pretrained[1]), meteor=False, max_caption_len=8)
    config["data"]["init_args"]["root"] = str(data["coco"])
    logged = fit(config, tmp_path)
    assert_finite(logged, ["train/loss", "val/caption_loss", "val/cider", "val/bleu_4", "val/rouge_l"])


def test_vqav2_fine_tunes_the_encoder_from_the_pretraining(
    data: dict[str, Path], pretrained: tuple[dict[str, float], Path], tmp_path: Path
) -> None:
    config = shrunk(VQAV2, tmp_path / "run")
    tiny_e2e(config, "e2e_vlp_shapes_encoder.yaml")
    task = config["model"]["init_args"]
    task["init_from"] = str(pretrained[1])
    answers = json.loads((data["vqav2"] / "vocab.json").read_text())["answers"]
    task["objectives"]["vqa"]["init_args"]["head"]["init_args"]["num_classes"] = len(answers)
    config["data"]["init_args"]["root"] = str(data["vqav2"])
    logged = fit(config, tmp_path)
    assert_finite(logged, ["train/loss", "val/vqa_score", "val/vqa_accuracy"])


def tiny_vqgan() -> VQGAN:
    """The shapes VQGAN's architecture (64 px -> 16 x 16 codes of 512), random weights."""
    torch.manual_seed(0)
    return VQGAN(**model_part("vqgan_shapes.yaml")["init_args"])


def test_text_to_image_trains_from_a_pretrained_vqgan_folder_and_logs_its_nll(
    data: dict[str, Path], tmp_path: Path
) -> None:
    vqgan = tiny_vqgan()
    folder = save_pretrained((vqgan, {"class_path": "vlp.models.vqgan.model.VQGAN", "init_args": vqgan.config}),
                             tmp_path / "vqgan")  # fmt: skip
    config = shrunk(TEXT_TO_IMAGE, tmp_path / "run")
    task = config["model"]["init_args"]
    task["model"] = model_part("ernie_vilg_shapes.yaml")
    task.update(vqgan_checkpoint=str(folder), meteor=False, max_caption_len=8)
    data_args = config["data"]["init_args"]
    data_args["root"] = str(data["coco"])
    data_args["transform"]["init_args"].update(image_size=64, patch_size=8)  # center_crop kept
    data_args["collator"]["init_args"]["max_text_len"] = task["model"]["init_args"]["max_text_len"]
    logged = fit(config, tmp_path)
    assert_finite(logged, ["train/loss", "val/t2i_nll", "val/i2t_nll", "val/cider"])


def test_vqgan_checkpoint_takes_a_vqgan_task_file_a_pretrained_folder_or_a_zoo_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vqgan = tiny_vqgan()
    path = tmp_path / "last.ckpt"
    state = {f"model.{k}": v for k, v in vqgan.state_dict().items()}
    torch.save({CONFIG_KEY: vqgan.config, "state_dict": state, "global_step": 0}, path)
    folder = save_pretrained((vqgan, {"class_path": "vlp.models.vqgan.model.VQGAN", "init_args": vqgan.config}),
                             tmp_path / "vqgan")  # fmt: skip
    for source in (path, folder):
        loaded = load_vqgan(None, str(source))
        assert isinstance(loaded, VQGAN)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in vqgan.state_dict().items())
    # a zoo name goes through the zoo: offline with an empty cache, the error names the file to provide
    monkeypatch.setenv("VLP_OFFLINE", "1")
    monkeypatch.setenv("VLP_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VLP_ZOO_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match=r"vqgan_imagenet_f16_16384\.ckpt"):
        load_vqgan(None, "zoo:vqgan:imagenet-f16-16384")


def test_center_crop_gives_the_vqgan_its_square_from_the_middle_of_the_photo() -> None:
    image = Image.new("RGB", (96, 64), (255, 0, 0))  # landscape: red, a blue band on the left third
    image.paste((0, 0, 255), (0, 0, 32, 64))
    cropped = ViltTransform(32, 8, center_crop=True)(image)
    assert cropped.shape == (3, 32, 32)
    whole = torch.ones(1, 32, 32, dtype=torch.bool)
    pixels = normalise_pixels(cropped[None], whole)[0]  # as the model gets it
    # 96 x 64 -> 48 x 32, the middle 32 columns kept: columns 8..39 of 48, so half the band (0..15) is cut
    red = pixels[0].mean(0)  # per column, in [-1, 1]
    assert red[0] < 0 and red[12] == 1.0 and red[-1] == 1.0  # the band's right half, then red
    assert ViltTransform(32, 8)(image).shape == (3, 32, 48)  # without: ViLT's resize keeps the whole photo


def test_fine_tuning_recipes_build_the_pretrainings_model() -> None:
    """So init_from loads every model key of the pre-training (VQA: its encoder side)."""
    pretrain = yaml.safe_load((CONFIGS / PRETRAIN).read_text())["model"]["init_args"]["model"]
    assert yaml.safe_load((CONFIGS / CAPTIONING).read_text())["model"]["init_args"]["model"] == pretrain
    encoder_side = json.loads(json.dumps(pretrain))
    encoder_side["init_args"]["decoder"] = None
    del encoder_side["init_args"]["num_queries"]
    assert yaml.safe_load((CONFIGS / VQAV2).read_text())["model"]["init_args"]["model"] == encoder_side


def test_recipes_are_the_papers_model_parts() -> None:
    """E2E-VLP: configs/model/e2e_vlp_paper.yaml with timm's download off (init_from starts the ResNet);
    ERNIE-ViLG: configs/model/ernie_vilg_paper.yaml with the codes of the VQGAN it reads (16 x 16 of 16384)."""
    e2e = model_part("e2e_vlp_paper.yaml")
    e2e["init_args"]["visual_embedder"]["init_args"]["pretrained"] = False
    assert yaml.safe_load((CONFIGS / PRETRAIN).read_text())["model"]["init_args"]["model"] == e2e
    ernie = model_part("ernie_vilg_paper.yaml")
    ernie["init_args"].update(num_codes=16384, grid=[16, 16])
    recipe = yaml.safe_load((CONFIGS / TEXT_TO_IMAGE).read_text())["model"]["init_args"]
    assert recipe["model"] == ernie and recipe["vqgan_checkpoint"] == "zoo:vqgan:imagenet-f16-16384"


def test_pretraining_recipe_builds_at_the_papers_size() -> None:
    cli = VLPCLI(
        args=["--config", str(CONFIGS / PRETRAIN), "--model.init_args.init_from=null",
              "--trainer.accelerator=cpu", "--trainer.strategy=auto", "--trainer.devices=1"],
        run=False,
    )  # fmt: skip
    model = cli.model.model
    assert (len(model.encoder.blocks), len(model.decoder.layers), model.num_queries) == (6, 6, 100)
    assert model.dim == 256 and model.visual_embedder.backbone.feature_info.channels()[-1] == 2048
    head = cli.model.objectives["detection"].head
    assert (head.num_classes, head.num_attributes) == (1600, 400)
    assert cli.model.loss_weights == {"mlm": 1.0, "itm": 1.0, "detection": 1.0, "caption": 1.0}
    transform = cli.datamodule.transform
    assert (transform.image_size, transform.patch_size, transform.center_crop) == (800, 32, False)
    assert [str(root) for root in cli.datamodule.roots] == ["data/coco_karpathy", "data/vg_e2e_vlp"]
