"""Evaluation by decoded captions, shared by every task that captions images (E2E-VLP, ERNIE-ViLG).

A task records one decoded caption per image with :meth:`CaptionEvaluation.record_captions` during
validation or test; at the end of the epoch every caption is scored against all reference captions of
its image (:func:`vlp.metrics.captioning.caption_scores`: BLEU-1..4, CIDEr-D, ROUGE-L, METEOR with Java).
Under several processes the captions are gathered, scored once on the first process and the scores
broadcast, so every process logs the same numbers (``sync_dist`` would average per-process scores,
which is not the corpus score).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.distributed as dist

from vlp.batch import Batch
from vlp.metrics.captioning import caption_scores


class CaptionEvaluation:
    """Mixin for an :class:`~vlp.tasks.base.ObjectiveTask`: caption bookkeeping, the epoch hooks and the
    scoring.

    The task's :meth:`~vlp.tasks.base.ObjectiveTask.evaluate` computes a batch's losses, then calls
    ``record_captions``; the task sets ``self.meteor`` (``None``: METEOR when Java is available). Put the
    mixin before the LightningModule base so its hooks are the ones Lightning calls.
    """

    meteor: bool | None
    log: Any

    def reset_captions(self) -> None:
        self._predictions: dict[str, str] = {}
        self._references: dict[str, list[str]] = {}

    def record_captions(self, batch: Batch, captions: Sequence[str]) -> None:
        """Keep ``captions`` (one per sample of ``batch``) with the batch's reference captions."""
        if batch.references is None:
            raise ValueError("caption evaluation needs batch.references (every caption of each image)")
        for key, caption, refs in zip(batch.keys, captions, batch.references):
            self._predictions[key] = caption
            self._references[key] = list(refs)

    def on_validation_epoch_start(self) -> None:
        self.reset_captions()

    def on_test_epoch_start(self) -> None:
        self.reset_captions()

    def on_validation_epoch_end(self) -> None:
        self.log_caption_scores("val")

    def on_test_epoch_end(self) -> None:
        self.log_caption_scores("test")

    @property
    def predictions(self) -> dict[str, str]:
        """The captions decoded in the last evaluation epoch, by key: every process's once the epoch has
        ended (they are gathered to be scored), this process's while it runs."""
        return dict(self._predictions)

    def log_caption_scores(self, stage: str) -> None:
        for name, value in (self.corpus_caption_scores() or {}).items():
            self.log(f"{stage}/{name}", value, sync_dist=False)  # the same on every process

    def corpus_caption_scores(self) -> dict[str, float] | None:
        """The recorded captions (every process's) scored against their references; ``None`` without any."""
        predictions, references = self._predictions, self._references
        scores: dict[str, float] | None = None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            everyone: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, (predictions, references))
            predictions = {k: v for p, _ in everyone for k, v in p.items()}
            references = {k: v for _, r in everyone for k, v in r.items()}
            self._predictions, self._references = predictions, references
            shared: list[Any] = [None]
            if dist.get_rank() == 0 and predictions:
                shared[0] = caption_scores(predictions, references, self.meteor)
            dist.broadcast_object_list(shared, src=0)
            scores = shared[0]
        elif predictions:
            scores = caption_scores(predictions, references, self.meteor)
        return scores
