"""E2E-VLP tasks on tiny random parts: each learns a fixed batch through its views, a weight of 0 skips
its view and freezes what only it reaches, captioning decodes and scores text, detection logs mAP."""

from __future__ import annotations

import math
from typing import Any

import e2e_parts as parts
import pytest
import torch
from finetune_parts import train_steps
from lightning import LightningDataModule, Trainer
from torch.utils.data import DataLoader
from torchmetrics.detection import MeanAveragePrecision

from vlp.metrics.captioning import caption_scores
from vlp.models.layers.heads import ClassifierHead
from vlp.objectives import CaptioningObjective, MLMObjective, VQAObjective
from vlp.tasks import CaptioningTask, VQATask

pytestmark = pytest.mark.filterwarnings("ignore")


def test_pretraining_learns_a_fixed_batch_in_every_view() -> None:
    task = parts.pretrain_task()
    batch = parts.e2e_batches(1)[0]
    first = {
        name: obj(task.forward_model(batch)[obj.view], batch).loss.item()
        for name, obj in task.objectives.items()
    }
    train_steps(task, [batch], steps=35, lr=2e-3)
    outputs = task.forward_model(batch)
    last = {name: obj(outputs[obj.view], batch).loss.item() for name, obj in task.objectives.items()}
    for name, factor in {"mlm": 0.8, "itm": 0.9, "detection": 0.8, "caption": 0.8}.items():
        assert last[name] < factor * first[name], (name, first[name], last[name])
    assert task.frozen == []  # every part is reached by some view


def test_pretraining_trains_anchored_query_groups_and_evaluates_the_first_group() -> None:
    # the shapes pre-training builds the detection recipe's model: anchored queries (DAB-DETR) in 3
    # groups (Group DETR), so the detection fine-tuning can start from its checkpoint
    task = parts.pretrain_task(model_kwargs={"anchor_queries": True, "query_groups": 3})
    batch = parts.e2e_batches(1)[0]
    queries = task.model.num_queries
    outputs = task.forward_model(batch)
    assert outputs["detection"].groups == 3 and outputs["detection"].query_states.shape[2] == 3 * queries
    task.compute_losses(batch, "train").backward()
    # every group's query embeddings and reference boxes get a gradient (DDP-safe), and so does the
    # anchor MLP; nothing is frozen
    assert task.frozen == []
    assert (task.model.query_embed.weight.grad.abs().sum(-1) > 0).all()
    assert (task.model.reference_boxes.grad.abs().sum(-1) > 0).all()
    no_grad = [n for n, p in task.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    task.zero_grad()

    def detection_loss() -> float:
        with torch.no_grad():
            return task.objectives["detection"](task.forward_model(batch)["detection"], batch).loss.item()

    first = detection_loss()
    train_steps(task, [batch], steps=35, lr=2e-3)
    assert detection_loss() < 0.8 * first
    task.eval()
    evaluated = task.forward_model(batch)["detection"]
    assert evaluated.groups == 1 and evaluated.query_states.shape[2] == queries


def test_pretraining_runs_only_the_views_with_a_weight() -> None:
    task = parts.pretrain_task(loss_weights={"mlm": 1.0, "itm": 0.0, "detection": 1.0, "caption": 0.0})
    outputs = task.forward_model(parts.e2e_batches(1)[0])
    assert set(outputs) == {"mlm", "detection"}
    # what only ITM and captioning reach is frozen (DDP would stop on parameters without gradients)
    assert set(task.frozen) == {"model.pooler", "model.caption_head", "objectives.itm"}
    trainable = {name for name, p in task.named_parameters() if p.requires_grad}
    assert not any(
        n.startswith(("model.pooler.", "model.caption_head.", "objectives.itm.")) for n in trainable
    )
    assert any(n.startswith("model.query_embed") for n in trainable)
    task.compute_losses(parts.e2e_batches(1)[0], "train").backward()
    no_grad = [n for n, p in task.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []


def test_detection_reads_the_mlm_pass_when_mlm_is_on_and_a_clean_pass_otherwise() -> None:
    batch = parts.e2e_batches(1)[0]
    seen: list[torch.Tensor] = []
    for weights in ({"mlm": 1.0}, {"mlm": 0.0}):
        task = parts.pretrain_task(loss_weights={**weights, "itm": 0.0, "caption": 0.0}).eval()
        handle = task.model.text_embedder.register_forward_hook(lambda m, args, out: seen.append(args[0]))
        task.forward_model(batch)
        handle.remove()
    assert len(seen) == 2  # one encoder pass each time
    assert torch.equal(seen[0], batch.mlm_text_ids) and torch.equal(seen[1], batch.text_ids)


def test_tasks_refuse_objectives_of_views_they_do_not_run() -> None:
    with pytest.raises(ValueError, match=r"objectives\.mlm: MLMObjective reads view 'mlm'.*CaptioningTask"):
        CaptioningTask(parts.tiny_e2e(), {"mlm": MLMObjective(parts.MLMHead(parts.DIM, parts.VOCAB))})
    with pytest.raises(ValueError, match=r"model\.decoder is None"):
        CaptioningTask(parts.tiny_e2e(decoder=False), {"caption": CaptioningObjective()})


def test_captioning_learns_and_decodes_its_captions() -> None:
    """Memorised means each caption is likelier than every other caption together (its summed NLL is
    below ln 2); then greedy decoding and beam search must both return it. 60 steps at this rate left
    the summed NLL at 2.6-2.9 nats (the loss was still falling steeply): greedy got the captions, but
    beam search rightly preferred ``[CLS] [SEP]`` (an empty caption, one token of p ~0.1) on some seeds."""
    task = parts.captioning_task()
    batch = parts.e2e_batches(1, size=4)[0]
    losses = train_steps(task, [batch], steps=100, lr=3e-3)
    assert losses[-1] < 0.05 * losses[0]
    assert "model.query_embed" in task.frozen and "model.pooler" in task.frozen
    task.eval()
    with torch.no_grad():
        fusion = task.model(None, None, batch.pixels, batch.pixel_mask)
        log_probs = task.model.caption_logits(fusion, batch.caption_ids).log_softmax(-1)[:, :-1]
    caption_nll = -log_probs.gather(2, batch.caption_ids[:, 1:, None])[..., 0].sum(1)
    assert (caption_nll < math.log(2)).all(), caption_nll
    generated = task.generate(batch.pixels, batch.pixel_mask)
    tokenizer = parts_tokenizer()
    expected = tokenizer.batch_decode(batch.caption_ids, skip_special_tokens=True)
    assert generated == expected  # memorised: greedy decoding returns each image's own caption
    task.num_beams = 3
    assert task.generate(batch.pixels, batch.pixel_mask) == expected  # and so does beam search
    other = task.generate(batch.pixels.flip(0), batch.pixel_mask)
    assert other == expected[::-1]  # the caption follows the image


def parts_tokenizer() -> Any:
    from vlp.tokenizers import load_tokenizer

    return load_tokenizer()


class Fixed(LightningDataModule):
    def __init__(self, train: list[Any], val: list[Any]) -> None:
        super().__init__()
        self.train, self.val = train, val

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=None)


def trainer(steps: int) -> Trainer:
    return Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=1,
    )


