"""ERNIE-ViLG's ``python -m vlp predict``: images for the prompts, captions for the images, metrics.

For each prompt (the batch's captions) ``num_candidates`` images are sampled (temperature, top-k, top-p,
classifier-free guidance; KV-cached), reranked by the model's own image→text likelihood of the prompt (or,
with a ``reranker``, by an ITM head's match probability: :class:`~vlp.models.ernie_vilg.itm_scorer.ITMScorer`),
or, with ``contrast_weight``, by that likelihood less the weighted likelihood of the batch's other prompts),
decoded by the VQGAN and written as one PNG grid per batch and process (a row per prompt, candidates best
first; the ``labelled_*`` copy has the prompt's text left of its row), with ``captions_rank<r>.jsonl``
(one per process) holding each prompt, the candidates' scores (and, contrastive, both terms of each) and
the caption generated for the batch's real image. At the end ``generation_metrics.json`` holds the caption metrics of
those captions and, with ``judge_checkpoint`` (a shapes judge, ``configs/probe/shapes_judge.yaml``)
and/or ``inception_weights``, the generation metrics of the best candidates against the batch's real
images (:class:`~vlp.metrics.generation.GenerationEvaluation`: semantic score with its shuffled-prompt
control and the real images' ceiling, shapes Fréchet distance, Inception FID). The task's
``predict_metrics`` holds the same numbers flat (``predict/cider``, ``predict/semantic_score``, ...), for
a sweep's predict stage.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vlp.batch import Batch
from vlp.metrics.generation import GenerationEvaluation
from vlp.metrics.shapes_judge import ShapesJudge
from vlp.models.ernie_vilg.itm_scorer import ITMScorer
from vlp.models.ernie_vilg.model import ERNIEViLG
from vlp.models.ernie_vilg.sampling import Scorer, generate_images, implicit_classifier_scores, null_prompts
from vlp.tasks.e2e_base import fsdp_gathered
from vlp.tasks.predict_files import write_json, write_labelled_png, write_png
from vlp.tokenizers import load_tokenizer


class TextToImagePrediction:
    """Mixin of :class:`~vlp.tasks.text_to_image.ERNIEViLGTask`, before its LightningModule bases: the
    predict hooks (module docstring) and the image sampling they run.

    The task provides the attributes declared below: its model, frozen VQGAN and optional reranker, the
    sampling settings, the metric sources, caption decoding and the caption bookkeeping of
    :class:`~vlp.tasks.caption_evaluation.CaptionEvaluation`.
    """

    PREDICT_FILES = (
        "images_rank*_batch*.png",
        "labelled_rank*_batch*.png",
        "captions_rank*.jsonl",
        "generation_metrics.json",
    )

    model: ERNIEViLG
    vqgan: nn.Module
    reranker: ITMScorer | None
    contrast_weight: float
    rerank_reencoded: bool
    rerank_implicit: bool
    num_candidates: int
    temperature: float
    top_k: int | None
    top_p: float | None
    predict_seed: int
    guidance_scale: float
    bos_id: int
    eos_id: int
    pad_id: int
    judge_checkpoint: str | None
    inception_weights: str | None
    generation_evaluation: GenerationEvaluation | None
    tokenizer_name: str
    global_rank: int
    device: torch.device
    predict_path: Path
    encode_images: Callable[[Tensor], Tensor]
    generate_captions: Callable[[Tensor], list[str]]
    reset_captions: Callable[[], None]
    record_captions: Callable[[Batch, Sequence[str]], None]
    corpus_caption_scores: Callable[[], dict[str, float] | None]
    predict_metrics: dict[str, float]

    @torch.no_grad()
    def generate_images(
        self, text_ids: Tensor, text_mask: Tensor | None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """``num_candidates`` images per prompt, best first: pixels ``[B, n, 3, H, W]`` in [0, 1],
        scores ``[B, n]``, codes ``[B, n, h*w]`` and the scores' terms (each ``[B, n]``, in that order)."""
        null_ids = null_mask = None
        if self.guidance_scale != 1.0:
            null_ids, null_mask = null_prompts(
                text_ids.shape[0], text_ids.shape[1], self.bos_id, self.eos_id, self.pad_id, text_ids.device
            )
        with fsdp_gathered(self.model):
            sampled = generate_images(
                self.model, text_ids, text_mask, self.num_candidates,
                self.temperature, self.top_k, self.top_p, generator, scorer=self.scorer(),
                guidance_scale=self.guidance_scale, null_ids=null_ids, null_mask=null_mask,
                contrast_weight=self.contrast_weight,
                scored_codes=self.reencode if self.rerank_reencoded else None,
            )  # fmt: skip
        order = sampled.scores.argsort(dim=1, descending=True)
        codes = sampled.codes.gather(1, order[..., None].expand_as(sampled.codes))
        scores = sampled.scores.gather(1, order)
        terms = {name: term.gather(1, order) for name, term in sampled.terms.items()}
        batch, n, _ = codes.shape
        pixels = self.vqgan.decode_ids(codes.view(batch * n, *self.model.grid))
        pixels = ((pixels.clamp(-1, 1) + 1) / 2).view(batch, n, *pixels.shape[1:])
        return pixels, scores, codes, terms

    def scorer(self) -> Scorer | None:
        """What ranks the candidates: the ITM reranker, the implicit classifier, or ``None`` (the model's
        own image→text likelihood, or its contrastive form)."""
        if not self.rerank_implicit:
            return self.reranker

        def implicit(codes: Tensor, ids: Tensor, mask: Tensor | None) -> Tensor:
            null_ids, null_mask = null_prompts(
                ids.shape[0], ids.shape[1], self.bos_id, self.eos_id, self.pad_id, ids.device
            )
            return implicit_classifier_scores(self.model, codes, ids, mask, null_ids, null_mask)

        return implicit

    def reranking_name(self) -> str:
        """How :meth:`scorer` ranks, as ``generation_metrics.json`` records it."""
        if self.reranker is not None:
            name = "itm"
        elif self.rerank_implicit:
            name = "implicit classifier (text->image likelihood over the null prompt's)"
        elif self.contrast_weight > 0:
            name = f"self contrastive (weight {self.contrast_weight})"
        else:
            name = "self (image->text likelihood)"
        return name + (" on re-encoded images" if self.rerank_reencoded else "")

    @torch.no_grad()
    def reencode(self, codes: Tensor) -> Tensor:
        """Drawn codes ``[M, h*w]`` → the VQGAN's codes of the image they decode to ``[M, h*w]``."""
        pixels = self.vqgan.decode_ids(codes.view(codes.shape[0], *self.model.grid))
        return self.encode_images(pixels.clamp(-1, 1))

    def on_predict_epoch_start(self) -> None:
        self.reset_captions()
        self.generation_evaluation = None
        if self.judge_checkpoint is not None or self.inception_weights is not None:
            judge = (
                None if self.judge_checkpoint is None else ShapesJudge.from_checkpoint(self.judge_checkpoint)
            )
            self.generation_evaluation = GenerationEvaluation(judge, self.inception_weights).to(self.device)

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        """Images for the batch's captions and captions for its images, written under ``predict_dir``."""
        if batch.caption_ids is None or batch.caption_mask is None:
            raise ValueError("predict needs batch.caption_ids and batch.caption_mask (the prompts)")
        generator = torch.Generator(device=batch.caption_ids.device)
        generator.manual_seed(self.predict_seed + 100_003 * self.global_rank + batch_idx)
        pixels, scores, _, terms = self.generate_images(batch.caption_ids, batch.caption_mask, generator)
        captions = None
        if batch.pixels is not None or batch.image_codes is not None:
            codes = batch.image_codes if batch.image_codes is not None else self.encode_images(batch.pixels)
            captions = self.generate_captions(codes)
            if batch.references is not None:
                self.record_captions(batch, captions)
        folder = self.predict_path
        grid_name = f"images_rank{self.global_rank}_batch{batch_idx:05d}.png"
        write_png(folder / grid_name, pixels.flatten(0, 1), nrow=pixels.shape[1])
        prompts = load_tokenizer(self.tokenizer_name).batch_decode(
            batch.caption_ids.cpu(), skip_special_tokens=True
        )
        write_labelled_png(
            folder / f"labelled_rank{self.global_rank}_batch{batch_idx:05d}.png", pixels, prompts
        )
        records = [
            {
                "key": key,
                "prompt": prompt,
                "grid": grid_name,
                "row": row,
                "candidate_scores": [round(float(s), 4) for s in scores[row]],
                **{
                    f"candidate_{name}": [round(float(t), 4) for t in term[row]]
                    for name, term in terms.items()
                },
                "generated_caption": None if captions is None else captions[row],
            }
            for row, (key, prompt) in enumerate(zip(batch.keys, prompts))
        ]
        with (folder / f"captions_rank{self.global_rank}.jsonl").open("a") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
        if self.generation_evaluation is not None:
            real = None if batch.pixels is None else (batch.pixels.clamp(-1, 1) + 1) / 2
            self.generation_evaluation.update(pixels[:, 0], prompts, real)
        return {"records": records}

    def on_predict_epoch_end(self) -> None:
        """Caption and generation metrics of the whole prediction into ``generation_metrics.json``."""
        metrics: dict[str, Any] = {"captions": self.corpus_caption_scores()}
        if self.generation_evaluation is not None:
            metrics["generation"] = self.generation_evaluation.compute()
            metrics.update(judge_checkpoint=self.judge_checkpoint, inception_weights=self.inception_weights)
        metrics["reranker"] = self.reranking_name()
        metrics["sampling"] = {
            "num_candidates": self.num_candidates,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "guidance_scale": self.guidance_scale,
            "predict_seed": self.predict_seed,
        }
        self.predict_metrics = flat_metrics(metrics)
        if self.global_rank == 0:
            path = write_json(self.predict_path / "generation_metrics.json", metrics, indent=2)
            print(f"generation metrics ({path}): {json.dumps(metrics)}")


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of ``generation_metrics.json``'s ``captions`` and ``generation`` parts as
    ``predict/<name>`` (the sampling settings and file names are left out: they are the run's config)."""
    flat: dict[str, float] = {}
    for part in ("captions", "generation"):
        for name, value in (metrics.get(part) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                flat[f"predict/{name}"] = float(value)
    return flat
