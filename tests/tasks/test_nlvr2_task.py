import torch
from finetune_parts import DIM, IMAGE, nlvr2_task, pair_batches, tiny_vilt, train_steps

from vlp.models.layers.heads import ClassifierHead
from vlp.objectives import NLVR2Objective
from vlp.tasks import NLVR2Task
from vlp.tasks.nlvr2 import grow_modality_table


def test_modality_table_grows_to_three_rows_as_official_vilt() -> None:
    model = tiny_vilt().eval()
    before = model.token_type_embeddings.weight.detach().clone()
    batch = pair_batches()[0]
    with torch.no_grad():
        pooled_type1 = model(batch.text_ids, batch.text_mask, batch.pixels, batch.pixel_mask).pooled
    task = NLVR2Task(model, {"nlvr2": NLVR2Objective(ClassifierHead(2 * DIM, 2))}).eval()
    table = task.model.token_type_embeddings.weight.detach()
    assert table.shape == (3, DIM)
    torch.testing.assert_close(table[:2], before)  # rows 0 and 1 kept
    torch.testing.assert_close(table[2], before[1])  # row 2 = row 1
    with torch.no_grad():
        as_type2 = task.model(
            batch.text_ids, batch.text_mask, batch.pixels, batch.pixel_mask, image_token_type=2
        ).pooled
    torch.testing.assert_close(as_type2, pooled_type1)  # right after growth, type 2 reads as type 1
    # an already grown model is left as it is
    again = NLVR2Task(task.model, {"nlvr2": NLVR2Objective(ClassifierHead(2 * DIM, 2))})
    torch.testing.assert_close(again.model.token_type_embeddings.weight, table)
    assert grow_modality_table(before).shape == (3, DIM)


def test_swapping_the_pair_changes_the_logits() -> None:
    task = nlvr2_task().eval()
    batch = pair_batches()[0]
    head = task.objectives["nlvr2"].head
    with torch.no_grad():
        left, right = task.forward_model(batch)
        logits = head(torch.cat([left.pooled, right.pooled], -1))
        swapped = batch.__class__(
            keys=batch.keys,
            pixels=batch.pixels_right,
            pixel_mask=batch.pixel_mask_right,
            pixels_right=batch.pixels,
            pixel_mask_right=batch.pixel_mask,
            text_ids=batch.text_ids,
            text_mask=batch.text_mask,
            pair_labels=batch.pair_labels,
        )
        left2, right2 = task.forward_model(swapped)
        logits2 = head(torch.cat([left2.pooled, right2.pooled], -1))
    torch.testing.assert_close(left2.pooled, right.pooled)  # types 1 and 2 still equal: same states
    assert (logits - logits2).abs().max() > 1e-3


def test_the_two_passes_read_left_as_type_1_and_right_as_type_2() -> None:
    task = nlvr2_task().eval()
    with torch.no_grad():
        task.model.token_type_embeddings.weight[2].add_(torch.randn(DIM))  # make the types differ
    batch = pair_batches()[0]
    with torch.no_grad():
        left, right = task.forward_model(batch)
        model = task.model
        expected = model(
            batch.text_ids, batch.text_mask, batch.pixels_right, batch.pixel_mask_right, image_token_type=2
        )
        other = model(
            batch.text_ids, batch.text_mask, batch.pixels_right, batch.pixel_mask_right, image_token_type=1
        )
    torch.testing.assert_close(right.pooled, expected.pooled)
    assert (right.pooled - other.pooled).abs().max() > 1e-4
    torch.testing.assert_close(
        left.pooled,
        model(batch.text_ids, batch.text_mask, batch.pixels, batch.pixel_mask, image_token_type=1).pooled,
    )


def test_loss_falls_on_a_fixed_batch() -> None:
    task = nlvr2_task()
    batch = pair_batches()[0]
    losses = train_steps(task, [batch], 40)
    assert losses[-1] < 0.2 * losses[0]


def test_a_label_only_the_right_image_gives_is_learnt() -> None:
    """One statement for every pair, the truth set by the right image (dark or bright), the left one
    noise: only the second pass (type 2) can tell."""
    batch = pair_batches()[0]
    size = len(batch)
    label = torch.arange(size) % 2
    batch.text_ids = batch.text_ids[:1].expand(size, -1).clone()
    batch.text_mask = batch.text_mask[:1].expand(size, -1).clone()
    batch.pixels_right = (2.0 * label - 1)[:, None, None, None] + 0.1 * torch.randn(size, 3, IMAGE, IMAGE)
    batch.pair_labels = label
    task = nlvr2_task()
    train_steps(task, [batch], 40)
    assert task.objectives["nlvr2"](task.forward_model(batch), batch).logs["nlvr2_acc"].item() == 1.0
