import pytest
import torch

from conftest import TINY_DIM, TINY_VOCAB, make_tiny_vilt
from vlp.datamodules.schema import Batch
from vlp.models.heads import ITMHead, MLMHead
from vlp.objectives import ITMObjective, MLMObjective
from vlp.tasks import PretrainTask
from vlp.tasks.optim import param_groups


def fixed_batch(size: int = 8) -> Batch:
    ids = torch.randint(5, TINY_VOCAB, (size, 8))
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    ids[:, 2] = 3  # [MASK]-like id
    return Batch(
        keys=[str(i) for i in range(size)],
        pixels=torch.randn(size, 3, 16, 16),
        pixel_mask=torch.ones(size, 16, 16, dtype=torch.bool),
        text_ids=ids,
        text_mask=torch.ones(size, 8, dtype=torch.bool),
        mlm_labels=labels,
        itm_labels=torch.arange(size) % 2,
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
    mlm = task.objectives["mlm"](outputs, batch).loss
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
