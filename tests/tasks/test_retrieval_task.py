from __future__ import annotations

import math

import pytest
import torch
from finetune_parts import caption_batches, retrieval_eval_batches, retrieval_task, train_steps
from lightning import Trainer
from torch.utils.data import DataLoader

from vlp.metrics.retrieval import retrieval_recall
from vlp.tasks.retrieval import gather_eval_pool


def test_each_image_meets_its_caption_first_then_distinct_other_captions() -> None:
    task = retrieval_task(negatives=3)
    batch = caption_batches(size=6)[0]
    seen = {}

    def record(text_ids, text_mask, pixels, pixel_mask):
        seen.update(text_ids=text_ids, pixels=pixels)
        return task.model.__class__.forward(task.model, text_ids, text_mask, pixels, pixel_mask)

    task.model.forward = record
    task.forward_model(batch)
    texts = seen["text_ids"].view(6, 4, -1)
    images = seen["pixels"].view(6, 4, *batch.pixels.shape[1:])
    for i in range(6):
        assert torch.equal(texts[i, 0], batch.text_ids[i])  # own caption first
        rows = [next(j for j in range(6) if torch.equal(t, batch.text_ids[j])) for t in texts[i, 1:]]
        assert i not in rows and len(set(rows)) == 3  # three distinct other captions
        assert all(torch.equal(image, batch.pixels[i]) for image in images[i])


def test_loss_falls_on_a_fixed_batch() -> None:
    """Matching must be learnt from scratch here (no ITM head to start from): slower than VQA."""
    task = retrieval_task(negatives=3)
    losses = train_steps(task, caption_batches(size=4), 100, lr=1e-3)
    assert losses[0] == pytest.approx(math.log(4), abs=0.01)  # four candidates, scored alike at first
    assert sum(losses[-10:]) / 10 < 0.8 * math.log(4)


def test_chunked_scoring_equals_unchunked_and_pairwise_calls() -> None:
    task = retrieval_task().eval()
    pool = gather_eval_pool([vars_of(b) for b in retrieval_eval_batches()])
    assert pool is not None
    texts, images = pool["text_ids"].shape[0], pool["pixels"].shape[0]
    task.eval_chunk_size = texts * images
    whole = task.score_all(pool)
    task.eval_chunk_size = 7
    chunked = task.score_all(pool)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # pair (t, n) scored alone, its text at its own batch's length
        for t, n in [(0, 0), (texts - 1, images - 1), (3, 5)]:
            single = task.score_pairs(pool, torch.tensor([t]), torch.tensor([n]))
            torch.testing.assert_close(chunked[t, n], single[0], rtol=1e-5, atol=1e-5)


def vars_of(batch):
    return {
        "pixels": batch.pixels,
        "pixel_mask": batch.pixel_mask,
        "text_ids": batch.text_ids,
        "text_mask": batch.text_mask,
        "text_image_index": batch.text_image_index,
    }


def test_pool_renumbers_text_owners_and_pads_texts() -> None:
    batches = retrieval_eval_batches()
    pool = gather_eval_pool([vars_of(b) for b in batches])
    offsets = [0, 3, 5]
    expected = torch.cat([b.text_image_index + o for b, o in zip(batches, offsets)])
    assert torch.equal(pool["text_image_index"], expected)
    assert pool["text_ids"].shape[1] == max(b.text_ids.shape[1] for b in batches)
    assert pool["text_mask"].sum() == sum(b.text_mask.sum() for b in batches)


def test_validation_logs_recall_over_all_pairs_of_the_epoch(tmp_path) -> None:
    task = retrieval_task()
    batches = retrieval_eval_batches()
    trainer = Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    (metrics,) = trainer.validate(task, DataLoader(batches, batch_size=None))
    task.eval()
    pool = gather_eval_pool([vars_of(b) for b in batches])
    expected = retrieval_recall(task.score_all(pool), pool["text_image_index"])
    assert set(metrics) == {f"val/{k}" for k in expected}
    for name, value in expected.items():
        assert metrics[f"val/{name}"] == pytest.approx(value.item())
    assert 0 < metrics["val/t2i_r10"] <= 1 and metrics["val/t2i_r1"] < 1  # 9 images: a real ranking
