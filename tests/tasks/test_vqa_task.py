import pytest
import torch
from finetune_parts import DIM, IMAGE, NUM_ANSWERS, tiny_vilt, train_steps, vqa_batches, vqa_task

from vlp.models.layers.heads import ClassifierHead, ITMHead
from vlp.objectives import ITMObjective, VQAObjective
from vlp.tasks import VQATask
from vlp.tasks.optim import param_groups


def test_loss_falls_and_the_vqa_score_rises_on_a_fixed_batch() -> None:
    task = vqa_task()
    batch = vqa_batches()[0]
    before = task.objectives["vqa"](task.forward_model(batch), batch).logs["vqa_score"]
    losses = train_steps(task, [batch], 100)
    assert losses[-1] < 0.3 * losses[0]  # soft targets of 1/3 keep the loss above ~0.6
    after = task.objectives["vqa"](task.forward_model(batch), batch).logs["vqa_score"]
    assert after.item() == pytest.approx(1.0) and before.item() < 0.5  # every top answer has full credit


def test_answers_only_the_image_can_give_are_learnt() -> None:
    """One question for every row, the answer set by the image (dark or bright): only a model that
    reads the image through the fusion encoder can score above 0.5."""
    batch = vqa_batches()[0]
    size = len(batch)
    label = torch.arange(size) % 2
    batch.text_ids = batch.text_ids[:1].expand(size, -1).clone()
    batch.text_mask = batch.text_mask[:1].expand(size, -1).clone()
    noise = 0.1 * torch.randn(size, 3, IMAGE, IMAGE)
    batch.pixels = (2.0 * label - 1)[:, None, None, None] + noise
    batch.answers = torch.nn.functional.one_hot(label, NUM_ANSWERS).float()
    task = vqa_task()
    train_steps(task, [batch], 40)
    assert task.objectives["vqa"](task.forward_model(batch), batch).logs["vqa_score"].item() == 1.0


def test_the_answer_head_gets_its_learning_rate_multiplier() -> None:
    task = vqa_task(lr_multipliers={"objectives.vqa": 10.0})
    groups = param_groups(task, 1e-4, 0.01, task.hparams.lr_multipliers)
    by_param = {id(p): g["lr"] for g in groups for p in g["params"]}
    for name, param in task.named_parameters():
        assert by_param[id(param)] == pytest.approx(1e-3 if name.startswith("objectives.vqa.") else 1e-4), (
            name
        )


def test_the_task_reads_the_question_with_its_own_image() -> None:
    task = vqa_task().eval()
    batch = vqa_batches()[0]
    with torch.no_grad():
        direct = task.model(batch.text_ids, batch.text_mask, batch.pixels, batch.pixel_mask).pooled
        torch.testing.assert_close(task.forward_model(batch).pooled, direct)


def test_an_objective_reading_a_pretraining_view_is_refused() -> None:
    with pytest.raises(ValueError, match=r"objectives\.itm.*one pass"):
        VQATask(
            tiny_vilt(),
            {"vqa": VQAObjective(ClassifierHead(DIM, NUM_ANSWERS)), "itm": ITMObjective(ITMHead(DIM))},
        )