def test_captioning_validation_scores_the_decoded_captions_against_the_references() -> None:
    task = parts.captioning_task(lr=3e-3, warmup=0.0)
    batches = parts.e2e_batches(2, size=4)
    run = trainer(2)
    run.fit(task, datamodule=Fixed(batches[:1], batches))
    metrics = {k: float(v) for k, v in run.callback_metrics.items() if k.startswith("val/")}
    predictions = task.predictions
    assert sorted(predictions) == sorted(k for b in batches for k in b.keys)
    references = {k: r for b in batches for k, r in zip(b.keys, b.references)}
    expected = caption_scores(predictions, references, meteor=False)
    for name in ("bleu_4", "cider", "rouge_l"):
        assert metrics[f"val/{name}"] == pytest.approx(expected[name], abs=1e-6)
    assert "val/meteor" not in metrics and "val/caption_loss" in metrics


def test_detection_learns_a_fixed_batch_and_validation_logs_its_map() -> None:
    task = parts.detection_task()
    batch = parts.e2e_batches(1, size=4)[0]
    losses = train_steps(task, [batch], steps=40, lr=2e-3)
    assert losses[-1] < 0.7 * losses[0]
    run = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    run.validate(task, datamodule=Fixed([batch], [batch, batch]), verbose=False)
    metrics = {k: float(v) for k, v in run.callback_metrics.items() if k.startswith("val/")}
    # the same figures from torchmetrics directly, on the head's last-layer predictions
    task.eval()
    with torch.no_grad():
        predictions = task.detector.head(task.forward_model(batch).query_states[-1])
    reference = MeanAveragePrecision(box_format="cxcywh", iou_type="bbox")
    scores, labels = predictions.logits.softmax(-1)[..., :-1].max(-1)
    for _ in range(2):  # the batch was validated twice
        reference.update(
            [
                {"boxes": b * 64, "scores": s, "labels": c}
                for b, s, c in zip(predictions.boxes, scores, labels)
            ],
            [{"boxes": t.boxes * 64, "labels": t.labels} for t in batch.targets],
        )
    expected = reference.compute()
    for name in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100"):
        assert metrics[f"val/{name}"] == pytest.approx(float(expected[name]), abs=1e-6), name
    assert metrics["val/map_large"] == -1.0  # 64 px images: every box is below 96 x 96 pixels
    assert "val/detection_loss" in metrics


def test_detection_without_text_freezes_the_text_embedder_and_ignores_the_text() -> None:
    task = parts.detection_task(use_text=False).eval()
    assert "model.text_embedder" in task.frozen
    batch = parts.e2e_batches(1, size=2)[0]
    a = task.forward_model(batch).query_states
    batch.text_ids = batch.text_ids.flip(0)
    torch.testing.assert_close(task.forward_model(batch).query_states, a)
    with_text = parts.detection_task(use_text=True).eval()
    assert not torch.allclose(
        with_text.forward_model(batch).query_states,
        with_text.forward_model(parts.e2e_batches(1, size=2)[0]).query_states,
    )


def test_vqa_task_drives_an_encoder_only_e2e_vlp() -> None:
    model = parts.tiny_e2e(decoder=False)
    assert model.caption_head is None and model.query_embed is None
    task = VQATask(model, {"vqa": VQAObjective(ClassifierHead(parts.DIM, 4))})
    batch = parts.e2e_batches(1, size=4)[0]
    batch.answers = torch.eye(4)
    losses = train_steps(task, [batch], steps=30, lr=3e-3)
    assert losses[-1] < 0.7 * losses[0]
    assert all(p.grad is not None for p in task.parameters())  # nothing unused: DDP-safe
