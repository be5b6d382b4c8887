"""Generative VQA batches: the question as a prompt, the question and its answer as one text to continue.

ERNIE-ViLG answers a question the way it writes a caption (its FMIQA experiment): the image→text direction
reads ``[image codes; text]`` and the text is ``[CLS] question [SEP] answer [SEP]``; the answer tokens
(and the closing ``[SEP]``, so the model learns where an answer ends) are the only targets, and at
evaluation the answer is decoded after the prompt ``[CLS] question [SEP]``.

Rows are :class:`~vlp.datamodules.vqa.VQACollator`'s (one answered question per image in training, every
question in evaluation; row keys ``<sample key>/q<index>``), and ``blank_images`` is its text-only control.
No answer vocabulary is needed: the answer is text.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Self

import torch
from torch import Tensor

from vlp.batch import Batch
from vlp.datamodules.decode import DecodedSample
from vlp.datamodules.finetune import FinetuneCollator
from vlp.datamodules.parts import Vocab
from vlp.datamodules.vqa import VQACollator, is_answered, usable_questions


def target_answer(answers: Sequence[str]) -> str | None:
    """The answer a question is trained on: the one most annotators gave (surrounding white space removed;
    a tie goes to the first given); ``None`` for a question without answers (a test question)."""
    counts = Counter(answer.strip() for answer in answers)
    return counts.most_common(1)[0][0] if counts else None


class GenerativeVQACollator(VQACollator):
    """:class:`~vlp.datamodules.vqa.VQACollator`'s rows as text to continue (module docstring).

    The batch carries ``text_ids``/``text_mask``: the question ``[CLS] q [SEP]`` (the prompt the answer is
    decoded after); ``caption_ids``/``caption_mask``: ``[CLS] q [SEP] a [SEP]`` (padding at the end), with
    ``a`` the :func:`target_answer`; ``references``: each row's answers as given (``[]`` for a test
    question, whose text is the question alone). The first ``text_mask.sum()`` tokens of a row's
    ``caption_ids`` are its question tokens, so the positions after them are the answer's.

    Args:
        max_text_len: tokens of the whole text, question and answer; the question is cut to
            ``max_text_len - max_answer_len - 1`` tokens (``[CLS]`` and ``[SEP]`` included).
        max_answer_len: answer word pieces kept (longer answers are cut; the closing ``[SEP]`` is extra).
        Others: as :class:`~vlp.datamodules.finetune.FinetuneCollator` (``blank_images``: the text-only
            control, every split).
    """

    def __init__(self, max_text_len: int = 40, max_answer_len: int = 8, **kwargs: Any) -> None:
        super().__init__(max_text_len=max_text_len, **kwargs)
        if max_answer_len < 1:
            raise ValueError(f"max_answer_len must be at least 1, got {max_answer_len}")
        self.max_answer_len = max_answer_len
        if self.question_budget < 3:
            raise ValueError(
                f"max_text_len={max_text_len} leaves {self.question_budget} tokens for the question after "
                f"max_answer_len={max_answer_len} answer tokens and [SEP]; it needs at least 3 ([CLS] q [SEP])"
            )

    @property
    def question_budget(self) -> int:
        """Tokens a question may take, ``[CLS]`` and ``[SEP]`` included."""
        return self.max_text_len - self.max_answer_len - 1

    def for_split(self, train: bool, seed: int = 0, vocab: Vocab | None = None) -> Self:
        """The split's collator; unlike VQA classification it needs no ``answers`` list in ``vocab.json``."""
        bound = FinetuneCollator.for_split(self, train, seed, vocab)
        bound.answer_index = {}
        bound.all_questions = not train
        return bound

    def targets(self, entry: dict[str, Any], key: str) -> Tensor:
        """No answer classes: the answer is text (``Batch.answers`` stays ``None``)."""
        return torch.zeros(0)

    def tokenize(self, texts: list[str], **options: Any) -> Any:
        """The questions, each cut to :attr:`question_budget` tokens."""
        return super().tokenize(texts, max_length=self.question_budget, **options)

    def collate(self, samples: list[DecodedSample], generator: torch.Generator) -> Batch:
        batch = super().collate(samples, generator)
        questions = {sample.key: usable_questions(sample.annotation) for sample in samples}
        references = []
        for key in batch.keys:
            sample_key, index = key.rsplit("/q", 1)
            entry = questions[sample_key][int(index)]
            references.append(list(entry["answers"]) if is_answered(entry) else [])
        if batch.text_ids is None or batch.text_mask is None:
            raise RuntimeError("VQACollator built a batch without question tokens")
        caption_ids, caption_mask = self.answer_texts(
            batch.text_ids, batch.text_mask, [target_answer(r) for r in references]
        )
        return replace(
            batch, answers=None, references=references, caption_ids=caption_ids, caption_mask=caption_mask
        )

    def answer_texts(
        self, question_ids: Tensor, question_mask: Tensor, answers: Sequence[str | None]
    ) -> tuple[Tensor, Tensor]:
        """``[CLS] q [SEP] a [SEP]`` per row (the question alone where the answer is ``None``), padded."""
        tokenizer = self.tokenizer
        pieces = tokenizer(
            [answer or "" for answer in answers],
            add_special_tokens=False,
            truncation=True,
            max_length=self.max_answer_len,
        )["input_ids"]
        rows = []
        for ids, mask, answer, answer_ids in zip(question_ids, question_mask, answers, pieces):
            question = ids[mask].tolist()
            rows.append(question if answer is None else question + answer_ids + [tokenizer.sep_token_id])
        width = max(map(len, rows))
        caption_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        caption_mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, row in enumerate(rows):
            caption_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            caption_mask[i, : len(row)] = True
        return caption_ids, caption_mask
