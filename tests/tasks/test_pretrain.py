from dataclasses import replace

import pytest
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.utils.data import DataLoader

from conftest import TINY_DIM, TINY_VOCAB, make_tiny_vilt
from vlp.batch import Batch
from vlp.models.layers.heads import ITMHead, MLMHead
from vlp.objectives import ITMObjective, MLMObjective, WPAObjective
from vlp.tasks import PretrainTask
from vlp.tasks.optim import param_groups


def fixed_batch(size: int = 8) -> Batch:
    ids = torch.randint(5, TINY_VOCAB, (size, 8))
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    masked = ids.clone()
    masked[:, 2] = 3  # [MASK]-like id
    itm_labels = torch.arange(size) % 2
    return Batch(
        keys=[str(i) for i in range(size)],
        pixels=torch.randn(size, 3, 16, 16),
        pixel_mask=torch.ones(size, 16, 16, dtype=torch.bool),
        text_ids=ids,
        text_mask=torch.ones(size, 8, dtype=torch.bool),
        mlm_text_ids=masked,
        mlm_labels=labels,
        itm_labels=itm_labels,
        itm_image_index=torch.where(itm_labels == 1, torch.arange(size), (torch.arange(size) + 1) % size),
    )


def make_task(**kwargs: object) -> PretrainTask:
    objectives = {
        "mlm": MLMObjective(MLMHead(TINY_DIM, vocab_size=TINY_VOCAB)),
        "itm": ITMObjective(ITMHead(TINY_DIM)),
    }
    return PretrainTask(make_tiny_vilt(), objectives, **kwargs)


