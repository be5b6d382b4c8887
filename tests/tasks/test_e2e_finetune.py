"""E2E-VLP fine-tuned for NLVR2 and image-text retrieval, two of the paper's evaluations, through the
shared NLVR2Task and RetrievalTask on E2E-VLP's encoder side (``decoder=None``, as for VQA).

On a tiny E2E-VLP (``e2e_finetune_distributed_run.py``): NLVR2 grows the modality-type table and reads
the right image as type 2, and learns a fixed batch, also a label only the right image gives; retrieval
learns a fixed batch and scores pairs with each image through the CNN once per chunk, as a forward
over every pair's own pixels scores them. Under DDP and FSDP2 on two CPU processes both train as one
process and retrieval's recall is one process's over every pair. The shapes recipes (``configs/e2e_vlp/shapes_nlvr2.yaml``,
``configs/e2e_vlp/shapes_retrieval.yaml``) start from the E2E-VLP pre-training recipe's checkpoint,
loading every encoder key, and run two steps through ``configs/trainer/smoke.yaml``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import distributed_run as run
import e2e_finetune_distributed_run as ft
import pytest
import torch
import yaml
from finetune_parts import eval_pool_batches, train_steps
from two_process_launch import assert_same_run, two_process_results

from conftest import CONFIGS, combined_with_trainer_config, fit_recipe
from vlp.cli import VLPCLI
from vlp.metrics.retrieval import retrieval_recall
from vlp.models.layers.heads import ClassifierHead
from vlp.objectives import NLVR2Objective
from vlp.tasks import NLVR2Task
from vlp.tasks.nlvr2 import MODALITY_KEY
from vlp.tasks.retrieval import gather_eval_pool

pytestmark = pytest.mark.filterwarnings("ignore")

RECIPES = {
    "nlvr2": (CONFIGS / "e2e_vlp/shapes_nlvr2.yaml", "NLVR2Task", ["val/nlvr2_acc", "val/nlvr2_loss"]),
    "retrieval": (
        CONFIGS / "e2e_vlp/shapes_retrieval.yaml",
        "RetrievalTask",
        ["val/t2i_r1", "val/t2i_r10", "val/i2t_r1", "val/i2t_r10"],
    ),
}


# ------------------------------------------------------------------------------------------- NLVR2


def test_nlvr2_grows_the_modality_table_and_reads_the_right_image_as_type_2() -> None:
    model = ft.tiny_e2e_encoder().eval()
    before = model.token_type_embeddings.weight.detach().clone()
    batch = ft.pair_batches(size=4)[0]
    with torch.no_grad():
        as_image = model(batch.text_ids, batch.text_mask, batch.pixels_right, batch.pixel_mask_right).pooled
    task = NLVR2Task(model, {"nlvr2": NLVR2Objective(ClassifierHead(2 * ft.DIM, 2))}).eval()
    table = task.model.token_type_embeddings.weight
    assert table.shape == (3, ft.DIM)
    torch.testing.assert_close(table[:2].detach(), before, rtol=0, atol=0)  # rows 0 and 1 kept
    torch.testing.assert_close(table[2].detach(), before[1], rtol=0, atol=0)  # row 2 = row 1
    with torch.no_grad():
        _, right = task.forward_model(batch)
        torch.testing.assert_close(right.pooled, as_image)  # right after growth type 2 reads as type 1
        table[2].add_(torch.randn(ft.DIM))  # make the types differ
        left, right = task.forward_model(batch)
        as_type = {
            t: model(
                batch.text_ids,
                batch.text_mask,
                batch.pixels_right,
                batch.pixel_mask_right,
                image_token_type=t,
            )
            for t in (1, 2)
        }
        as_left = model(batch.text_ids, batch.text_mask, batch.pixels, batch.pixel_mask, image_token_type=1)
    torch.testing.assert_close(right.pooled, as_type[2].pooled)
    assert (right.pooled - as_type[1].pooled).abs().max() > 1e-3
    torch.testing.assert_close(left.pooled, as_left.pooled)


def test_nlvr2_learns_a_fixed_batch() -> None:
    task = ft.nlvr2_task()  # the CNN's BatchNorm trains, as in the shapes recipe
    losses = train_steps(task, ft.pair_batches(), 30)
    assert losses[0] == pytest.approx(math.log(2), abs=0.15)
    assert losses[-1] < 0.2 * losses[0]


def test_nlvr2_learns_a_label_only_the_right_image_gives() -> None:
    """One statement for every pair, the truth set by the right image (dark or bright), the left one
    noise: only the second pass (type 2) through the CNN grid can tell."""
    batch = ft.pair_batches()[0]
    size = len(batch)
    label = torch.arange(size) % 2
    batch.text_ids = batch.text_ids[:1].expand(size, -1).clone()
    batch.text_mask = batch.text_mask[:1].expand(size, -1).clone()
    noise = torch.randn(size, 3, ft.IMAGE, ft.IMAGE, generator=torch.Generator().manual_seed(3))
    batch.pixels_right = (2.0 * label - 1)[:, None, None, None] + 0.1 * noise
    batch.pair_labels = label
    task = ft.nlvr2_task()
    train_steps(task, [batch], 30)
    assert task.objectives["nlvr2"](task.forward_model(batch), batch).logs["nlvr2_acc"].item() == 1.0


# --------------------------------------------------------------------------------------- retrieval


def test_retrieval_learns_a_fixed_batch() -> None:
    """Every image is ranked against the same captions, so a score of the text (or of the image) alone
    cannot take the loss below log 2: what it loses below that is matching learnt."""
    task = ft.retrieval_task()  # the CNN's BatchNorm trains, as in the shapes recipe
    batch = ft.colour_batch(size=2)
    # lr 5e-4: at 3e-3 the pooler's tanh saturates and the loss stalls with one image matched; at 1e-3
    # the loss can spike back up near step 36, depending on the float reduction order (seen with 1
    # thread, not with 2); at 5e-4 it falls to ~0.1 by step 60 with 1 or 2 threads
    losses = train_steps(task, [batch], 60, lr=5e-4)
    assert losses[0] == pytest.approx(math.log(2), abs=0.01)  # two candidates, scored nearly alike
    assert sum(losses[-5:]) / 5 < 0.4 * math.log(2)
    assert task.objectives["rank"](task.forward_model(batch), batch).logs["rank_acc"].item() == 1.0


def test_retrieval_embeds_each_image_of_a_chunk_once_and_scores_as_a_plain_forward() -> None:
    task = ft.retrieval_task(eval_chunk_size=7).eval()
    pool = gather_eval_pool(eval_pool_batches(ft.retrieval_eval_batches()))
    assert pool is not None
    texts, images = pool["text_ids"].shape[0], pool["pixels"].shape[0]
    embedded: list[int] = []
    task.model.visual_embedder.register_forward_hook(lambda m, args, out: embedded.append(args[0].shape[0]))
    scores = task.score_all(pool)
    assert scores.shape == (texts, images)
    calls = math.ceil(texts * images / 7)
    expected_rows = [
        len({p % images for p in range(c * 7, min((c + 1) * 7, texts * images))}) for c in range(calls)
    ]
    assert embedded == expected_rows  # each distinct image of a chunk once, not once per pair
    model = task.model
    with torch.no_grad():  # each text against every image, each pair's image embedded by forward
        for t in range(texts):
            pairs = model(
                pool["text_ids"][t].expand(images, -1),
                pool["text_mask"][t].expand(images, -1),
                pool["pixels"],
                pool["pixel_mask"],
            )
            # other batch sizes and shapes than the chunks': float reduction order only
            torch.testing.assert_close(scores[t], task.ranker.score(pairs.pooled), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ recipes


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_starts_from_the_e2e_pretraining_and_loads_every_encoder_key(
    name: str, e2e_pretrained: Path
) -> None:
    path, task_class, _ = RECIPES[name]
    own = yaml.safe_load(path.read_text())["model"]["init_args"]
    assert own["init_from"].startswith("runs/e2e_shapes_pretrain/")
    assert own["model"] == "../model/e2e_vlp_shapes_encoder.yaml"  # VQA's: the pre-training's encoder side
    cli = VLPCLI(args=["--config", str(path), f"--model.init_args.init_from={e2e_pretrained}"], run=False)
    task = cli.model
    assert type(task).__name__ == task_class and task.model.decoder is None
    report = task.init_report
    assert [key for key in report.new if key.startswith("model.")] == []
    for dropped in ("model.decoder.", "model.query_embed.", "model.caption_head.", "objectives.mlm."):
        assert any(key.startswith(dropped) for key in report.dropped), dropped
    if name == "nlvr2":
        assert list(report.adapted) == [MODALITY_KEY]
        table = task.model.token_type_embeddings.weight
        torch.testing.assert_close(table[2], table[1], rtol=0, atol=0)
    else:  # the score head from the pre-trained ITM head's match row
        assert sorted(report.adapted) == ["objectives.rank.head.fc.bias", "objectives.rank.head.fc.weight"]
        state = torch.load(e2e_pretrained, weights_only=True)["state_dict"]
        head = task.objectives["rank"].head.fc
        torch.testing.assert_close(head.weight.detach(), state["objectives.itm.head.fc.weight"][1:])
        assert report.new == []


@pytest.mark.parametrize("name", RECIPES)
@pytest.mark.parametrize("trainer", ["ddp", "fsdp"])
def test_recipe_combines_with_the_multi_process_trainer_configs(
    name: str, trainer: str, capsys: pytest.CaptureFixture[str]
) -> None:
    combined_with_trainer_config(capsys, RECIPES[name][0], trainer)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_runs_two_smoke_steps_and_prints_its_metrics(
    name: str, e2e_pretrained: Path, shapes64: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _, metrics = RECIPES[name]
    fit_recipe(capsys, metrics, path, shapes64, tmp_path, f"--model.init_args.init_from={e2e_pretrained}")
    checkpoint = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2


# ------------------------------------------------------------------------------- two processes

SCRIPT = Path(__file__).with_name("e2e_finetune_distributed_run.py")
LOSS_TOL = {"rtol": 1e-5, "atol": 1e-5}  # fp32, the ranks' losses averaged in another order
# Two processes sum gradients in another order than one: float noise (NLVR2's weights differ by ~2e-7).
# Retrieval's differ by up to ~5e-5: AdamW normalises that noise into steps where the exact gradient is
# zero, e.g. the rank head's bias (the softmax over an image's candidates is shift-invariant). A rank
# training on its own rows without synchronising ends far outside (test_unsynchronised_rank_...).
WEIGHT_TOL = {"nlvr2": {"rtol": 1e-4, "atol": 2e-5}, "retrieval": {"rtol": 1e-4, "atol": 2e-4}}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return two_process_results(SCRIPT, tmp_path_factory, "e2e_ft")


@pytest.fixture(scope="module")
def single() -> dict[str, Any]:
    torch.set_num_threads(1)
    return {kind: ft.run_single(kind) for kind in ft.KINDS}


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("kind", ft.KINDS)
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_train_as_one(
    kind: str, strategy: str, results: dict[str, Any], single: dict[str, Any]
) -> None:
    assert_same_run(results[strategy][kind], single[kind], run.STEPS, LOSS_TOL, WEIGHT_TOL[kind])


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("kind", ft.KINDS)
def test_unsynchronised_rank_would_fail_these_comparisons(kind: str, single: dict[str, Any]) -> None:
    """One rank's half of every global batch, its gradients not averaged with the other's: its weights
    leave the tolerance by far, so matching weights show that the two processes synchronised."""
    half = ft.fit(kind, 1, "auto", rows=(0, run.GLOBAL_BATCH // 2))
    gap = max(
        (half["state"][name] - value).abs().max().item() for name, value in single[kind]["state"].items()
    )
    assert gap > 10 * WEIGHT_TOL[kind]["atol"]


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_retrieval_recall_over_two_processes_is_one_process_over_every_pair(
    strategy: str, results: dict[str, Any]
) -> None:
    """Each rank kept different (and differently many) evaluation batches; the recall logged is that of
    one process scoring every text against every image with the trained weights."""
    result = results[strategy]["retrieval"]
    task = ft.make_task("retrieval", seed=123)
    task.load_state_dict(result["state"])  # strict
    task.eval()
    pool = gather_eval_pool(eval_pool_batches(ft.retrieval_eval_batches()))
    expected = retrieval_recall(task.score_all(pool), pool["text_image_index"])
    assert result["metrics"] == pytest.approx({f"val/{k}": v.item() for k, v in expected.items()}, abs=1e-6)
