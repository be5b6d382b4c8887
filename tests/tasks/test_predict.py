"""``predict`` for every task: tiny random models over tiny generated shapes shards (the test split), the
files each task writes, their formats and values, no overwriting, the default folder, and the CLI path."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from lightning import LightningDataModule, LightningModule, Trainer
from PIL import Image
from torchvision.utils import make_grid

from vlp.cli import main
from vlp.datamodules import normalise_batch
from vlp.datamodules.collate import PretrainCollator
from vlp.datamodules.decode import SampleDecoder
from vlp.datamodules.e2e import E2ECollator, ObjectDecoder
from vlp.datamodules.pairs import PairCollator, PairDecoder
from vlp.datamodules.parts import Collator, Decoder
from vlp.datamodules.retrieval import RetrievalCollator
from vlp.datamodules.shards import ShardDataModule
from vlp.datamodules.synth.scenes import ShapesConfig
from vlp.datamodules.synth.shapes import write_shapes
from vlp.datamodules.transforms import ViltTransform
from vlp.datamodules.vqa import VQACollator, VQADecoder
from vlp.models.e2e_vlp.model import E2EVLP
from vlp.models.embedders import ViTPatchEmbedder
from vlp.models.embedders.text import TextEmbedder
from vlp.models.layers.decoder import TransformerDecoder
from vlp.models.layers.heads import ClassifierHead, DetectionHead, ITMHead, RankHead
from vlp.models.layers.transformer import TransformerEncoder
from vlp.models.vilt import ViLT
from vlp.models.vqgan.model import VQGAN
from vlp.objectives import (
    CaptioningObjective,
    DetectionObjective,
    ITMObjective,
    NLVR2Objective,
    RetrievalObjective,
    VQAObjective,
)
from vlp.objectives.vq import VQGANLoss
from vlp.tasks import (
    CaptioningTask,
    DetectionTask,
    E2EPretrainTask,
    NLVR2Task,
    PretrainTask,
    RetrievalTask,
    VQATask,
)
from vlp.tasks.vqgan import VQGANTask

pytestmark = pytest.mark.filterwarnings("ignore")

LAUNCH_ENV_KEYS = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PL_GLOBAL_SEED")

DIM = 32
VOCAB = 30522  # the bundled tokenizer's: the shards' captions are tokenized with it
TEXT_LEN = 40
IMAGE = 32
TEST_SAMPLES = 6  # two test shards of 3, read in batches of 4 (a batch spans both shards)
READER = {"num_workers": 0, "eval_batch_size": 4}
PAIR_SPLITS = {"train_split": "pairs_train", "val_split": "pairs_val", "test_split": "pairs_test"}


def datamodule(
    root: Path, decoder: Decoder | None = None, collator: Collator | None = None, **reader: Any
) -> ShardDataModule:
    """The shapes data with ``decoder`` and ``collator`` (pre-training's by default), 32 px in patches of 8."""
    return ShardDataModule(
        str(root),
        transform=ViltTransform(IMAGE, 8),
        decoder=SampleDecoder() if decoder is None else decoder,
        collator=PretrainCollator(max_text_len=TEXT_LEN) if collator is None else collator,
        **READER,
        **reader,
    )


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("predict_data") / "shapes32"
    config = ShapesConfig(
        resolution=IMAGE,
        train_samples=3,
        val_samples=3,
        test_samples=TEST_SAMPLES,
        pair_train_samples=3,
        pair_val_samples=3,
        pair_test_samples=TEST_SAMPLES,
        samples_per_shard=3,
        seed=3,
    )
    write_shapes(root, config)
    return root


def split_samples(root: Path, split: str) -> dict[str, dict[str, Any]]:
    """``{key: json}`` of a split, read from its tar files directly."""
    samples = {}
    for shard in sorted((root / split).glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    samples[member.name.removesuffix(".json")] = json.loads(tar.extractfile(member).read())
    return samples


def vocab(root: Path) -> dict[str, list[str]]:
    return json.loads((root / "vocab.json").read_text())


def predict(task: LightningModule, data: LightningDataModule, root_dir: Path) -> None:
    trainer = Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root_dir,
    )
    trainer.predict(task, datamodule=data)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def vilt(seed: int = 0) -> ViLT:
    torch.manual_seed(seed)
    return ViLT(
        TextEmbedder(vocab_size=VOCAB, dim=DIM, max_len=TEXT_LEN),
        ViTPatchEmbedder(dim=DIM, patch_size=8, pos_grid=4),
        TransformerEncoder(dim=DIM, depth=2, num_heads=4),
    )


def e2e(seed: int = 0) -> E2EVLP:
    torch.manual_seed(seed)
    return E2EVLP(
        TextEmbedder(vocab_size=VOCAB, dim=DIM, max_len=TEXT_LEN),
        ViTPatchEmbedder(dim=DIM, patch_size=8, pos_grid=4),
        TransformerEncoder(dim=DIM, depth=2, num_heads=4),
        TransformerDecoder(dim=DIM, depth=2, num_heads=4),
        num_queries=5,
    )


def e2e_data(root: Path) -> ShardDataModule:
    return datamodule(
        root, ObjectDecoder(), E2ECollator(mlm_probability=0.0, itm=False, max_text_len=TEXT_LEN)
    )


# ------------------------------------------------------------------------------------ pre-training


def test_pretrain_writes_the_itm_probability_of_each_sample_with_its_own_image(
    shapes: Path, tmp_path: Path
) -> None:
    task = PretrainTask(vilt(), {"itm": ITMObjective(ITMHead(DIM))})
    data = datamodule(shapes)
    predict(task, data, tmp_path)  # predict_dir None: <default_root_dir>/predictions
    rows = read_jsonl(tmp_path / "predictions" / "itm_scores.jsonl")
    samples = split_samples(shapes, "test")
    assert [r["key"] for r in rows] == sorted(samples)
    assert all(r["caption"] in samples[r["key"]]["captions"] for r in rows)
    # the same probabilities computed here, each caption with its own image (not the ITM pairing's)
    expected = {}
    task.eval()
    with torch.no_grad():
        for batch in map(normalise_batch, data.predict_dataloader()):  # as the model gets them
            assert batch.itm_image_index is not None  # the loader pairs negatives; predict must not read them
            pooled = task.model(batch.text_ids, batch.text_mask, batch.pixels, batch.pixel_mask).pooled
            probabilities = task.objectives["itm"].head(pooled).softmax(-1)[:, 1]
            expected |= dict(zip(batch.keys, probabilities.tolist()))
    assert {r["key"]: r["match_probability"] for r in rows} == expected
    assert all(0.0 <= r["match_probability"] <= 1.0 for r in rows)


def test_predict_refuses_to_write_over_earlier_predictions(shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    task = PretrainTask(vilt(), {"itm": ITMObjective(ITMHead(DIM))}, predict_dir=str(out))
    predict(task, datamodule(shapes), tmp_path)
    before = (out / "itm_scores.jsonl").read_text()
    with pytest.raises(FileExistsError, match=r"already holds predictions \(itm_scores\.jsonl\)"):
        predict(task, datamodule(shapes), tmp_path)
    assert (out / "itm_scores.jsonl").read_text() == before


def test_pretrain_predict_without_an_itm_objective_names_it(shapes: Path, tmp_path: Path) -> None:
    from vlp.models.layers.heads import MLMHead
    from vlp.objectives import MLMObjective

    task = PretrainTask(vilt(), {"mlm": MLMObjective(MLMHead(DIM, vocab_size=VOCAB))})
    with pytest.raises(ValueError, match="needs a ITMObjective with a non-zero loss weight"):
        predict(task, datamodule(shapes), tmp_path)


def test_e2e_pretrain_writes_itm_probabilities(shapes: Path, tmp_path: Path) -> None:
    task = E2EPretrainTask(e2e(), {"itm": ITMObjective(ITMHead(DIM))}, predict_dir=str(tmp_path / "p"))
    predict(task, e2e_data(shapes), tmp_path)
    rows = read_jsonl(tmp_path / "p" / "itm_scores.jsonl")
    samples = split_samples(shapes, "test")
    assert [r["key"] for r in rows] == sorted(samples)
    assert all(r["caption"] in samples[r["key"]]["captions"] for r in rows)
    assert all(0.0 <= r["match_probability"] <= 1.0 for r in rows)


# ------------------------------------------------------------------------------------- fine-tuning


def test_vqa_writes_vqav2_results_one_per_question(shapes: Path, tmp_path: Path) -> None:
    answers = vocab(shapes)["answers"]
    task = VQATask(
        vilt(), {"vqa": VQAObjective(ClassifierHead(DIM, len(answers)))}, predict_dir=str(tmp_path)
    )
    predict(
        task,
        datamodule(shapes, VQADecoder(), VQACollator(full_credit_answers=1, max_text_len=TEXT_LEN)),
        tmp_path,
    )
    results = json.loads((tmp_path / "vqa_results.json").read_text())
    questions = {
        f"{key}/q{j}" for key, s in split_samples(shapes, "test").items() for j in range(len(s["qa"]))
    }
    assert len(results) == len(questions) > TEST_SAMPLES
    assert {r["question_id"] for r in results} == questions
    assert all(set(r) == {"question_id", "answer"} and r["answer"] in answers for r in results)


def test_vqa_predict_refuses_a_head_of_another_vocabulary(shapes: Path, tmp_path: Path) -> None:
    task = VQATask(vilt(), {"vqa": VQAObjective(ClassifierHead(DIM, 7))}, predict_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"predicts 7 answers but the data's vocab\.json lists 25"):
        predict(
            task,
            datamodule(shapes, VQADecoder(), VQACollator(full_credit_answers=1, max_text_len=TEXT_LEN)),
            tmp_path,
        )
    assert not (tmp_path / "vqa_results.json").exists()


def test_nlvr2_writes_a_label_and_probability_per_statement(shapes: Path, tmp_path: Path) -> None:
    task = NLVR2Task(vilt(), {"nlvr2": NLVR2Objective(ClassifierHead(2 * DIM, 2))}, predict_dir=str(tmp_path))
    predict(
        task, datamodule(shapes, PairDecoder(), PairCollator(max_text_len=TEXT_LEN), **PAIR_SPLITS), tmp_path
    )
    rows = read_jsonl(tmp_path / "nlvr2_predictions.jsonl")
    pairs = split_samples(shapes, "pairs_test")
    assert [r["identifier"] for r in rows] == sorted(pairs)
    for row in rows:
        assert set(row) == {"identifier", "statement", "prediction", "probability_true"}
        assert row["statement"] == pairs[row["identifier"]]["statement"]
        assert isinstance(row["prediction"], bool) and 0.0 <= row["probability_true"] <= 1.0
        assert row["prediction"] == (row["probability_true"] > 0.5)


def test_retrieval_writes_top_k_both_ways(shapes: Path, tmp_path: Path) -> None:
    task = RetrievalTask(
        vilt(), {"rank": RetrievalObjective(RankHead(DIM))}, predict_top_k=4, predict_dir=str(tmp_path)
    )
    predict(
        task,
        datamodule(shapes, SampleDecoder(), RetrievalCollator(max_captions=2, max_text_len=TEXT_LEN)),
        tmp_path,
    )
    result = json.loads((tmp_path / "rankings.json").read_text())
    samples = split_samples(shapes, "test")
    keys = sorted(samples)
    assert result["top_k"] == 4
    t2i, i2t = result["text_to_image"], result["image_to_text"]
    assert [(t["image"], t["caption"]) for t in t2i] == [
        (k, c) for k in keys for c in samples[k]["captions"][:2]
    ]
    assert [entry["image"] for entry in i2t] == keys
    pair_scores = {}
    for index, text in enumerate(t2i):
        images = [hit["image"] for hit in text["top"]]
        scores = [hit["score"] for hit in text["top"]]
        assert len(images) == 4 == len(set(images)) and set(images) <= set(keys)
        assert scores == sorted(scores, reverse=True)
        pair_scores |= {(index, hit["image"]): hit["score"] for hit in text["top"]}
    for entry in i2t:
        hits = entry["top"]
        assert len(hits) == 4 and [h["score"] for h in hits] == sorted(
            (h["score"] for h in hits), reverse=True
        )
        for hit in hits:
            assert hit["caption"] == t2i[hit["text"]]["caption"]
            if (hit["text"], entry["image"]) in pair_scores:  # the same pair listed both ways
                assert pair_scores[hit["text"], entry["image"]] == hit["score"]


# ------------------------------------------------------------------------------------------ E2E-VLP


def test_captioning_writes_a_caption_per_image(shapes: Path, tmp_path: Path) -> None:
    objectives = {"caption": CaptioningObjective()}
    task = CaptioningTask(e2e(), objectives, max_caption_len=8, meteor=False, predict_dir=str(tmp_path))
    predict(task, e2e_data(shapes), tmp_path)
    rows = read_jsonl(tmp_path / "captions.jsonl")
    assert [r["key"] for r in rows] == sorted(split_samples(shapes, "test"))
    assert all(set(r) == {"key", "caption"} and isinstance(r["caption"], str) for r in rows)
    assert any(r["caption"] for r in rows)  # random weights still decode some words


def test_detection_writes_coco_results_with_image_and_category_ids(shapes: Path, tmp_path: Path) -> None:
    categories = vocab(shapes)["categories"]
    attributes = vocab(shapes)["attributes"]
    head = DetectionHead(DIM, len(categories), len(attributes))
    task = DetectionTask(e2e(), {"detection": DetectionObjective(head)}, predict_dir=str(tmp_path))
    predict(task, e2e_data(shapes), tmp_path)
    images = json.loads((tmp_path / "image_ids.json").read_text())
    assert images == [
        {"id": i, "key": key, "width": IMAGE, "height": IMAGE}
        for i, key in enumerate(sorted(split_samples(shapes, "test")))
    ]
    assert json.loads((tmp_path / "categories.json").read_text()) == [
        {"id": i, "name": name} for i, name in enumerate(categories)
    ]
    results = json.loads((tmp_path / "detections.json").read_text())
    assert len(results) == TEST_SAMPLES * 5  # every query of every image
    assert sorted({r["image_id"] for r in results}) == list(range(TEST_SAMPLES))
    for r in results:
        assert set(r) == {"image_id", "category_id", "bbox", "score"}
        assert r["category_id"] in range(len(categories)) and 0.0 <= r["score"] <= 1.0
        x, y, w, h = r["bbox"]
        # w = x2 - x1 is rounded to float32, so x + w may pass the edge by a rounding step
        assert x >= 0 and y >= 0 and w >= 0 and h >= 0 and x + w <= IMAGE + 1e-4 and y + h <= IMAGE + 1e-4


# --------------------------------------------------------------------------------------------- VQGAN


def test_vqgan_writes_grids_of_originals_above_reconstructions(shapes: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = VQGAN(
        resolution=IMAGE, ch=8, ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=8,
        num_codes=16, code_dim=4, norm_groups=4,
    )  # fmt: skip
    task = VQGANTask(model, VQGANLoss(), predict_dir=str(tmp_path))
    data = datamodule(shapes, collator=PretrainCollator(itm=False, max_text_len=TEXT_LEN))
    predict(task, data, tmp_path)
    rows = read_jsonl(tmp_path / "reconstructions.jsonl")
    assert [r["key"] for r in rows] == sorted(split_samples(shapes, "test"))
    task.eval()
    batches = [normalise_batch(batch) for batch in data.predict_dataloader()]
    assert [len(b) for b in batches] == [4, 2]
    by_key = {r["key"]: r for r in rows}
    for index, batch in enumerate(batches):
        name = f"reconstructions_rank0_batch{index:05d}.png"
        with torch.no_grad():
            reconstruction = task.model(batch.pixels).reconstruction
        original, reconstruction = ((t.clamp(-1, 1) + 1) / 2 for t in (batch.pixels, reconstruction))
        grid = make_grid(torch.cat([original, reconstruction]), nrow=len(batch))  # what save_image draws
        expected = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
        assert np.array_equal(np.asarray(Image.open(tmp_path / name)), expected)
        for column, key in enumerate(batch.keys):
            assert (by_key[key]["grid"], by_key[key]["column"]) == (name, column)
            mse = float(((reconstruction[column] - original[column]) ** 2).mean())
            assert math.isclose(by_key[key]["psnr"], -10 * math.log10(mse), rel_tol=1e-5)  # float32 sums


# ------------------------------------------------------------------------------------- CLI and DDP


def part(class_path: str, **init_args: Any) -> dict[str, Any]:
    return {"class_path": class_path, "init_args": init_args}


def data_part(
    shapes: Path, decoder: str, collator: str, collator_args: dict[str, Any], **reader: Any
) -> dict[str, Any]:
    """The recipe form of :func:`datamodule`: the shapes data read with ``decoder`` and ``collator``."""
    return part(
        "vlp.datamodules.shards.ShardDataModule",
        root=str(shapes),
        transform=part("vlp.datamodules.transforms.ViltTransform", image_size=IMAGE, patch_size=8),
        decoder=part(decoder),
        collator=part(collator, max_text_len=TEXT_LEN, **collator_args),
        **READER,
        **reader,
    )


def tiny_recipe(
    root_dir: Path, task: str, objectives: dict[str, Any], data: dict[str, Any]
) -> dict[str, Any]:
    """A recipe of the tiny ViLT (random weights: no init_from) for ``task`` over ``data``."""
    model = part(
        "vlp.models.vilt.ViLT",
        text_embedder=part(
            "vlp.models.embedders.text.TextEmbedder", vocab_size=VOCAB, dim=DIM, max_len=TEXT_LEN
        ),
        visual_embedder=part("vlp.models.embedders.ViTPatchEmbedder", dim=DIM, patch_size=8, pos_grid=4),
        encoder=part("vlp.models.layers.transformer.TransformerEncoder", dim=DIM, depth=2, num_heads=4),
    )
    trainer = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False}
    return {
        "seed_everything": 0,
        "trainer": trainer | {"enable_model_summary": False, "default_root_dir": str(root_dir)},
        "model": part(task, model=model, objectives=objectives),
        "data": data,
    }


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_cli_predict_writes_vqa_results_under_the_default_root_dir(shapes: Path, tmp_path: Path) -> None:
    head = part("vlp.models.layers.heads.ClassifierHead", input_dim=DIM, num_classes=25)
    objectives = {"vqa": part("vlp.objectives.VQAObjective", head=head)}
    data = data_part(
        shapes,
        "vlp.datamodules.vqa.VQADecoder",
        "vlp.datamodules.vqa.VQACollator",
        {"full_credit_answers": 1},
    )
    recipe = tiny_recipe(tmp_path / "run", "vlp.tasks.VQATask", objectives, data)
    main(["predict", "--config", str(write_recipe(tmp_path / "vqa.yaml", recipe))])
    results = json.loads((tmp_path / "run" / "predictions" / "vqa_results.json").read_text())
    questions = sum(len(s["qa"]) for s in split_samples(shapes, "test").values())
    assert len(results) == questions and all(r["answer"] in vocab(shapes)["answers"] for r in results)


DDP_RECIPES = {
    "nlvr2": (
        "vlp.tasks.NLVR2Task",
        {"nlvr2": part("vlp.objectives.NLVR2Objective", head=part("vlp.models.layers.heads.ClassifierHead", input_dim=2 * DIM, num_classes=2))},
        ("vlp.datamodules.pairs.PairDecoder", "vlp.datamodules.pairs.PairCollator", {}, PAIR_SPLITS),
    ),
    "retrieval": (
        "vlp.tasks.RetrievalTask",
        {"rank": part("vlp.objectives.RetrievalObjective", head=part("vlp.models.layers.heads.RankHead", dim=DIM))},
        ("vlp.datamodules.decode.SampleDecoder", "vlp.datamodules.retrieval.RetrievalCollator", {"max_captions": 2}, {}),
    ),
}  # fmt: skip


def pair_scores(rankings: dict[str, Any]) -> dict[tuple[int, str], float]:
    """``(text index, image key) -> score`` of every pair listed text → image."""
    texts = rankings["text_to_image"]
    return {(index, hit["image"]): hit["score"] for index, text in enumerate(texts) for hit in text["top"]}


def launch_ddp(recipe: Path, predict_dir: Path) -> subprocess.Popen:
    """``python -m vlp predict`` of ``recipe`` on two DDP processes (Lightning starts the second), in the
    background and in a session of its own (so both processes can be ended together)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV_KEYS} | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "vlp", "predict", "--config", str(recipe), "--trainer.strategy=ddp"]
    command += ["--trainer.devices=2", f"--model.init_args.predict_dir={predict_dir}"]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_predict_writes_the_files_one_process_writes(shapes: Path, tmp_path: Path) -> None:
    """Two DDP processes (each reads one of the two test shards) write one file of every sample, in the
    order and with the values of a single process: rows are gathered and the first process writes them,
    and retrieval scores all pairs of both processes' images."""
    recipes = {}
    for name, (task, objectives, (decoder, collator, collator_args, reader)) in DDP_RECIPES.items():
        data = data_part(shapes, decoder, collator, collator_args, **reader)
        recipe = tiny_recipe(tmp_path / name, task, objectives, data)
        if name == "retrieval":
            recipe["model"]["init_args"]["predict_top_k"] = 2 * TEST_SAMPLES  # every pair, both ways
        recipes[name] = write_recipe(tmp_path / f"{name}.yaml", recipe)
    launches = {name: launch_ddp(recipe, tmp_path / name / "ddp") for name, recipe in recipes.items()}
    try:
        for name, recipe in recipes.items():
            main(
                [
                    "predict",
                    "--config",
                    str(recipe),
                    f"--model.init_args.predict_dir={tmp_path / name / 'one'}",
                ]
            )
        outputs = {name: launch.communicate(timeout=600)[0].decode() for name, launch in launches.items()}
    finally:
        for launch in launches.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(launch.pid, signal.SIGKILL)
            launch.wait()
    for name, launch in launches.items():
        assert launch.returncode == 0, outputs[name][-4000:]
        assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[name]  # Lightning started the second process
    # another batch composition (a batch of 3 per process, not 4 + 2) pads the texts to other lengths:
    # the attention sums run in another order, so values agree to float32 rounding
    tolerance = 1e-5
    one, ddp = (read_jsonl(tmp_path / "nlvr2" / run / "nlvr2_predictions.jsonl") for run in ("one", "ddp"))
    assert (
        [r["identifier"] for r in ddp]
        == [r["identifier"] for r in one]
        == sorted(split_samples(shapes, "pairs_test"))
    )
    assert [r["statement"] for r in ddp] == [r["statement"] for r in one]
    for a, b in zip(one, ddp):
        assert math.isclose(a["probability_true"], b["probability_true"], abs_tol=tolerance)
    assert sorted((tmp_path / "nlvr2" / "ddp").iterdir()) == [
        tmp_path / "nlvr2" / "ddp" / "nlvr2_predictions.jsonl"
    ]
    one, ddp = (
        json.loads((tmp_path / "retrieval" / run / "rankings.json").read_text()) for run in ("one", "ddp")
    )
    assert [(t["caption"], t["image"]) for t in ddp["text_to_image"]] == [
        (t["caption"], t["image"]) for t in one["text_to_image"]
    ]
    assert [e["image"] for e in ddp["image_to_text"]] == [e["image"] for e in one["image_to_text"]]
    scores_one, scores_ddp = pair_scores(one), pair_scores(ddp)
    assert len(scores_one) == 2 * TEST_SAMPLES * TEST_SAMPLES and scores_ddp.keys() == scores_one.keys()
    for pair, score in scores_one.items():
        assert math.isclose(scores_ddp[pair], score, abs_tol=tolerance), pair
