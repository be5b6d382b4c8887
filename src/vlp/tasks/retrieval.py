"""Image-text retrieval: fine-tune a matching score, evaluate recall@K over every text x image pair.

Training follows official ViLT (``compute_irtr``): each image is scored with its own caption and
``negatives`` other captions of the batch, and a softmax cross-entropy asks its own caption to win
(:class:`~vlp.objectives.RetrievalObjective`). The score head (``rank_output``) starts from the
pre-trained ITM head's "match" row.

Evaluation (validation and test) scores every text of the split against every image, in chunks of
``eval_chunk_size`` pairs, and logs recall@1/5/10 both ways (``val/t2i_r1`` ... ``val/i2t_r10``).
Each process keeps the batches it read (on the CPU), the processes exchange them at the end of the
epoch, every process scores an equal share of the pairs, and the shares are gathered back. Every
image is thus held by every process: cap the cost with the trainer's ``limit_val_batches``.

``predict`` scores every text against every image of the predict split the same way and writes
``rankings.json`` under ``predict_dir`` (see :func:`rankings`): for each caption its ``predict_top_k``
best images, for each image its ``predict_top_k`` best captions, with the rank head's scores.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from vlp.batch import Batch
from vlp.metrics.retrieval import retrieval_recall, score_pair_range
from vlp.models.outputs import FusionOutput
from vlp.objectives.retrieval import RetrievalObjective
from vlp.tasks.base import ObjectiveTask, check_objective_types
from vlp.tasks.predict_files import batch_texts, gather_rows, write_json


class RetrievalTask(ObjectiveTask):
    """Fine-tuning for image-text retrieval (:class:`~vlp.datamodules.retrieval.RetrievalCollator`).

    Args:
        negatives: other captions of the batch each image is ranked against in training (official: 15);
            at most ``batch size - 1`` are used.
        eval_chunk_size: image-text pairs per encoder call when scoring all pairs.
        recall_at: the ``K`` of the logged recall@K.
        itm_source: ``init_from`` builds each retrieval head missing from the checkpoint from the
            "match" row of the checkpoint's ``objectives.<itm_source>`` ITM head (``None``: do not).
        predict_top_k: how many images per caption and captions per image ``predict`` writes.
        Others: as :class:`~vlp.tasks.base.ObjectiveTask`. The objectives must be
            :class:`~vlp.objectives.RetrievalObjective`.
    """

    PREDICT_FILES = ("rankings.json",)

    def __init__(
        self,
        *args: Any,
        negatives: int = 15,
        eval_chunk_size: int = 256,
        recall_at: tuple[int, ...] = (1, 5, 10),
        itm_source: str | None = "itm",
        predict_top_k: int = 10,
        **kwargs: Any,
    ) -> None:
        if negatives < 1 or eval_chunk_size < 1 or not recall_at or min(recall_at) < 1 or predict_top_k < 1:
            raise ValueError(
                f"negatives, eval_chunk_size, recall_at and predict_top_k must be positive, got {negatives}, "
                f"{eval_chunk_size}, {recall_at}, {predict_top_k}"
            )
        self._itm_source = itm_source  # read by adapt_init_state, which runs inside super().__init__
        super().__init__(*args, **kwargs)
        check_objective_types(self.objectives, RetrievalObjective, "RetrievalTask scores pairs with")
        self.negatives = negatives
        self.eval_chunk_size = eval_chunk_size
        self.recall_at = tuple(recall_at)
        self.predict_top_k = predict_top_k
        self._eval_batches: list[dict[str, Tensor]] = []
        self._predict_texts: list[tuple[list[str], list[str]]] = []

    def adapt_init_state(self, state: dict[str, Tensor]) -> dict[str, str]:
        """Each retrieval head not in the checkpoint starts from its ITM head's match row (row 1)."""
        if self._itm_source is None:
            return {}
        source = f"objectives.{self._itm_source}.head.fc"
        if f"{source}.weight" not in state:
            return {}
        adapted = {}
        for name in self.objectives:
            target = f"objectives.{name}.head.fc"
            if f"{target}.weight" in state:
                continue
            for suffix in ("weight", "bias"):
                state[f"{target}.{suffix}"] = state[f"{source}.{suffix}"][1:].clone()
                adapted[f"{target}.{suffix}"] = f"{source}.{suffix}[1:] (the ITM head's match row)"
        if adapted:  # used, not dropped
            del state[f"{source}.weight"], state[f"{source}.bias"]
        return adapted

    @property
    def ranker(self) -> RetrievalObjective:
        """The objective whose head scores pairs at evaluation (the first with a non-zero weight)."""
        return next(iter(self.active_objectives.values()))  # type: ignore[return-value]

    def configure_model(self) -> None:
        super().configure_model()
        from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method

        # Evaluation calls `score`, not `forward`: under FSDP2 it must gather the head's shards too.
        for objective in self.objectives.values():
            if isinstance(objective, FSDPModule) and not getattr(objective, "_vlp_score_registered", False):
                register_fsdp_forward_method(objective, "score")
                objective._vlp_score_registered = True
        # Evaluation also calls the model's `embed_images` first: through the root's hooks, so the model
        # (not its embedder) is initialised as the FSDP2 root when no training step ran before.
        model = self.model
        if isinstance(model, FSDPModule) and not getattr(model, "_vlp_embed_registered", False):
            register_fsdp_forward_method(model, "embed_images")
            model._vlp_embed_registered = True

    def forward_model(self, batch: Batch) -> FusionOutput:
        """``B x (1 + k)`` pairs, image-major: image ``i`` with its caption, then ``k`` other captions."""
        if batch.text_ids is None or batch.pixels is None:
            raise ValueError("RetrievalTask needs batch.text_ids and batch.pixels")
        size = len(batch)
        if batch.text_ids.shape[0] != size:
            raise ValueError(
                f"a retrieval training batch pairs each image with one caption; got {size} images and "
                f"{batch.text_ids.shape[0]} texts"
            )
        count = min(self.negatives, size - 1)
        rows = torch.arange(size, device=batch.text_ids.device)[:, None]
        # k distinct other rows per image: a random permutation of the offsets 1 .. size-1
        offsets = torch.rand(size, size - 1, device=rows.device).argsort(dim=1)[:, :count] + 1
        texts = torch.cat([rows, (rows + offsets) % size], dim=1).flatten()
        images = rows.expand(-1, count + 1).flatten()
        pixel_mask = None if batch.pixel_mask is None else batch.pixel_mask[images]
        return self.model(batch.text_ids[texts], batch.text_mask[texts], batch.pixels[images], pixel_mask)

    # --------------------------------------------------------------------------------- evaluation

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._keep(batch)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._keep(batch)

    def on_validation_epoch_start(self) -> None:
        self._eval_batches = []

    def on_test_epoch_start(self) -> None:
        self._eval_batches = []

    def on_validation_epoch_end(self) -> None:
        self._log_recall("val")

    def on_test_epoch_end(self) -> None:
        self._log_recall("test")

    def _keep(self, batch: Batch) -> None:
        """Keep an evaluation batch's images and texts on the CPU until the epoch ends."""
        if len(batch) == 0:
            return
        owners = batch.text_image_index
        if owners is None:  # one text per image, in order
            owners = torch.arange(len(batch))
        mask = batch.pixel_mask
        if mask is None:
            mask = torch.ones(batch.pixels.shape[0], *batch.pixels.shape[2:], dtype=torch.bool)
        self._eval_batches.append(
            {
                "pixels": batch.pixels.cpu(),
                "pixel_mask": mask.cpu(),
                "text_ids": batch.text_ids.cpu(),
                "text_mask": batch.text_mask.cpu(),
                "text_image_index": owners.cpu(),
            }
        )

    def _log_recall(self, stage: str) -> None:
        pool = gather_eval_pool(self._eval_batches)
        self._eval_batches = []
        if pool is None:
            return
        scores = self.score_all(pool)
        for name, value in retrieval_recall(scores, pool["text_image_index"], self.recall_at).items():
            self.log(f"{stage}/{name}", value, sync_dist=False)  # identical on every process

    # --------------------------------------------------------------------------------- prediction

    def on_predict_start(self) -> None:
        super().on_predict_start()
        self._eval_batches = []
        self._predict_texts = []

    def predict_step(self, batch: Batch, batch_idx: int) -> None:
        """Keep the batch (as evaluation does) with its image keys and caption texts; scored at the end."""
        if len(batch) == 0:
            return
        self._predict_texts.append((list(batch.keys), batch_texts(batch)))
        self._keep(batch)

    def on_predict_epoch_end(self) -> None:
        """Every process scores its share of all pairs; the first writes ``rankings.json``."""
        pool = gather_eval_pool(self._eval_batches)  # the same on every process
        texts = gather_rows(self._predict_texts)  # first process only; the pool's order: rank, then batch
        self._eval_batches, self._predict_texts = [], []
        result: dict[str, Any] = {"top_k": self.predict_top_k, "text_to_image": [], "image_to_text": []}
        if pool is not None:
            scores = self.score_all(pool)  # every process takes part
            if texts is not None:
                keys = [key for batch_keys, _ in texts for key in batch_keys]
                captions = [text for _, batch_captions in texts for text in batch_captions]
                result = rankings(scores, pool["text_image_index"], keys, captions, self.predict_top_k)
        if texts is not None:
            write_json(self.predict_path / "rankings.json", result)

    @torch.no_grad()
    def score_pairs(self, pool: dict[str, Tensor], text_index: Tensor, image_index: Tensor) -> Tensor:
        """Matching scores ``[C]`` of the given (text, image) pairs of ``pool``. Each distinct image of
        the pairs is embedded once (``model.embed_images``) and its tokens shared by its pairs: with a
        CNN grid (E2E-VLP) embedding is most of a pair's cost, and a chunk of the text-major grid holds
        each image about ``C / images`` times."""
        device = self.device
        text_index, image_index = text_index.cpu(), image_index.cpu()
        images, owners = image_index.unique(return_inverse=True)
        visual = self.model.embed_images(
            pool["pixels"][images].to(device), pool["pixel_mask"][images].to(device)
        )
        outputs = self.model(
            pool["text_ids"][text_index].to(device),
            pool["text_mask"][text_index].to(device),
            None,
            visual=visual.select(owners.to(device)),
        )
        return self.ranker.score(outputs.pooled)

    @torch.no_grad()
    def score_all(self, pool: dict[str, Tensor]) -> Tensor:
        """``[T, N]`` scores of every text against every image of ``pool``, this process scoring an equal
        share of the pairs (the same number of encoder calls on every process, as FSDP needs)."""
        texts, images = pool["text_ids"].shape[0], pool["pixels"].shape[0]
        pairs = texts * images
        world, rank = _world()
        share = -(-pairs // world)
        start, stop = min(pairs, rank * share), min(pairs, (rank + 1) * share)
        calls = -(-share // self.eval_chunk_size)
        local = score_pair_range(
            lambda t, i: self.score_pairs(pool, t, i).float().cpu(),
            images,
            start,
            stop,
            self.eval_chunk_size,
            calls=calls,
        )
        if world > 1:
            shares: list[Any] = [None] * world
            dist.all_gather_object(shares, local)
            local = torch.cat(shares)
        return local.reshape(texts, images)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_eval_pool(batches: list[dict[str, Tensor]]) -> dict[str, Tensor] | None:
    """Every process's kept evaluation batches as one pool (in rank order, then batch order): images
    padded to a common size, texts to a common length, text owners renumbered. None when empty."""
    world, _ = _world()
    if world > 1:
        everyone: list[Any] = [None] * world
        dist.all_gather_object(everyone, batches)
        batches = [batch for rank_batches in everyone for batch in rank_batches]
    if not batches:
        return None
    height = max(b["pixels"].shape[-2] for b in batches)
    width = max(b["pixels"].shape[-1] for b in batches)
    length = max(b["text_ids"].shape[1] for b in batches)
    pixels, masks, ids, text_masks, owners = [], [], [], [], []
    offset = 0
    for b in batches:
        h, w = b["pixels"].shape[-2:]
        pixels.append(nn.functional.pad(b["pixels"], (0, width - w, 0, height - h)))
        masks.append(nn.functional.pad(b["pixel_mask"], (0, width - w, 0, height - h), value=False))
        pad = length - b["text_ids"].shape[1]
        ids.append(nn.functional.pad(b["text_ids"], (0, pad)))
        text_masks.append(nn.functional.pad(b["text_mask"], (0, pad), value=False))
        owners.append(b["text_image_index"] + offset)
        offset += b["pixels"].shape[0]
    return {
        "pixels": torch.cat(pixels),
        "pixel_mask": torch.cat(masks),
        "text_ids": torch.cat(ids),
        "text_mask": torch.cat(text_masks),
        "text_image_index": torch.cat(owners),
    }


def rankings(
    scores: Tensor, text_image: Tensor, keys: list[str], captions: list[str], top_k: int
) -> dict[str, Any]:
    """The top-``top_k`` lists of a ``[T, N]`` score matrix, both ways, as ``rankings.json`` holds them::

        {"top_k": k,
         "text_to_image": [{"caption", "image": <its own image key>, "top": [{"image", "score"}, ...]}, ...],
         "image_to_text": [{"image", "top": [{"text": <index in text_to_image>, "caption", "score"}, ...]}, ...]}

    Images are listed by key, texts by their image's key and then in stored order, so the file does not
    depend on how the split was read; ties keep that order. ``score`` is the rank head's matching score
    (higher = better match; not a probability).
    """
    if scores.shape != (len(captions), len(keys)) or text_image.shape != (len(captions),):
        raise ValueError(
            f"scores {tuple(scores.shape)} must be [texts = {len(captions)}, images = {len(keys)}] "
            f"with one image per text, got {tuple(text_image.shape)}"
        )
    owners = text_image.tolist()
    image_order = sorted(range(len(keys)), key=lambda i: keys[i])
    text_order = sorted(range(len(captions)), key=lambda t: (keys[owners[t]], t))
    scores = scores.float().cpu()[text_order][:, image_order]
    image_keys = [keys[i] for i in image_order]
    texts = [captions[t] for t in text_order]
    k_images, k_texts = min(top_k, len(image_keys)), min(top_k, len(texts))
    by_text = scores.sort(dim=1, descending=True, stable=True)
    by_image = scores.sort(dim=0, descending=True, stable=True)
    text_to_image = [
        {
            "caption": texts[t],
            "image": keys[owners[text_order[t]]],
            "top": [
                {"image": image_keys[i], "score": s}
                for i, s in zip(by_text.indices[t, :k_images].tolist(), by_text.values[t, :k_images].tolist())
            ],
        }
        for t in range(len(texts))
    ]
    image_to_text = [
        {
            "image": image_keys[n],
            "top": [
                {"text": t, "caption": texts[t], "score": s}
                for t, s in zip(by_image.indices[:k_texts, n].tolist(), by_image.values[:k_texts, n].tolist())
            ],
        }
        for n in range(len(image_keys))
    ]
    return {"top_k": top_k, "text_to_image": text_to_image, "image_to_text": image_to_text}
