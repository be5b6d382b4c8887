"""ERNIEViLGTask: both directions learn in one step, end to end or two-stage, evaluation, prediction."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import ernie_vilg_parts as parts
import pytest
import torch
from lightning import LightningDataModule, Trainer
from PIL import Image
from torch.utils.data import DataLoader

from vlp.datamodules.synth.scenes import COLOUR_NAMES, MAX_OBJECTS, SHAPES
from vlp.models.embedders import VQTokenEmbedder
from vlp.models.embedders.text import TextEmbedder
from vlp.models.ernie_vilg.itm_scorer import ITMScorer
from vlp.models.ernie_vilg.sampling import implicit_classifier_scores, null_prompts, prompt_log_likelihood
from vlp.models.layers.heads import ITMHead
from vlp.models.layers.transformer import TransformerEncoder
from vlp.models.vilt import ViLT
from vlp.objectives import ImageToTextLM, TextToImageLM
from vlp.tasks.text_to_image import ERNIEViLGTask

pytestmark = pytest.mark.filterwarnings("ignore")


def train_steps(task: ERNIEViLGTask, batch: Any, steps: int, lr: float = 3e-3) -> list[dict[str, float]]:
    """Plain optimisation of the task's weighted loss; the per-objective losses at each step."""
    params = [p for p in task.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    task.train()
    history = []
    for _ in range(steps):
        outputs = task.forward_model(batch)
        batch_with_codes = task.with_codes(batch)
        losses = {
            name: objective(outputs[objective.view], batch_with_codes).loss
            for name, objective in task.active_objectives.items()
        }
        total = sum(task.loss_weights[name] * loss for name, loss in losses.items())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append({name: float(loss.detach()) for name, loss in losses.items()})
    return history


def test_both_directions_learn_a_fixed_batch_in_one_step() -> None:
    task = parts.ernie_task()
    batch = parts.batches(1)[0]
    history = train_steps(task, batch, steps=40)
    for name in ("t2i", "i2t"):
        assert history[-1][name] < 0.3 * history[0][name], name
    # two-stage: the VQGAN and the mapping head are frozen and untouched
    assert not any(p.requires_grad for p in task.vqgan.parameters())
    assert not any(p.requires_grad for p in task.model.to_codebook.parameters())


def test_end_to_end_trains_the_generator_and_optionally_the_decoder() -> None:
    for train_decoder in (False, True):
        task = parts.ernie_task(end_to_end=True, train_decoder=train_decoder, bridge="direct")
        before = {k: v.clone() for k, v in task.vqgan.state_dict().items()}
        batch = parts.batches(1)[0]
        with torch.no_grad():  # images the frozen decoder can produce
            codes = torch.randint(
                0, parts.NUM_CODES, (4, *parts.GRID), generator=torch.Generator().manual_seed(3)
            )
            batch = replace(batch, pixels=task.vqgan.decode_ids(codes))
        history = train_steps(task, batch, steps=15)
        assert history[-1]["recon"] < history[0]["recon"]
        decoder_moved = any(
            not torch.equal(before[k], v)
            for k, v in task.vqgan.state_dict().items()
            if k.startswith("decoder.")
        )
        encoder_moved = any(
            not torch.equal(before[k], v)
            for k, v in task.vqgan.state_dict().items()
            if not k.startswith(("decoder.", "post_quant_conv."))
        )
        assert decoder_moved == train_decoder
        assert not encoder_moved  # the encoder and codebook stay frozen
        assert task.vqgan.training is False


def test_given_codes_are_used_instead_of_encoding() -> None:
    task = parts.ernie_task()
    batch = parts.batches(1)[0]
    codes = torch.randint(0, parts.NUM_CODES, (4, 16))
    got = task.with_codes(replace(batch, image_codes=codes))
    assert torch.equal(got.image_codes, codes)
    encoded = task.with_codes(batch).image_codes
    _, ids = task.vqgan.encode(batch.pixels)
    assert torch.equal(encoded, ids.flatten(1))


def test_bad_configurations_are_named() -> None:
    objectives = {"t2i": TextToImageLM(), "i2t": ImageToTextLM()}
    short = {"max_caption_len": 8}
    with pytest.raises(ValueError, match="grid"):
        ERNIEViLGTask(parts.tiny_model(), objectives, **short, vqgan=parts.VQGAN(resolution=32, ch=8, ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=8, num_codes=parts.NUM_CODES, code_dim=4, norm_groups=4))  # fmt: skip
    with pytest.raises(FileNotFoundError, match=r"vqgan_checkpoint .*missing\.ckpt not found"):
        ERNIEViLGTask(parts.tiny_model(), objectives, **short, vqgan_checkpoint="runs/missing.ckpt")
    with pytest.raises(ValueError, match="exactly one"):
        ERNIEViLGTask(parts.tiny_model(), objectives, **short)
    with pytest.raises(ValueError, match="train_decoder=True needs"):
        parts.ernie_task(train_decoder=True)
    with pytest.raises(
        ValueError, match=r"E2ECollator with captions: true \(data.init_args.collator.init_args.captions\)"
    ):
        task = parts.ernie_task()
        task.with_codes(replace(parts.batches(1)[0], caption_ids=None))


class Fixed(LightningDataModule):
    def __init__(self, train: list[Any], val: list[Any]) -> None:
        super().__init__()
        self.train, self.val = train, val

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=None)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=None)


