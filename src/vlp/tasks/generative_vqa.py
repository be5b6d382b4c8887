"""ERNIE-ViLG generative VQA (its FMIQA experiment): the answer is written by the image→text direction.

The frozen VQGAN turns each row's image into codes; the image→text pass of the
:class:`~vlp.models.ernie_vilg.model.ERNIEViLG` reads ``[image codes; [CLS] question [SEP] answer [SEP]]``
under the model's own UniLM mask, and :class:`~vlp.objectives.generative_vqa.AnswerLM` trains it on the
answer tokens only (data: :class:`~vlp.datamodules.generative_vqa.GenerativeVQACollator`).

**Evaluation** decodes an answer after each prompt ``[image codes; [CLS] question [SEP]]`` with the
model's KV cache (greedy, or beam search with ``num_beams > 1``; questions of one length are decoded
together, so no prompt holds padding) and logs ``val/gvqa_accuracy`` (``test/`` in ``test``): the share
of answered questions whose decoded answer equals the :func:`~vlp.datamodules.generative_vqa.target_answer`
(the one most annotators gave; shapes: the answer) after the official VQA answer processing
(:func:`~vlp.datamodules.convert.vqa_answers.normalize_answer`: lower case, punctuation and articles
removed, number words to digits), summed over processes.

**Text-only control**: the collator's ``blank_images: true`` blanks every image of every split, so every
row gets the codes of one grey image and the answer can only come from the question.

``predict`` writes ``answers.jsonl`` under ``predict_dir``: ``{"key", "question", "answer"}`` per question.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from vlp.batch import Batch
from vlp.datamodules.convert.vqa_answers import normalize_answer
from vlp.datamodules.generative_vqa import target_answer
from vlp.models.ernie_vilg.model import ERNIEViLG, ERNIEViLGOutput
from vlp.models.ernie_vilg.sampling import caption_images
from vlp.objectives.base import Objective
from vlp.tasks.base import check_views
from vlp.tasks.e2e_base import fsdp_gathered
from vlp.tasks.predict_files import Row, RowPredictionWriter, batch_texts, write_jsonl
from vlp.tasks.vqgan_codes import VQGANCodesTask, load_vqgan
from vlp.tokenizers import BUNDLED, load_tokenizer

VIEW = "image_to_text"


def answer_matches(prediction: str, answers: list[str]) -> bool:
    """Whether ``prediction`` is the :func:`target_answer` of ``answers``, both normalised."""
    target = target_answer(answers)
    return target is not None and normalize_answer(prediction) == normalize_answer(target)


class GenerativeVQATask(RowPredictionWriter, VQGANCodesTask):
    """Generative VQA with ERNIE-ViLG (module docstring).

    Args:
        model: the ERNIE-ViLG assembly; ``num_codes`` and ``grid`` must be the VQGAN's. Recipes start it
            from a pre-training run (``init_from``).
        objectives: read the ``image_to_text`` view (:class:`~vlp.objectives.AnswerLM`).
        vqgan, vqgan_checkpoint: the frozen VQGAN module, or where to read it
            (:func:`~vlp.tasks.vqgan_codes.load_vqgan`: a ``VQGANTask`` checkpoint, a zoo name or a folder).
        tokenizer: decodes answers; its ``[CLS]``/``[SEP]``/``[PAD]`` are BOS/EOS/padding.
        num_beams, length_penalty: answer decoding (greedy when ``num_beams=1``).
        max_answer_len: tokens decoded after the question, the closing ``[SEP]`` included (the
            collator's ``max_answer_len`` + 1 decodes every answer it trains on).
        Others: as :class:`~vlp.tasks.base.ObjectiveTask`.
    """

    PREDICT_FILES = ("answers.jsonl",)

    def __init__(
        self,
        model: ERNIEViLG,
        objectives: dict[str, Objective],
        *args: Any,
        vqgan: nn.Module | None = None,
        vqgan_checkpoint: str | None = None,
        tokenizer: str = BUNDLED,
        num_beams: int = 1,
        length_penalty: float = 0.0,
        max_answer_len: int = 9,
        **kwargs: Any,
    ) -> None:
        if not isinstance(model, ERNIEViLG):
            raise ValueError(f"model must be an ERNIEViLG, got {type(model).__name__}")
        super().__init__(model, objectives, *args, **kwargs)
        for saved in (self.hparams, self._hparams_initial):  # a module, not a hyperparameter
            saved.pop("vqgan", None)
        check_views(self.objectives, (VIEW,), f"GenerativeVQATask runs the {VIEW} pass only")
        if num_beams < 1 or max_answer_len < 1:
            raise ValueError(f"num_beams and max_answer_len must be >= 1, got {num_beams}, {max_answer_len}")
        self.setup_vqgan(load_vqgan(vqgan, vqgan_checkpoint))
        self.check_pretraining_vqgan(getattr(self, "_init_vqgan_state", {}))
        self._init_vqgan_state: dict[str, Tensor] = {}
        self.tokenizer_name = tokenizer
        self.num_beams, self.length_penalty, self.max_answer_len = num_beams, length_penalty, max_answer_len
        tok = load_tokenizer(tokenizer)
        self.bos_id, self.eos_id, self.pad_id = tok.cls_token_id, tok.sep_token_id, tok.pad_token_id
        self.gvqa_accuracy = MeanMetric()

    # ----------------------------------------------------------------------------------- set-up

    def setup_vqgan(self, vqgan: nn.Module) -> None:
        """Hold ``vqgan`` frozen in eval mode; the model's ``to_codebook`` head (end-to-end pre-training
        only) gets no gradient here and is frozen too (DDP refuses unused parameters)."""
        self.check_vqgan_grid(vqgan)
        self.vqgan = vqgan.requires_grad_(False).eval()
        if self.model.to_codebook is not None:
            self.model.to_codebook.requires_grad_(False)

    def adapt_init_state(self, state: dict[str, Tensor]) -> dict[str, str]:
        """Keep the ``init_from`` checkpoint's VQGAN weights (the task's VQGAN is built after the
        checkpoint is read) for :meth:`check_pretraining_vqgan`; the state itself is left as it is."""
        self._init_vqgan_state = {
            k.removeprefix("vqgan."): v for k, v in state.items() if k.startswith("vqgan.")
        }
        return {}

    def check_pretraining_vqgan(self, pretrained: dict[str, Tensor]) -> None:
        """Refuse a VQGAN whose encoder or codebook differs from the one the ``init_from`` run was trained
        with (when its checkpoint holds one): the model's code embeddings would mean other image parts.
        The decoder is not compared (this task never decodes; end-to-end pre-training may train it)."""
        own = self.vqgan.state_dict()
        compared = [k for k in pretrained if not k.startswith(("decoder.", "post_quant_conv."))]
        differ = [k for k in compared if k not in own or not torch.equal(own[k].cpu(), pretrained[k].cpu())]
        if differ:
            raise ValueError(
                f"init_from: the checkpoint was pre-trained with another VQGAN than vqgan_checkpoint "
                f"(vqgan.{differ[0]} differs, {len(differ)} tensors in all): give the pre-training run's "
                "vqgan_checkpoint"
            )

    # ---------------------------------------------------------------------------------- training

    def check_text_fields(self, batch: Batch) -> None:
        if batch.caption_ids is None or batch.caption_mask is None or batch.text_ids is None:
            raise ValueError(
                "GenerativeVQATask needs batch.text_ids (the question) and batch.caption_ids/caption_mask "
                "(question and answer): read the data with vlp.datamodules.generative_vqa.GenerativeVQACollator"
            )

    def forward_model(self, batch: Batch) -> dict[str, ERNIEViLGOutput]:
        batch = self.with_codes(batch)
        return {VIEW: self.model(batch.caption_ids, batch.caption_mask, batch.image_codes, VIEW)}

    # -------------------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def generate_answer_ids(
        self, image_codes: Tensor, question_ids: Tensor, question_mask: Tensor
    ) -> list[list[int]]:
        """The token ids decoded after each question ``[CLS] q [SEP]`` (rows of ``question_ids``, real tokens
        where ``question_mask``) given its code grid, up to and including ``[SEP]`` (all ``max_answer_len``
        when it never came), with the task's decoding settings."""
        lengths = question_mask.sum(dim=1).tolist()
        answers: list[list[int]] = [[] for _ in lengths]
        with fsdp_gathered(self.model):
            for length in sorted(set(lengths)):
                max_len = min(length + self.max_answer_len, self.model.max_text_len)
                if max_len <= length:
                    raise ValueError(
                        f"a question of {length} tokens leaves no room for an answer in the model's "
                        f"max_text_len={self.model.max_text_len}: lower the collator's max_text_len"
                    )
                rows = [i for i, n in enumerate(lengths) if n == length]
                index = torch.tensor(rows, device=question_ids.device)
                output = caption_images(
                    self.model, image_codes[index], self.bos_id, self.eos_id, self.pad_id, max_len,
                    self.num_beams, self.length_penalty, prompt=question_ids[index, :length],
                )  # fmt: skip
                ends = output.lengths.tolist()
                for row, sequence, end in zip(rows, output.sequences.tolist(), ends):
                    answers[row] = sequence[length:end]
        return answers

    def generate_answers(self, image_codes: Tensor, question_ids: Tensor, question_mask: Tensor) -> list[str]:
        """:meth:`generate_answer_ids` as text."""
        ids = self.generate_answer_ids(image_codes, question_ids, question_mask)
        return load_tokenizer(self.tokenizer_name).batch_decode(ids, skip_special_tokens=True)

    def evaluate(self, batch: Batch, stage: str) -> None:
        """Losses, then an answer decoded for every answered question, scored against its answers (a batch of
        test questions alone, without answers, is skipped)."""
        if batch.references is None:
            raise ValueError("generative VQA evaluation needs batch.references (each question's answers)")
        rows = [i for i, answers in enumerate(batch.references) if answers]
        if not rows:  # test questions only: nothing to score
            return
        batch = self.with_codes(batch)
        self.compute_losses(batch, stage)
        index = torch.tensor(rows, device=batch.text_ids.device)
        predictions = self.generate_answers(
            batch.image_codes[index], batch.text_ids[index], batch.text_mask[index]
        )
        correct = [answer_matches(p, batch.references[i]) for p, i in zip(predictions, rows)]
        self.gvqa_accuracy.update(torch.tensor(correct, dtype=torch.float32, device=self.device))

    def on_validation_epoch_end(self) -> None:
        self.log_accuracy("val")

    def on_test_epoch_end(self) -> None:
        self.log_accuracy("test")

    def log_accuracy(self, stage: str) -> None:
        """Log ``<stage>/gvqa_accuracy`` (every process's questions) when any was scored, then reset.

        Every process computes (a collective), so all decide alike; nothing is logged without questions.
        """
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*(called before|No samples to concatenate).*")
            accuracy = self.gvqa_accuracy.compute()
        self.gvqa_accuracy.reset()
        if not torch.isnan(accuracy):
            self.log(f"{stage}/gvqa_accuracy", accuracy.float(), sync_dist=False)  # already every process's

    # --------------------------------------------------------------------------------- prediction

    @torch.no_grad()
    def predict_rows(self, batch: Batch, batch_idx: int) -> list[Row]:
        batch = self.with_codes(batch)
        answers = self.generate_answers(batch.image_codes, batch.text_ids, batch.text_mask)
        return [
            {"key": key, "question": question, "answer": answer}
            for key, question, answer in zip(batch.keys, batch_texts(batch), answers)
        ]

    def write_predictions(self, rows: list[Row], folder: Path) -> list[Path]:
        return [write_jsonl(folder / "answers.jsonl", rows)]
