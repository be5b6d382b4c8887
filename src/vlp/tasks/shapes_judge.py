"""ShapesJudgeTask: trains :class:`~vlp.metrics.shapes_judge.ShapesJudge` on shapes detection batches.

Targets come from each image's objects (:class:`~vlp.batch.Targets`: category labels and
the attribute multi-hot, whose colour columns give each object's colour), mapped through the data's
``vocab.json`` onto the judge's colour and shape names: a multi-hot over (colour, shape) pairs and the
number of objects. Loss: binary cross-entropy over the pairs, over the colours and over the shapes
present (each summed over its labels, averaged over images) + ``count_weight`` x cross-entropy over the
count.

Logged per stage: ``{stage}/presence_loss``, ``count_loss``, ``loss``, and over the epoch
``{stage}/presence_f1`` (micro F1 over every image's pairs), ``presence_exact`` (share of images whose
every pair is right) and ``count_acc``. Checkpoints carry the judge's config (``ShapesJudge.from_checkpoint``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning import LightningModule
from torch import Tensor
from torchmetrics import SumMetric

from vlp.batch import Batch
from vlp.metrics.shapes_judge import CONFIG_KEY, ShapesJudge
from vlp.tasks.optim import build_adamw, linear_warmup_decay, param_groups, schedule_steps


class ShapesJudgeTask(LightningModule):
    """Presence + count classification for the shapes judge.

    Args:
        judge: the classifier.
        count_weight: weight of the count loss beside the presence loss.
        lr, weight_decay, warmup, end_lr_ratio: AdamW with linear warm-up (a fraction of the steps when
            < 1, else a number of steps) and linear decay to ``end_lr_ratio`` of ``lr``.
    """

    def __init__(
        self,
        judge: ShapesJudge,
        count_weight: float = 0.5,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        warmup: float = 0.05,
        end_lr_ratio: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["judge"])
        self.judge = judge
        self.count_weight = count_weight
        self._maps: tuple[Tensor, Tensor] | None = None
        self.scores = torch.nn.ModuleDict(
            {
                name: SumMetric()
                for name in ("true_pos", "false_pos", "false_neg", "exact", "count_right", "images")
            }
        )

    # ---------------------------------------------------------------------------------- targets

    def setup(self, stage: str) -> None:
        """Read the label names from the data module's ``vocab.json`` (Lightning sets the data up first)."""
        vocab = getattr(getattr(self.trainer, "datamodule", None), "vocab", None) or {}
        self.set_vocab(vocab.get("categories", []), vocab.get("attributes", []))

    def set_vocab(self, categories: list[str], attributes: list[str]) -> None:
        """Map the data's category indices onto the judge's shapes and its colours onto attribute columns."""
        missing = [s for s in self.judge.shapes if s not in categories]
        missing += [c for c in self.judge.colours if c not in attributes]
        if missing:
            raise ValueError(
                f"the data's vocab.json lacks the judge's names {missing} (categories {categories}, "
                f"attributes {attributes}): train on shapes data, or give the judge that data's names"
            )
        shape_of = [self.judge.shapes.index(c) if c in self.judge.shapes else -1 for c in categories]
        self._maps = (torch.tensor(shape_of), torch.tensor([attributes.index(c) for c in self.judge.colours]))

    def targets(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Presence multi-hot ``[B, colours, shapes]`` and object counts ``[B]`` of the batch."""
        if batch.targets is None:
            raise ValueError("ShapesJudgeTask needs detection targets (data: detection: true)")
        if self._maps is None:
            raise ValueError("ShapesJudgeTask has no label names: data with a vocab.json, or call set_vocab")
        shape_of, colour_columns = (m.to(self.device) for m in self._maps)
        judge = self.judge
        presence = torch.zeros(len(batch), len(judge.colours), len(judge.shapes), device=self.device)
        counts = torch.zeros(len(batch), dtype=torch.long, device=self.device)
        for row, target in enumerate(batch.targets):
            shapes = shape_of[target.labels]
            colours = target.attributes[:, colour_columns].argmax(dim=1)
            known = (shapes >= 0) & (target.attributes[:, colour_columns].sum(dim=1) > 0)
            presence[row, colours[known], shapes[known]] = 1.0
            counts[row] = len(target.labels)
        return presence, counts.clamp(max=judge.max_objects)

    # --------------------------------------------------------------------------------- training

    def step(self, batch: Batch, stage: str) -> Tensor:
        presence, counts = self.targets(batch)
        output = self.judge(batch.pixels)
        presence_loss = sum(
            F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / len(batch)
            for logits, target in (
                (output.presence_logits, presence),
                (output.colour_logits, presence.amax(dim=2)),
                (output.shape_logits, presence.amax(dim=1)),
            )
        )
        count_loss = F.cross_entropy(output.count_logits, counts)
        loss = presence_loss + self.count_weight * count_loss
        size, sync = len(batch), stage != "train"
        self.log(f"{stage}/presence_loss", presence_loss.detach(), batch_size=size, sync_dist=sync)
        self.log(f"{stage}/count_loss", count_loss.detach(), batch_size=size, sync_dist=sync)
        self.log(f"{stage}/loss", loss.detach(), batch_size=size, sync_dist=sync, prog_bar=True)
        if stage != "train":
            self.update_scores(
                output.presence_logits > 0, presence > 0.5, output.count_logits.argmax(1), counts
            )
        return loss

    def update_scores(self, predicted: Tensor, truth: Tensor, count: Tensor, true_count: Tensor) -> None:
        s = self.scores
        s["true_pos"].update((predicted & truth).sum())
        s["false_pos"].update((predicted & ~truth).sum())
        s["false_neg"].update((~predicted & truth).sum())
        s["exact"].update((predicted == truth).flatten(1).all(dim=1).sum())
        s["count_right"].update((count == true_count).sum())
        s["images"].update(float(len(truth)))

    def log_scores(self, stage: str) -> None:
        v = {name: metric.compute() for name, metric in self.scores.items()}
        f1 = 2 * v["true_pos"] / (2 * v["true_pos"] + v["false_pos"] + v["false_neg"]).clamp(min=1)
        self.log(f"{stage}/presence_f1", f1)
        self.log(f"{stage}/presence_exact", v["exact"] / v["images"].clamp(min=1))
        self.log(f"{stage}/count_acc", v["count_right"] / v["images"].clamp(min=1))
        for metric in self.scores.values():
            metric.reset()

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self.step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self.log_scores("val")

    def on_test_epoch_end(self) -> None:
        self.log_scores("test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = dict(self.judge.config)

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        optimizer = build_adamw(param_groups(self.judge, hp.lr, hp.weight_decay), hp.lr)
        total, warmup = schedule_steps(self.trainer, hp.warmup)
        scheduler = linear_warmup_decay(optimizer, warmup, total, hp.end_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