def test_fast_dev_run_validates_captions_and_predict_writes_grids(tmp_path: Path) -> None:
    task = parts.ernie_task(end_to_end=True, predict_dir=str(tmp_path / "pred"), num_candidates=3, top_k=8)
    data = Fixed(parts.batches(2), parts.batches(1, seed=5))
    trainer = Trainer(
        accelerator="cpu",
        fast_dev_run=True,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, datamodule=data)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for name in (
        "train/t2i_loss",
        "train/i2t_loss",
        "train/recon_loss",
        "val/t2i_loss",
        "val/bleu_4",
        "val/cider",
    ):
        assert name in metrics, name
    assert len(task.predictions) == 4
    trainer.predict(task, datamodule=data)
    grid = Image.open(tmp_path / "pred" / "images_rank0_batch00000.png")
    assert grid.size[0] > 3 * parts.IMAGE and grid.size[1] > 4 * parts.IMAGE  # 3 candidates x 4 prompts
    labelled = Image.open(tmp_path / "pred" / "labelled_rank0_batch00000.png")
    assert labelled.size[0] > grid.size[0] and labelled.size[1] >= 4 * parts.IMAGE  # the prompts' panel added
    records = [
        json.loads(line) for line in (tmp_path / "pred" / "captions_rank0.jsonl").read_text().splitlines()
    ]
    assert [r["key"] for r in records] == data.val[0].keys
    assert all(len(r["candidate_scores"]) == 3 for r in records)
    assert all(r["candidate_scores"] == sorted(r["candidate_scores"], reverse=True) for r in records)
    assert all(isinstance(r["generated_caption"], str) for r in records)


def test_prediction_repeats_with_its_seed() -> None:
    task = parts.ernie_task(num_candidates=2).eval()
    batch = parts.batches(1)[0]
    first = task.generate_images(batch.caption_ids, batch.caption_mask, torch.Generator().manual_seed(1))
    again = task.generate_images(batch.caption_ids, batch.caption_mask, torch.Generator().manual_seed(1))
    assert torch.equal(first[2], again[2])
    assert first[0].shape == (4, 2, 3, parts.IMAGE, parts.IMAGE)
    assert float(first[0].min()) >= 0.0 and float(first[0].max()) <= 1.0


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    batch = parts.batches(1)[0]
    grads = []
    for checkpointing in (False, True):
        task = parts.ernie_task(activation_checkpointing=checkpointing)
        assert task.model.encoder.activation_checkpointing is checkpointing
        task.train()
        outputs = task.forward_model(batch)
        coded = task.with_codes(batch)
        loss = sum(obj(outputs[obj.view], coded).loss for obj in task.active_objectives.values())
        loss.backward()
        grads.append(task.model.encoder.blocks[0].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_checkpoint_loads_weights_only_and_strictly(tmp_path: Path) -> None:
    task = parts.ernie_task()
    data = Fixed(parts.batches(1), parts.batches(1, seed=5))
    trainer = Trainer(
        accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(task, datamodule=data)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert "vqgan" not in checkpoint["hyper_parameters"]
    fresh = parts.ernie_task(seed=9)
    fresh.load_state_dict(checkpoint["state_dict"])  # strict: model, VQGAN and all
    for name, value in task.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], value, msg=name)