def test_loss_falls_on_a_fixed_batch() -> None:
    task = make_task()
    batch = fixed_batch()
    optimizer = torch.optim.AdamW(task.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        loss = task.compute_losses(batch, "train")
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_zero_weight_skips_the_objective_and_weights_multiply() -> None:
    task = make_task(loss_weights={"itm": 0.0, "mlm": 2.0})
    batch = fixed_batch()
    outputs = task.forward_model(batch)
    assert set(outputs) == {"mlm"}  # the ITM pass is not even run
    mlm = task.objectives["mlm"](outputs["mlm"], batch).loss
    torch.testing.assert_close(task.compute_losses(batch, "train"), 2.0 * mlm)


def test_unknown_loss_weight_is_named() -> None:
    with pytest.raises(ValueError, match="wpa"):
        make_task(loss_weights={"wpa": 1.0})


def test_head_width_mismatch_is_refused_before_training() -> None:
    with pytest.raises(ValueError, match=r"objectives\.itm"):
        PretrainTask(make_tiny_vilt(), {"itm": ITMObjective(ITMHead(TINY_DIM * 2))})


def test_no_weight_decay_on_biases_norms_and_embeddings() -> None:
    task = make_task(lr_multipliers={"objectives.itm": 10.0})
    groups = param_groups(task, lr=1e-4, weight_decay=0.01, lr_multipliers={"objectives.itm": 10.0})
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(task.named_parameters())
    assert by_param[id(named["model.encoder.blocks.0.norm1.weight"])]["weight_decay"] == 0.0
    assert by_param[id(named["model.encoder.blocks.0.attn.qkv.bias"])]["weight_decay"] == 0.0
    assert by_param[id(named["model.text_embedder.word_embeddings.weight"])]["weight_decay"] == 0.0
    assert by_param[id(named["model.encoder.blocks.0.attn.qkv.weight"])]["weight_decay"] == 0.01
    assert by_param[id(named["objectives.itm.head.fc.weight"])]["lr"] == pytest.approx(1e-3)


def test_views_mlm_reads_masked_text_with_own_image_itm_clean_text_with_paired_image() -> None:
    task = make_task().eval()
    batch = fixed_batch()
    outputs = task.forward_model(batch)
    model = task.model
    with torch.no_grad():
        mlm = model(batch.mlm_text_ids, batch.text_mask, batch.pixels, batch.pixel_mask)
        index = batch.itm_image_index
        itm = model(batch.text_ids, batch.text_mask, batch.pixels[index], batch.pixel_mask[index])
    read = batch.mlm_labels != -100  # the MLM view computes the labelled rows (and [CLS]) only
    torch.testing.assert_close(outputs["mlm"].text_states[read], mlm.text_states[read])
    torch.testing.assert_close(outputs["mlm"].pooled, mlm.pooled)
    torch.testing.assert_close(outputs["itm"].pooled, itm.pooled)  # the ITM view computes [CLS] only
    assert outputs["itm"].text_states[:, 1:].isnan().all()
    assert not torch.allclose(outputs["itm"].pooled, outputs["mlm"].pooled)


def test_the_itm_view_reads_itm_text_when_the_batch_has_caption_edit_negatives() -> None:
    task = make_task().eval()
    batch = fixed_batch()
    edited = torch.randint(5, TINY_VOCAB, (8, 6))  # another text length than text_ids
    edited_mask = torch.ones(8, 6, dtype=torch.bool)
    edited_mask[0, 4:] = False
    outputs = task.forward_model(replace(batch, itm_text_ids=edited, itm_text_mask=edited_mask))
    with torch.no_grad():
        index = batch.itm_image_index
        itm = task.model(edited, edited_mask, batch.pixels[index], batch.pixel_mask[index])
        mlm = task.model(batch.mlm_text_ids, batch.text_mask, batch.pixels, batch.pixel_mask)
    torch.testing.assert_close(outputs["itm"].pooled, itm.pooled)
    torch.testing.assert_close(outputs["mlm"].pooled, mlm.pooled)  # MLM keeps the caption as written


def test_the_two_views_embed_the_images_once() -> None:
    task = make_task().eval()
    calls = []
    task.model.visual_embedder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    task.forward_model(fixed_batch())
    assert calls == [8]


def test_wpa_trains_with_itm_on_the_itm_view() -> None:
    objectives = {"itm": ITMObjective(ITMHead(TINY_DIM)), "wpa": WPAObjective(iterations=10)}
    task = PretrainTask(make_tiny_vilt(), objectives, loss_weights={"wpa": 0.1})
    loss = task.compute_losses(fixed_batch(), "train")
    loss.backward()
    assert task.model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_an_objective_reading_an_unknown_view_is_refused() -> None:
    class CaptionLM(ITMObjective):
        view = "captioning"

    with pytest.raises(ValueError, match=r"objectives\.lm.*captioning"):
        PretrainTask(make_tiny_vilt(), {"lm": CaptionLM(ITMHead(TINY_DIM))})


class _After(Callback):
    """Records the total gradient norm after Lightning's clipping step (on_before_optimizer_step runs first)."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_train_batch_end(self, trainer: Trainer, task: LightningModule, *args: object) -> None:
        grads = [p.grad.float().norm() for p in task.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack(grads))))


@pytest.mark.parametrize(
    ("precision", "fused"), [("bf16-mixed", True), ("32-true", True), ("16-mixed+scaler", False)]
)
def test_gradient_clipping_works_in_every_precision(precision: str, fused: bool) -> None:
    """The fused AdamW is used unless a GradScaler steps the optimiser (16-mixed), and clipping applies in all.

    Lightning's mixed-precision plugin refuses to clip for a fused optimiser; ObjectiveTask clips bf16
    gradients itself (no scaler) and builds the non-fused AdamW under a scaler.
    """
    torch.manual_seed(0)
    task = make_task(lr=1e-3, warmup=0)
    batch = fixed_batch()
    after = _After()
    # Lightning gives 16-mixed a GradScaler on CUDA only; the plugin with a scaler is the GPU fp16 case
    scaled = precision == "16-mixed+scaler"
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu")) if scaled else None
    trainer = Trainer(
        accelerator="cpu",
        precision=None if scaled else precision,
        plugins=[plugin] if scaled else None,
        gradient_clip_val=0.01,
        max_steps=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[after],
    )
    trainer.fit(task, train_dataloaders=DataLoader([batch, batch], batch_size=None))
    assert task.optimizers().optimizer.defaults["fused"] is fused
    assert len(after.norms) == 2 and max(after.norms) <= 0.01 * 1.001


def test_the_views_compute_only_the_rows_they_read_with_the_same_loss_and_gradients() -> None:
    """The MLM view's last layer runs for the labelled rows and [CLS] only, the ITM view's for [CLS];
    loss and gradients match full passes (ViLT is asked without ``text_rows``), and the unread rows are
    NaN."""
    torch.manual_seed(0)
    task = make_task().eval()
    batch = fixed_batch()
    assert set(task.view_rows(batch, "mlm")) == {"text_rows"}
    pruned = task.forward_model(batch)["mlm"]
    assert pruned.text_states[:, 3].isnan().all()  # unlabelled, not [CLS]
    loss = task.compute_losses(batch, "train")
    loss.backward()
    grads = {name: p.grad.clone() for name, p in task.named_parameters() if p.grad is not None}
    task.zero_grad()
    task.view_rows = lambda batch, view: {}  # type: ignore[method-assign]
    full_loss = task.compute_losses(batch, "train")
    full_loss.backward()
    torch.testing.assert_close(loss, full_loss, atol=1e-6, rtol=1e-5)
    for name, p in task.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name], p.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_wpa_on_the_mlm_view_would_get_every_row() -> None:
    """An objective that does not declare labelled-row reading keeps the full pass."""

    class ImageReadingMLM(MLMObjective):
        reads_only_labelled_text = False

    task = PretrainTask(make_tiny_vilt(), {"mlm": ImageReadingMLM(MLMHead(TINY_DIM, vocab_size=TINY_VOCAB))})
    assert task.view_rows(fixed_batch(), "mlm") == {}
    assert not task.forward_model(fixed_batch())["mlm"].image_states.isnan().any()


def test_wpa_keeps_every_row_of_the_itm_view() -> None:
    objectives = {"itm": ITMObjective(ITMHead(TINY_DIM)), "wpa": WPAObjective(iterations=10)}
    task = PretrainTask(make_tiny_vilt(), objectives, loss_weights={"wpa": 0.1})
    assert task.view_rows(fixed_batch(), "itm") == {}
    assert not task.forward_model(fixed_batch())["itm"].text_states.isnan().any()
