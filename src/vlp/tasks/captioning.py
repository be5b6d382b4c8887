"""Image captioning with E2E-VLP: fine-tune the caption decoder, evaluate decoded captions.

Training is teacher-forced next-token cross-entropy (:class:`~vlp.objectives.CaptioningObjective`) on
the decoder over an image-only encoder pass. Validation and test also decode a caption for every image
(greedy, or beam search with ``num_beams > 1``), turn it back into text with the tokenizer, and at the
end of the epoch score all of them against every reference caption of their image
(:func:`vlp.metrics.captioning.caption_scores`): ``val/bleu_4``, ``val/cider``, ``val/rouge_l``,
``val/meteor`` (with Java), and BLEU-1..3. Under several processes the captions are gathered, scored
once on the first process and the scores shared, so every process logs the same numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlp.batch import Batch
from vlp.models.e2e_vlp.model import CaptionOutput
from vlp.tasks.caption_evaluation import CaptionEvaluation
from vlp.tasks.e2e_base import E2ETask, fsdp_gathered
from vlp.tasks.predict_files import Row, RowPredictionWriter, write_jsonl
from vlp.tokenizers import BUNDLED, load_tokenizer


class CaptioningTask(RowPredictionWriter, CaptionEvaluation, E2ETask):
    """Fine-tuning and evaluation of E2E-VLP captioning (data: an :class:`~vlp.datamodules.e2e.E2ECollator`
    with ``captions: true``; val/test batches need ``references``).

    Args:
        tokenizer: decodes generated ids to text; its ``[CLS]``/``[SEP]``/``[PAD]`` are the decoder's
            BOS/EOS/padding (the data module's tokenizer).
        num_beams: 1 decodes greedily, more runs beam search.
        length_penalty: GNMT's alpha for beam search (0 ranks by log-probability).
        max_caption_len: decoded tokens, BOS and EOS included (at most the text embedder's ``max_len``).
        meteor: score METEOR; ``None``: when Java is available.
        Others: as :class:`~vlp.tasks.base.ObjectiveTask`; the objectives must read the ``"caption"`` view.

    ``predict`` writes ``captions.jsonl`` under ``predict_dir``: one line per image, ``{"key", "caption"}``,
    decoded with the settings above.
    """

    VIEWS = ("caption",)
    PREDICT_FILES = ("captions.jsonl",)

    def __init__(
        self,
        *args: Any,
        tokenizer: str = BUNDLED,
        num_beams: int = 1,
        length_penalty: float = 0.0,
        max_caption_len: int = 30,
        meteor: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        if not 2 <= max_caption_len <= self.model.text_embedder.max_len:
            raise ValueError(
                f"max_caption_len must be in [2, text embedder max_len = {self.model.text_embedder.max_len}], "
                f"got {max_caption_len}"
            )
        self.tokenizer_name = tokenizer
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.max_caption_len = max_caption_len
        self.meteor = meteor
        tok = load_tokenizer(tokenizer)
        self.bos_id, self.eos_id, self.pad_id = tok.cls_token_id, tok.sep_token_id, tok.pad_token_id
        self.reset_captions()

    def forward_model(self, batch: Batch) -> dict[str, CaptionOutput]:
        if batch.caption_ids is None or batch.pixels is None:
            raise ValueError("CaptioningTask needs batch.caption_ids and batch.pixels")
        image_only = self.model(None, None, batch.pixels, batch.pixel_mask)
        return {"caption": self.model.decode_captions(image_only, batch.caption_ids, batch.caption_mask)}

    @torch.no_grad()
    def generate(self, pixels: Tensor, pixel_mask: Tensor | None = None) -> list[str]:
        """Captions for images, decoded with the task's settings (call in eval mode)."""
        with fsdp_gathered(self.model):
            fusion = self.model(None, None, pixels, pixel_mask)
            output = self.model.generate_captions(
                fusion,
                bos_id=self.bos_id,
                eos_id=self.eos_id,
                pad_id=self.pad_id,
                max_len=self.max_caption_len,
                num_beams=self.num_beams,
                alpha=self.length_penalty,
            )
        return load_tokenizer(self.tokenizer_name).batch_decode(
            output.sequences.cpu(), skip_special_tokens=True
        )

    # --------------------------------------------------------------------------------- evaluation

    def evaluate(self, batch: Batch, stage: str) -> None:
        self.compute_losses(batch, stage)
        self.record_captions(batch, self.generate(batch.pixels, batch.pixel_mask))

    # --------------------------------------------------------------------------------- prediction

    def predict_rows(self, batch: Batch, batch_idx: int) -> list[Row]:
        if batch.pixels is None:
            raise ValueError("CaptioningTask.predict needs batch.pixels")
        captions = self.generate(batch.pixels, batch.pixel_mask)
        return [{"key": key, "caption": caption} for key, caption in zip(batch.keys, captions)]

    def write_predictions(self, rows: list[Row], folder: Path) -> list[Path]:
        return [write_jsonl(folder / "captions.jsonl", rows)]