def test_end_to_end_trains_and_validates_under_bf16_autocast() -> None:
    task = parts.ernie_task(end_to_end=True)
    trainer = Trainer(
        accelerator="cpu", precision="bf16-mixed", max_steps=3, limit_val_batches=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(task, datamodule=Fixed(parts.batches(1) * 3, parts.batches(1, seed=5)))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for name in ("train/t2i_loss", "train/i2t_loss", "train/recon_loss", "val/cider"):
        assert name in metrics and metrics[name] == metrics[name], name  # present and not NaN
    assert len(task.predictions) == 4


def test_predict_with_a_judge_writes_caption_and_generation_metrics(tmp_path: Path) -> None:
    from vlp.metrics.shapes_judge import CONFIG_KEY, ShapesJudge

    judge = ShapesJudge(list(COLOUR_NAMES), list(SHAPES), MAX_OBJECTS, channels=[4, 8], count_hidden=8)
    state = {f"judge.{k}": v for k, v in judge.state_dict().items()}
    torch.save({CONFIG_KEY: judge.config, "state_dict": state}, tmp_path / "judge.ckpt")
    task = parts.ernie_task(
        predict_dir=str(tmp_path / "pred"),
        num_candidates=2,
        judge_checkpoint=str(tmp_path / "judge.ckpt"),
        guidance_scale=2.0,
    )
    data = Fixed(parts.batches(1), parts.batches(2, seed=5))
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.predict(task, datamodule=data)
    metrics = json.loads((tmp_path / "pred" / "generation_metrics.json").read_text())
    assert {"bleu_4", "cider", "rouge_l"} <= set(metrics["captions"])
    generation = metrics["generation"]
    # the tiny batches' prompts are random words: nothing to score, every prompt counted as unscored
    assert generation["scored"] == 0 and generation["unscored"] == 8
    assert generation["shapes_fd"] >= 0  # 8 generated images against the 8 real ones
    assert metrics["judge_checkpoint"] == str(tmp_path / "judge.ckpt")
    assert metrics["sampling"] == {
        "num_candidates": 2, "temperature": 1.0, "top_k": None, "top_p": None, "guidance_scale": 2.0,
        "predict_seed": 0,
    }  # fmt: skip
    assert not any("judge" in key for key in task.state_dict())  # the judge stays out of checkpoints


def tiny_reranker(seed: int = 0, vqgan_seed: int = 1) -> ITMScorer:
    """A random ViLT over the task's VQGAN codes (``parts.tiny_vqgan(vqgan_seed)``) with an ITM head."""
    torch.manual_seed(seed)
    model = ViLT(
        TextEmbedder(vocab_size=parts.VOCAB, dim=parts.DIM, max_len=12),
        VQTokenEmbedder(parts.tiny_vqgan(vqgan_seed), dim=parts.DIM),
        TransformerEncoder(dim=parts.DIM, depth=2, num_heads=4),
    )
    scorer = ITMScorer(model, ITMHead(parts.DIM))
    torch.nn.init.normal_(scorer.head.fc.weight, std=1.0)  # spread the random scores
    return scorer


def predict_files(task: ERNIEViLGTask, folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Predict one fixed batch with ``task`` (its ``predict_dir`` is ``folder``); its
    ``generation_metrics.json`` and the records of ``captions_rank0.jsonl``."""
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.predict(task, datamodule=Fixed(parts.batches(1), parts.batches(1, seed=5)))
    metrics = json.loads((folder / "generation_metrics.json").read_text())
    records = [json.loads(line) for line in (folder / "captions_rank0.jsonl").read_text().splitlines()]
    return metrics, records


def test_an_itm_reranker_ranks_the_same_candidates_by_its_match_probability(tmp_path: Path) -> None:
    reranker = tiny_reranker()
    task = parts.ernie_task(num_candidates=3, predict_dir=str(tmp_path / "pred"), reranker=reranker).eval()
    own = parts.ernie_task(num_candidates=3).eval()  # same seed: same generator weights
    batch = parts.batches(1)[0]
    _, scores, codes, _ = task.generate_images(
        batch.caption_ids, batch.caption_mask, torch.Generator().manual_seed(1)
    )
    ids, mask = batch.caption_ids.repeat_interleave(3, 0), batch.caption_mask.repeat_interleave(3, 0)
    torch.testing.assert_close(scores.flatten(), reranker(codes.flatten(0, 1), ids, mask))
    assert torch.equal(scores, scores.sort(dim=1, descending=True).values)  # best (highest ITM score) first
    _, _, own_codes, _ = own.generate_images(
        batch.caption_ids, batch.caption_mask, torch.Generator().manual_seed(1)
    )
    # the same candidates, in another order: the reranker changes the choice, not the samples
    for row in range(4):
        assert sorted(map(tuple, codes[row].tolist())) == sorted(map(tuple, own_codes[row].tolist()))
    assert not torch.equal(codes[:, 0], own_codes[:, 0])  # here it picks differently for some prompt
    metrics, records = predict_files(task, tmp_path / "pred")
    assert metrics["reranker"] == "itm"
    assert all(max(r["candidate_scores"]) <= 0 for r in records)  # log-probabilities of a match


def test_contrastive_reranking_orders_the_same_candidates_and_writes_both_terms(tmp_path: Path) -> None:
    task = parts.ernie_task(num_candidates=3, predict_dir=str(tmp_path / "pred"), contrast_weight=1.0).eval()
    own = parts.ernie_task(num_candidates=3).eval()
    batch = parts.batches(1)[0]
    _, scores, codes, terms = task.generate_images(
        batch.caption_ids, batch.caption_mask, torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(scores, terms["log_likelihood"] - terms["contrast"])
    assert torch.equal(scores, scores.sort(dim=1, descending=True).values)
    _, _, own_codes, own_terms = own.generate_images(
        batch.caption_ids, batch.caption_mask, torch.Generator().manual_seed(1)
    )
    assert own_terms == {}
    for row in range(4):
        assert sorted(map(tuple, codes[row].tolist())) == sorted(map(tuple, own_codes[row].tolist()))
    metrics, records = predict_files(task, tmp_path / "pred")
    assert metrics["reranker"] == "self contrastive (weight 1.0)"
    for record in records:
        parts_sum = [a - b for a, b in zip(record["candidate_log_likelihood"], record["candidate_contrast"])]
        assert record["candidate_scores"] == pytest.approx(parts_sum, abs=2e-4)  # each rounded to 4 places


def test_reencoded_reranking_scores_the_vqgan_codes_of_the_decoded_candidates() -> None:
    task = parts.ernie_task(num_candidates=3, rerank_reencoded=True).eval()
    batch = parts.batches(1)[0]
    _, scores, codes, _ = task.generate_images(
        batch.caption_ids, batch.caption_mask, torch.Generator().manual_seed(1)
    )
    drawn = codes.flatten(0, 1)
    seen = task.reencode(drawn)
    assert seen.shape == drawn.shape and not torch.equal(seen, drawn)  # encode(decode(c)) is not c
    ids, mask = batch.caption_ids.repeat_interleave(3, 0), batch.caption_mask.repeat_interleave(3, 0)
    torch.testing.assert_close(scores.flatten(), prompt_log_likelihood(task.model, seen, ids, mask))


def test_implicit_classifier_reranking_scores_by_the_prompt_over_the_null_prompt(tmp_path: Path) -> None:
    task = parts.ernie_task(num_candidates=3, predict_dir=str(tmp_path / "pred"), rerank_implicit=True).eval()
    batch = parts.batches(1)[0]
    _, scores, codes, _ = task.generate_images(
        batch.caption_ids, batch.caption_mask, torch.Generator().manual_seed(1)
    )
    ids, mask = batch.caption_ids.repeat_interleave(3, 0), batch.caption_mask.repeat_interleave(3, 0)
    null_ids, null_mask = null_prompts(ids.shape[0], ids.shape[1], task.bos_id, task.eos_id, task.pad_id)
    expected = implicit_classifier_scores(task.model, codes.flatten(0, 1), ids, mask, null_ids, null_mask)
    torch.testing.assert_close(scores.flatten(), expected)
    metrics, _ = predict_files(task, tmp_path / "pred")
    assert metrics["reranker"].startswith("implicit classifier")
    with pytest.raises(ValueError, match="rerank_implicit"):
        parts.ernie_task(rerank_implicit=True, contrast_weight=1.0)


def test_contrastive_reranking_refuses_a_negative_weight_and_an_itm_reranker() -> None:
    with pytest.raises(ValueError, match="contrast_weight must be >= 0"):
        parts.ernie_task(contrast_weight=-0.5)
    with pytest.raises(ValueError, match="not both"):
        parts.ernie_task(contrast_weight=1.0, reranker=tiny_reranker())


def test_checkpoints_leave_the_reranker_out_and_load_strictly_with_one(tmp_path: Path) -> None:
    data = Fixed(parts.batches(1), parts.batches(1, seed=5))
    kwargs = dict(
        accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    for name, reranker in (("plain", None), ("with", tiny_reranker())):
        task = parts.ernie_task(reranker=reranker)
        trainer = Trainer(**kwargs)
        trainer.fit(task, datamodule=data)
        trainer.save_checkpoint(tmp_path / f"{name}.ckpt")
        checkpoint = torch.load(tmp_path / f"{name}.ckpt", weights_only=True)
        assert not any(k.startswith("reranker.") for k in checkpoint["state_dict"]), name
        assert "reranker" not in checkpoint["hyper_parameters"]
    # a generator trained without a reranker predicts with one: its weights load strictly, the reranker's stay
    reranker = tiny_reranker(seed=4)
    before = {k: v.clone() for k, v in reranker.state_dict().items()}
    fresh = parts.ernie_task(seed=9, num_candidates=2, predict_dir=str(tmp_path / "pred"), reranker=reranker)
    Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False).predict(
        fresh, datamodule=data, ckpt_path=tmp_path / "plain.ckpt"
    )
    trained = torch.load(tmp_path / "plain.ckpt", weights_only=True)["state_dict"]
    for key, value in trained.items():
        torch.testing.assert_close(fresh.state_dict()[key], value, msg=key)
    for key, value in before.items():
        torch.testing.assert_close(fresh.reranker.state_dict()[key], value, msg=key)
    bad = dict(trained, **{"reranker.head.fc.bias": torch.zeros(2)})
    with pytest.raises(KeyError, match="never saves them"):
        fresh.on_load_checkpoint({"state_dict": bad})


def test_a_reranker_over_other_codes_is_refused() -> None:
    torch.manual_seed(0)
    other = ViLT(
        TextEmbedder(vocab_size=parts.VOCAB, dim=parts.DIM, max_len=12),
        VQTokenEmbedder(
            parts.VQGAN(
                resolution=32,
                ch=8,
                ch_mult=(1, 1, 2),
                num_res_blocks=1,
                attn_resolutions=(),
                z_channels=8,
                num_codes=parts.NUM_CODES,
                code_dim=4,
                norm_groups=4,
            ),
            dim=parts.DIM,
        ),
        TransformerEncoder(dim=parts.DIM, depth=1, num_heads=4),
    )
    with pytest.raises(ValueError, match=r"the reranker reads 16 codes on a \(8, 8\) grid"):
        parts.ernie_task(reranker=ITMScorer(other, ITMHead(parts.DIM)))


def test_prompt_dropout_feeds_the_null_prompt_to_text_to_image_in_training_only() -> None:
    task = parts.ernie_task(prompt_dropout=0.999)
    batch = parts.batches(1)[0]
    seen: dict[str, list[torch.Tensor]] = {}
    forward = task.model.forward

    def spy(text_ids: torch.Tensor, text_mask: torch.Tensor, codes: torch.Tensor, view: str) -> Any:
        seen.setdefault(view, []).append(text_ids)
        return forward(text_ids, text_mask, codes, view)

    task.model.forward = spy  # type: ignore[method-assign]
    task.train()
    task.forward_model(batch)
    null_row = [parts.CLS, parts.SEP] + [parts.PAD] * (batch.caption_ids.shape[1] - 2)
    assert seen["text_to_image"][0].tolist() == [null_row] * batch.caption_ids.shape[0]
    assert torch.equal(seen["image_to_text"][0], batch.caption_ids)  # the caption stays the i2t target
    task.eval()
    task.forward_model(batch)
    assert torch.equal(seen["text_to_image"][1], batch.caption_ids)  # validation reads the real prompts
    for bad, match in (
        ({"prompt_dropout": 1.0}, "prompt_dropout"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
    ):
        with pytest.raises(ValueError, match=match):
            parts.ernie_task(**bad)


def test_prompt_dropout_rows_follow_the_rate() -> None:
    task = parts.ernie_task(prompt_dropout=0.25).train()
    ids = torch.full((4000, 6), 7)
    torch.manual_seed(0)
    dropped, mask = task.prompts_with_dropout(ids, torch.ones_like(ids, dtype=torch.bool))
    share = float((dropped[:, 2] == parts.PAD).float().mean())
    assert abs(share - 0.25) < 0.03  # 4000 draws: the standard error is 0.007
    assert torch.equal(mask[:, :2], torch.ones(4000, 2, dtype=torch.bool))
    assert torch.equal(mask[:, 2], dropped[:, 2] != parts.PAD)


def test_guided_sampling_at_scale_0_ignores_the_prompt() -> None:
    task = parts.ernie_task(num_candidates=2, guidance_scale=0.0).eval()
    batch = parts.batches(1)[0]
    other = parts.batches(1, seed=9)[0].caption_ids
    first = task.generate_images(batch.caption_ids, batch.caption_mask, torch.Generator().manual_seed(1))
    again = task.generate_images(
        other, torch.ones_like(other, dtype=torch.bool), torch.Generator().manual_seed(1)
    )
    assert not torch.equal(other, batch.caption_ids)
    candidates = lambda codes: [sorted(row) for row in codes.tolist()]  # noqa: E731
    assert candidates(first[2]) == candidates(again[2])  # the same draws; the prompt-scored ranks may differ
    task.guidance_scale = 3.0
    guided = task.generate_images(batch.caption_ids, batch.caption_mask, torch.Generator().manual_seed(1))
    assert not torch.equal(guided[2], first[2])
