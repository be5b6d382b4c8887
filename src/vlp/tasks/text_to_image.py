"""ERNIE-ViLG pre-training: text→image and image→text LM in one step, optionally end to end.

The task holds an :class:`~vlp.models.ernie_vilg.model.ERNIEViLG` and a VQGAN (:class:`vlp.models.vqgan.model.VQGAN`,
given as a module or read from a ``VQGANTask`` checkpoint). Each step the frozen VQGAN encodes the
batch's images into code ids (unless the batch carries ``image_codes`` already), then one pass per
direction the active objectives read (views ``"text_to_image"``, ``"image_to_text"``) runs over the
same transformer; the loss is ``sum(weight * objective)`` with real weights.

**Two-stage vs end-to-end.** Two-stage (the default) trains the generator on frozen VQGAN codes.
End-to-end adds a :class:`~vlp.objectives.ReconstructionObjective` with a non-zero weight: the
image-slot states of the text→image pass are mapped into the codebook space and decoded by the VQGAN
decoder, and the pixel loss trains the generator (and the decoder too with ``train_decoder``). With
that objective absent or weighted 0, :attr:`ERNIEViLG.to_codebook` gets no gradient and is frozen.

**Evaluation.** Validation/test log the losses and decode a caption for every image (greedy, or beam
search with ``num_beams > 1``) scored against all references at the epoch's end
(:func:`vlp.metrics.captioning.caption_scores`: ``val/bleu_4``, ``val/cider`` ...), gathered across
processes as :class:`~vlp.tasks.captioning.CaptioningTask` does.

**Prediction** (``python -m vlp predict``): images sampled for the batch's captions, reranked, written as
PNG grids with the captions generated for its images, and generation metrics
(:mod:`vlp.tasks.text_to_image_predict`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from vlp.batch import Batch
from vlp.metrics.generation import GenerationEvaluation
from vlp.models.ernie_vilg.itm_scorer import ITMScorer
from vlp.models.ernie_vilg.model import ERNIEViLG, ERNIEViLGOutput
from vlp.models.ernie_vilg.sampling import caption_images, null_prompts
from vlp.objectives.base import Objective
from vlp.objectives.reconstruction import ReconstructionObjective
from vlp.tasks.base import check_views
from vlp.tasks.caption_evaluation import CaptionEvaluation
from vlp.tasks.e2e_base import fsdp_gathered
from vlp.tasks.text_to_image_predict import TextToImagePrediction
from vlp.tasks.vqgan_codes import VQGANCodesTask, load_vqgan
from vlp.tokenizers import BUNDLED, load_tokenizer

VIEWS = ("text_to_image", "image_to_text")


def check_settings(
    objectives: Mapping[str, Objective],
    model: ERNIEViLG,
    num_beams: int,
    num_candidates: int,
    max_caption_len: int,
) -> None:
    """The objectives read the task's views; the decoding and sampling settings are in range."""
    check_views(objectives, VIEWS, f"ERNIEViLGTask runs {list(VIEWS)}")
    if num_beams < 1 or num_candidates < 1:
        raise ValueError(f"num_beams and num_candidates must be >= 1, got {num_beams}, {num_candidates}")
    if not 2 <= max_caption_len <= model.max_text_len:
        raise ValueError(
            f"max_caption_len must be in [2, model.max_text_len = {model.max_text_len}], got {max_caption_len}"
        )


