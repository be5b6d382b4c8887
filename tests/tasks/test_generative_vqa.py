"""ERNIE-ViLG generative VQA: the collator's texts, the answer-only loss, learning and decoding a fixed batch,
the text-only control, DDP and FSDP2 against one process, and the shapes recipe through the CLI."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import distributed_run as run
import ernie_vilg_parts as parts
import generative_vqa_distributed_run as gvqa
import pytest
import torch
import yaml
from two_process_launch import assert_same_run, two_process_results

from conftest import CONFIGS, fit_recipe, run_recipe, save_recipe_task
from vlp.datamodules import normalise_batch
from vlp.datamodules.generative_vqa import GenerativeVQACollator, target_answer
from vlp.datamodules.shards import ShardDataModule
from vlp.datamodules.transforms import ViltTransform
from vlp.datamodules.vqa import VQADecoder
from vlp.models.ernie_vilg.model import ERNIEViLG
from vlp.models.vqgan.model import VQGAN
from vlp.objectives import AnswerLM
from vlp.objectives.generative_vqa import answer_targets
from vlp.tasks.generative_vqa import GenerativeVQATask, answer_matches
from vlp.tokenizers import load_tokenizer

RECIPE = CONFIGS / "ernie_vilg/shapes_generative_vqa.yaml"
PRETRAIN = CONFIGS / "ernie_vilg/shapes_pretrain.yaml"

pytestmark = pytest.mark.filterwarnings("ignore")


# ------------------------------------------------------------------------------------------ data


def shapes_batches(root: Path, train: bool, blank_images: bool = False) -> list:
    data = ShardDataModule(
        root=str(root),
        synth=None,
        batch_size=4,
        eval_batch_size=2,
        num_workers=0,
        transform=ViltTransform(image_size=32, patch_size=8),
        decoder=VQADecoder(),
        collator=GenerativeVQACollator(max_text_len=40, max_answer_len=4, blank_images=blank_images),
    )
    data.setup("fit")
    loader = data.train_dataloader() if train else data.val_dataloader()
    return [normalise_batch(batch) for _, batch in zip(range(2), loader)]  # as the model gets them


def test_collator_writes_the_question_then_the_answer(tiny_shapes: Path) -> None:
    tokenizer = load_tokenizer()
    for train in (True, False):
        for batch in shapes_batches(tiny_shapes, train):
            assert batch.answers is None and len(batch.references) == len(batch)
            for i in range(len(batch)):
                question = batch.text_ids[i][batch.text_mask[i]].tolist()
                text = batch.caption_ids[i][batch.caption_mask[i]].tolist()
                assert question[0] == tokenizer.cls_token_id and question[-1] == tokenizer.sep_token_id
                answer = tokenizer(target_answer(batch.references[i]), add_special_tokens=False)["input_ids"]
                assert text == question + answer + [tokenizer.sep_token_id]
                assert question == tokenizer(batch.captions[i])["input_ids"]  # the question as written
                assert not batch.caption_mask[i, len(text) :].any()  # padding only at the end


def test_collator_keeps_every_question_in_evaluation_and_one_per_image_in_training(tiny_shapes: Path) -> None:
    train = shapes_batches(tiny_shapes, train=True)[0]
    val = shapes_batches(tiny_shapes, train=False)[0]
    assert len({key.rsplit("/q", 1)[0] for key in train.keys}) == len(train) == 4
    assert len(val) > 2 and len({key.rsplit("/q", 1)[0] for key in val.keys}) == 2


def test_question_budget_leaves_room_for_the_answer() -> None:
    collator = GenerativeVQACollator(max_text_len=12, max_answer_len=4)
    assert collator.question_budget == 7
    encoded = collator.tokenize(["is there a big red striped circle left of the small blue square?"])
    assert encoded["input_ids"].shape[1] == 7
    with pytest.raises(ValueError, match="max_text_len=6 leaves 1 tokens"):
        GenerativeVQACollator(max_text_len=6, max_answer_len=4)


def test_target_answer_is_the_most_common_and_matches_after_normalisation() -> None:
    assert target_answer(["two", "2 ", "two", "three"]) == "two"
    assert target_answer(["yes", "no"]) == "yes"  # a tie: the first given
    assert target_answer([]) is None
    assert answer_matches("Two.", ["two"]) and answer_matches("2", ["two"])
    assert answer_matches("the circle", ["circle"])  # articles removed, as the VQA evaluation does
    assert not answer_matches("three", ["two"]) and not answer_matches("", [])


# ------------------------------------------------------------------------------------------ loss


def test_answer_targets_are_the_answer_tokens_and_the_closing_sep() -> None:
    # rows: [CLS] q q [SEP] a [SEP] | [CLS] q [SEP] a a [SEP] [PAD] | a test question [CLS] q [SEP]
    caption_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0]]).bool()
    question_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 0]]).bool()
    expected = torch.tensor(
        [[0, 0, 0, 1, 1, 0], [0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.bool
    )  # target t + 1 of slot t
    assert torch.equal(answer_targets(caption_mask, question_mask), expected)


def test_question_and_image_positions_carry_no_loss() -> None:
    """The loss's gradient reaches the final states of exactly the slots that predict an answer token: the
    question's [SEP] and the answer's tokens; image slots and the other question slots get exactly 0."""
    task = gvqa.make_task(seed=3)
    batch = task.with_codes(gvqa.batches(1)[0])
    output = task.forward_model(batch)["image_to_text"]
    states = output.states.detach().requires_grad_(True)
    loss = task.objectives["gvqa"](replace(output, states=states), batch).loss
    loss.backward()
    grad = states.grad.abs().sum(-1)  # [B, image + text]
    image_len = output.layout.image_len
    assert torch.all(grad[:, :image_len] == 0)
    question_len = batch.text_mask.sum(1)
    for i in range(len(batch)):
        q = int(question_len[i])
        text = grad[i, image_len:]
        predicts_answer = torch.zeros_like(text, dtype=torch.bool)
        predicts_answer[q - 1 : q + 1] = True  # [SEP] -> the answer word, the word -> [SEP]
        assert torch.all(text[~predicts_answer] == 0), i
        assert torch.all(text[predicts_answer] > 0), i
    # and the loss is the mean cross-entropy of those two targets per row
    ids = batch.caption_ids
    rows = torch.arange(len(batch))
    logits = torch.stack(
        [output.model.text_logits(output.text_states[rows, question_len - 1 + k]) for k in (0, 1)]
    )
    targets = torch.stack([ids[rows, question_len + k] for k in (0, 1)])
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    torch.testing.assert_close(loss.detach(), expected)


def test_task_refuses_what_it_cannot_run() -> None:
    from vlp.objectives import TextToImageLM

    with pytest.raises(ValueError, match="reads view 'text_to_image'"):
        GenerativeVQATask(parts.tiny_model(), {"t2i": TextToImageLM()}, vqgan=parts.tiny_vqgan())
    batch = replace(gvqa.batches(1)[0], caption_ids=None)
    with pytest.raises(ValueError, match="GenerativeVQACollator"):
        gvqa.make_task().forward_model(batch)


def test_init_from_a_pretraining_run_loads_the_model_and_checks_its_vqgan(tmp_path: Path) -> None:
    pretrained = parts.ernie_task(seed=2)  # VQGAN from seed 3
    path = tmp_path / "pretrain.ckpt"
    torch.save({"state_dict": pretrained.state_dict()}, path)
    task = gvqa.make_task(seed=2, init_from=str(path))  # VQGAN from seed 3: the same
    assert task.init_report.new == [] and all(k.startswith("model.") for k in task.init_report.loaded)
    for key, value in pretrained.model.state_dict().items():
        assert torch.equal(task.model.state_dict()[key], value), key
    with pytest.raises(ValueError, match="pre-trained with another VQGAN than vqgan_checkpoint"):
        gvqa.make_task(seed=4, init_from=str(path))  # VQGAN from seed 5


# ------------------------------------------------------------------------------------ learning


def test_task_learns_a_fixed_batch_and_decodes_its_answers() -> None:
    task = gvqa.make_task(seed=0)
    batch = gvqa.batches(1)[0]
    assert len(set(batch.text_mask.sum(1).tolist())) > 1  # questions of several lengths, decoded by length
    optimizer = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=5e-3)
    losses = []
    task.train()
    for _ in range(50):
        loss = task.objectives["gvqa"](
            task.forward_model(batch)["image_to_text"], task.with_codes(batch)
        ).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.05 * losses[0]
    task.eval()
    coded = task.with_codes(batch)
    answers = task.generate_answers(coded.image_codes, coded.text_ids, coded.text_mask)
    assert answers == [refs[0] for refs in batch.references]
    task.num_beams = 3  # beam search over the same prompts
    assert task.generate_answers(coded.image_codes, coded.text_ids, coded.text_mask) == answers
    assert run.validate_alone(task, run.RankRows([], [batch]))["val/gvqa_accuracy"] == 1.0


def test_cached_decoding_equals_the_full_pass() -> None:
    """Each decoded token is the argmax of the teacher-forced pass over the question and the tokens before it."""
    task = gvqa.make_task(seed=5).eval()
    batch = task.with_codes(gvqa.batches(1, seed=4)[0])
    decoded = task.generate_answer_ids(batch.image_codes, batch.text_ids, batch.text_mask)
    for i, answer in enumerate(decoded):
        question = batch.text_ids[i][batch.text_mask[i]].tolist()
        text = torch.tensor([question + answer])
        with torch.no_grad():
            states = task.model(text, None, batch.image_codes[i : i + 1], "image_to_text").text_states
            best = task.model.text_logits(states[0, len(question) - 1 : -1]).argmax(-1).tolist()
        assert best == answer, i
        assert len(answer) == task.max_answer_len or answer[-1] == parts.SEP, i  # [SEP] ends it early


def test_blank_images_give_every_row_the_same_codes(tiny_shapes: Path) -> None:
    """The text-only control: one flag of the collator, and the image codes carry nothing about the image."""
    vqgan = VQGAN(
        resolution=32, ch=8, ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=8,
        num_codes=parts.NUM_CODES, code_dim=parts.CODE_DIM, norm_groups=4,
    )  # fmt: skip
    # 32 px at the VQGAN's factor 4: an 8x8 grid
    model = ERNIEViLG(
        vocab_size=parts.VOCAB, num_codes=parts.NUM_CODES, grid=(8, 8), dim=parts.DIM, depth=1, num_heads=4,
        max_text_len=40, kernel_size=3,
    )  # fmt: skip
    task = GenerativeVQATask(model, {"gvqa": AnswerLM()}, vqgan=vqgan)
    for blank in (False, True):
        codes = task.with_codes(shapes_batches(tiny_shapes, train=True, blank_images=blank)[0]).image_codes
        same = bool((codes == codes[:1]).all())
        assert same == blank


# --------------------------------------------------------------------------------- distributed


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    # one launch at a time: each uses both cores
    return two_process_results(Path(gvqa.__file__), tmp_path_factory, "gvqa", together=False)


@pytest.fixture(scope="module")
def single() -> dict:
    torch.set_num_threads(1)
    return gvqa.fit(1, "auto")


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_train_and_validate_as_one(strategy: str, launched: dict, single: dict) -> None:
    # tolerances of test_ernie_vilg_distributed.py: the ranks' gradients are summed in another order
    result = launched[strategy]
    assert single["losses"][-1] < single["losses"][0]
    assert any(name.startswith("vqgan.") for name in single["state"])
    assert_same_run(result, single, run.STEPS, {"rtol": 1e-5, "atol": 1e-5}, {"rtol": 1e-4, "atol": 1e-4})
    for name in ("val/gvqa_accuracy", "val/gvqa_loss", "val/gvqa_acc"):
        assert result["metrics"][name] == pytest.approx(single["metrics"][name], abs=1e-5), name


# ------------------------------------------------------------------------------------- recipe


@pytest.fixture(scope="module")
def pretrained(vqgan_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pre-training checkpoint of the ERNIE-ViLG shapes recipe (random weights, ERNIEViLGTask's layout)."""
    path = tmp_path_factory.mktemp("gvqa_recipe") / "pretrain.ckpt"
    return save_recipe_task(PRETRAIN, path, f"--model.init_args.vqgan_checkpoint={vqgan_checkpoint}")