class ERNIEViLGTask(TextToImagePrediction, CaptionEvaluation, VQGANCodesTask):
    """ERNIE-ViLG training, caption evaluation and image generation (module docstring).

    Data: batches with ``pixels`` (normalised to [-1, 1], the VQGAN's range), ``caption_ids`` /
    ``caption_mask`` (``[CLS] .. [SEP]``: the text→image source and the image→text target) and, for
    evaluation, ``references`` (:class:`~vlp.datamodules.e2e.E2ECollator` with ``captions: true``).

    Args:
        model: the assembly; its ``num_codes``/``grid`` (and ``code_dim`` end to end) must be the VQGAN's.
        objectives: read the views ``text_to_image`` (:class:`~vlp.objectives.TextToImageLM`,
            :class:`~vlp.objectives.ReconstructionObjective`) and ``image_to_text``
            (:class:`~vlp.objectives.ImageToTextLM`).
        vqgan, vqgan_checkpoint: the VQGAN module, or where to read it
            (:func:`~vlp.tasks.vqgan_codes.load_vqgan`): a ``VQGANTask`` checkpoint, a zoo name
            (``zoo:vqgan:<tag>``) or a pretrained folder.
        train_decoder: end to end, let the reconstruction loss train the VQGAN decoder (and
            ``post_quant_conv``) too; one process or DDP, not FSDP2 (the VQGAN is kept whole there).
        tokenizer: decodes captions; its ``[CLS]``/``[SEP]``/``[PAD]`` are BOS/EOS/padding.
        num_beams, length_penalty, max_caption_len: image→text decoding (greedy when ``num_beams=1``).
        meteor: score METEOR (``None``: when Java is available).
        predict_dir: where ``predict`` writes its PNG grids, ``captions_rank<r>.jsonl`` and
            ``generation_metrics.json`` (one grid per batch and process, one captions file per process);
            ``None``: ``<trainer.default_root_dir>/predictions``.
        num_candidates, temperature, top_k, top_p: text→image sampling in ``predict``.
        predict_seed: seeds the sampling generator (per batch and process), so predictions repeat.
        prompt_dropout: the share of training rows whose text→image pass reads the null prompt
            ``[CLS] [SEP]`` instead of the caption (the image→text pass keeps the caption), so that the
            model also learns the unconditional code distribution classifier-free guidance needs.
        guidance_scale: classifier-free guidance of ``predict``'s sampling
            (:func:`~vlp.models.ernie_vilg.sampling.sample_image_codes`); 1 is plain conditional sampling.
            Above 1 it needs a model trained with ``prompt_dropout``.
        judge_checkpoint: a :class:`~vlp.tasks.shapes_judge.ShapesJudgeTask` checkpoint; ``predict`` then
            reports the semantic score and shapes Fréchet distance of its images.
        inception_weights: local path of the FID Inception weights; ``predict`` then reports the FID.
        reranker: ranks ``predict``'s candidates by its ITM match probability instead of the model's own
            image→text likelihood (a frozen part with its own weights, e.g.
            ``configs/ernie_vilg/shapes_itm_reranker_scorer.yaml``). It is not trained and not saved in
            this task's checkpoints; loading one restores the reranker as constructed.
        contrast_weight: ``w > 0`` ranks ``predict``'s candidates by ``log p(prompt | image) - w *``
            the log-mean-exp of ``log p(p | image)`` over the batch's distinct prompts ``p`` (``w = 1``:
            their pointwise mutual information; :func:`~vlp.models.ernie_vilg.sampling.contrastive_terms`),
            which discounts images that fit any prompt. Both terms are written per candidate. Costs one
            image→text pass per candidate and distinct prompt of the batch; not with a ``reranker``.
        rerank_implicit: rank ``predict``'s candidates by ``log p(image | prompt) - log p(image | null
            prompt)`` under the text→image direction
            (:func:`~vlp.models.ernie_vilg.sampling.implicit_classifier_scores`), the classifier that
            guidance implies; needs ``prompt_dropout`` in training. Not with a ``reranker`` or
            ``contrast_weight``.
        rerank_reencoded: score each candidate on the VQGAN's codes of its decoded image (what it looks
            like) instead of the drawn codes, which the decoder may render differently from how the
            scorer reads them.
        Others: as :class:`~vlp.tasks.base.ObjectiveTask`.
    """

    # FSDP2 keeps the frozen reranker whole too: it is loaded from the same file on every process
    WHOLE_PREFIXES: ClassVar[tuple[str, ...]] = ("vqgan.", "reranker.")

    def __init__(
        self,
        model: ERNIEViLG,
        objectives: dict[str, Objective],
        *args: Any,
        vqgan: nn.Module | None = None,
        vqgan_checkpoint: str | None = None,
        train_decoder: bool = False,
        tokenizer: str = BUNDLED,
        num_beams: int = 1,
        length_penalty: float = 0.0,
        max_caption_len: int = 30,
        meteor: bool | None = None,
        num_candidates: int = 4,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        predict_seed: int = 0,
        prompt_dropout: float = 0.0,
        guidance_scale: float = 1.0,
        judge_checkpoint: str | None = None,
        inception_weights: str | None = None,
        reranker: ITMScorer | None = None,
        contrast_weight: float = 0.0,
        rerank_implicit: bool = False,
        rerank_reencoded: bool = False,
        **kwargs: Any,
    ) -> None:
        if not isinstance(model, ERNIEViLG):
            raise ValueError(f"model must be an ERNIEViLG, got {type(model).__name__}")
        super().__init__(model, objectives, *args, **kwargs)
        for saved in (self.hparams, self._hparams_initial):  # a module, not a hyperparameter
            saved.pop("vqgan", None)
            saved.pop("reranker", None)
        check_settings(self.objectives, model, num_beams, num_candidates, max_caption_len)
        if not 0.0 <= prompt_dropout < 1.0:
            raise ValueError(f"prompt_dropout must be in [0, 1), got {prompt_dropout}")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if contrast_weight < 0:
            raise ValueError(f"contrast_weight must be >= 0, got {contrast_weight}")
        if contrast_weight > 0 and reranker is not None:
            raise ValueError(
                "contrast_weight reweights the model's own likelihood: set it or a reranker, not both"
            )
        if rerank_implicit and (reranker is not None or contrast_weight > 0):
            raise ValueError(
                "rerank_implicit is a reranking of its own: not with a reranker or contrast_weight"
            )
        self.contrast_weight, self.rerank_reencoded = contrast_weight, rerank_reencoded
        self.rerank_implicit = rerank_implicit
        self.setup_vqgan(load_vqgan(vqgan, vqgan_checkpoint), train_decoder)
        self.reranker = reranker
        if reranker is not None:
            self.check_reranker(reranker)
        self.tokenizer_name = tokenizer
        self.num_beams, self.length_penalty, self.max_caption_len = num_beams, length_penalty, max_caption_len
        self.meteor = meteor
        self.num_candidates, self.temperature = num_candidates, temperature
        self.top_k, self.top_p = top_k, top_p
        self.predict_seed = predict_seed
        self.prompt_dropout, self.guidance_scale = prompt_dropout, guidance_scale
        self.judge_checkpoint, self.inception_weights = judge_checkpoint, inception_weights
        self.generation_evaluation: GenerationEvaluation | None = None  # built when predict starts
        tok = load_tokenizer(tokenizer)
        self.bos_id, self.eos_id, self.pad_id = tok.cls_token_id, tok.sep_token_id, tok.pad_token_id
        self.reset_captions()

    # ----------------------------------------------------------------------------------- set-up

    def setup_vqgan(self, vqgan: nn.Module, train_decoder: bool) -> None:
        """Hold ``vqgan`` frozen and in eval mode, its decoder trainable with ``train_decoder`` (end to end
        only); two-stage, the model's ``to_codebook`` is frozen too, as nothing reaches it."""
        self.vqgan = vqgan
        self.check_vqgan()
        self.train_decoder = train_decoder
        if train_decoder and not self.end_to_end:
            raise ValueError(
                "train_decoder=True needs a ReconstructionObjective with a non-zero weight (end to end)"
            )
        self.vqgan.requires_grad_(False)
        if train_decoder:
            self.vqgan.decoder.requires_grad_(True)
            self.vqgan.post_quant_conv.requires_grad_(True)
        if not self.end_to_end and self.model.to_codebook is not None:
            self.model.to_codebook.requires_grad_(False)  # nothing reaches it (DDP refuses unused parameters)
        self.vqgan.eval()

    def check_vqgan(self) -> None:
        model, vqgan = self.model, self.vqgan
        self.check_vqgan_grid(vqgan)
        if self.end_to_end and model.code_dim != vqgan.code_dim:
            raise ValueError(
                f"end to end: model.code_dim ({model.code_dim}) must be the VQGAN's code_dim ({vqgan.code_dim})"
            )

    def check_reranker(self, reranker: ITMScorer) -> None:
        model = self.model
        if not isinstance(reranker, ITMScorer):
            raise ValueError(f"reranker must be an ITMScorer, got {type(reranker).__name__}")
        if reranker.num_codes != model.num_codes or tuple(reranker.grid) != tuple(model.grid):
            raise ValueError(
                f"the reranker reads {reranker.num_codes} codes on a {tuple(reranker.grid)} grid, the model "
                f"generates {model.num_codes} on {tuple(model.grid)}: its VQGAN must be the task's"
            )

    @property
    def end_to_end(self) -> bool:
        """Whether a reconstruction objective trains through the VQGAN decoder."""
        return any(isinstance(o, ReconstructionObjective) for o in self.active_objectives.values())

    # ---------------------------------------------------------------------------------- training

    def check_text_fields(self, batch: Batch) -> None:
        if batch.caption_ids is None or batch.caption_mask is None:
            raise ValueError(
                "ERNIEViLGTask needs batch.caption_ids and batch.caption_mask: read the data with an "
                "E2ECollator with captions: true (data.init_args.collator.init_args.captions)"
            )

    def decode_latents(self, latents: Tensor) -> Tensor:
        """VQGAN decoder on ``[B, code_dim, h, w]`` latents → pixels (the end-to-end path)."""
        return self.vqgan.decode(latents)

    def prompts_with_dropout(self, text_ids: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
        """In training, each row replaced by the null prompt with probability ``prompt_dropout``."""
        if not self.training or self.prompt_dropout == 0.0:
            return text_ids, text_mask
        drop = torch.rand(text_ids.shape[0], device=text_ids.device) < self.prompt_dropout
        null_ids, null_mask = null_prompts(
            text_ids.shape[0], text_ids.shape[1], self.bos_id, self.eos_id, self.pad_id, text_ids.device
        )
        return (
            torch.where(drop[:, None], null_ids, text_ids),
            torch.where(drop[:, None], null_mask.to(text_mask.dtype), text_mask),
        )

    def forward_model(self, batch: Batch) -> dict[str, ERNIEViLGOutput]:
        batch = self.with_codes(batch)
        views = {objective.view for objective in self.active_objectives.values()}
        outputs = {}
        for view in VIEWS:
            if view not in views:
                continue
            text_ids, text_mask = batch.caption_ids, batch.caption_mask
            if view == "text_to_image":
                text_ids, text_mask = self.prompts_with_dropout(text_ids, text_mask)
            outputs[view] = self.model(text_ids, text_mask, batch.image_codes, view)
        if self.end_to_end:
            codebook = self.vqgan.quantize.embedding.weight.detach()
            outputs["text_to_image"] = replace(
                outputs["text_to_image"], decode_latents=self.decode_latents, codebook=codebook
            )
        return outputs

    def compute_losses(self, batch: Batch, stage: str) -> Tensor:
        return super().compute_losses(self.with_codes(batch), stage)

    # -------------------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def generate_captions(self, image_codes: Tensor) -> list[str]:
        """Captions for code grids ``[B, h*w]`` with the task's decoding settings."""
        with fsdp_gathered(self.model):
            output = caption_images(
                self.model, image_codes, self.bos_id, self.eos_id, self.pad_id,
                self.max_caption_len, self.num_beams, self.length_penalty,
            )  # fmt: skip
        return load_tokenizer(self.tokenizer_name).batch_decode(
            output.sequences.cpu(), skip_special_tokens=True
        )

    def evaluate(self, batch: Batch, stage: str) -> None:
        batch = self.with_codes(batch)
        self.compute_losses(batch, stage)
        self.record_captions(batch, self.generate_captions(batch.image_codes))

    # ------------------------------------------------------------------------------- checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The reranker is a fixed part with its own checkpoint: its weights are not saved here."""
        super().on_save_checkpoint(checkpoint)
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("reranker.")]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint holds no reranker weights (:meth:`on_save_checkpoint`): the reranker keeps the ones
        it was built with, so strict loading checks every other key as usual."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict")
        if self.reranker is None or state is None:
            return
        if any(k.startswith("reranker.") for k in state):
            raise KeyError("the checkpoint holds 'reranker.*' weights; ERNIEViLGTask never saves them")
        state.update({f"reranker.{k}": v for k, v in self.reranker.state_dict().items()})