def test_recipe_starts_from_the_pretraining_run_with_its_model_and_vqgan() -> None:
    own = yaml.safe_load(RECIPE.read_text())
    pretrain = yaml.safe_load(PRETRAIN.read_text())
    args, pretrain_args = own["model"]["init_args"], pretrain["model"]["init_args"]
    assert args["model"] == pretrain_args["model"]  # the same sizes: init_from loads every model key
    assert args["vqgan_checkpoint"] == pretrain_args["vqgan_checkpoint"]
    assert args["init_from"] == f"{pretrain['trainer']['default_root_dir']}/checkpoints/last.ckpt"
    collator = own["data"]["init_args"]["collator"]["init_args"]
    assert args["max_answer_len"] == collator["max_answer_len"] + 1  # every trained answer can be decoded
    assert (
        collator["max_text_len"]
        <= yaml.safe_load((CONFIGS / "model/ernie_vilg_shapes.yaml").read_text())["init_args"]["max_text_len"]
    )


def test_recipe_runs_two_steps_through_the_smoke_trainer(
    vqgan_checkpoint: Path,
    pretrained: Path,
    shapes64: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """configs/ernie_vilg/shapes_generative_vqa.yaml with configs/trainer/smoke.yaml, in process."""
    common = (
        f"--model.init_args.vqgan_checkpoint={vqgan_checkpoint}",
        f"--model.init_args.init_from={pretrained}",
        f"--model.init_args.predict_dir={tmp_path / 'pred'}",
    )
    metrics = ("val/gvqa_accuracy", "val/gvqa_loss")
    fit_recipe(
        capsys, metrics, RECIPE, shapes64, tmp_path, *common, "--trainer.precision=32-true", eval_batch_size=2
    )
    ckpt = f"--ckpt_path={tmp_path / 'checkpoints/last.ckpt'}"
    run_recipe("predict", RECIPE, shapes64, tmp_path, *common, ckpt, eval_batch_size=2)
    rows = (tmp_path / "pred/answers.jsonl").read_text().splitlines()
    assert rows and all('"answer": ' in row and '"question": ' in row for row in rows)
