"""vlp's side: :class:`~vlp.models.vilt.ViLT` with its MLM and ITM objectives, the MLM decoder tied."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from vlp.bench.vilt.config import ViltBenchConfig


class VlpSide(nn.Module):
    """vlp's ViLT with its MLM and ITM objectives; the MLM decoder tied to the word embeddings."""

    def __init__(self, config: ViltBenchConfig) -> None:
        super().__init__()
        from vlp.models.embedders.text import TextEmbedder
        from vlp.models.embedders.vit_patch import ViTPatchEmbedder
        from vlp.models.layers.heads import ITMHead, MLMHead
        from vlp.models.layers.transformer import TransformerEncoder
        from vlp.models.vilt import ViLT
        from vlp.objectives import ITMObjective, MLMObjective

        self.model = ViLT(
            TextEmbedder(vocab_size=config.vocab_size, dim=config.dim, max_len=config.text_len),
            ViTPatchEmbedder(
                dim=config.dim,
                patch_size=config.patch_size,
                pos_grid=config.image_size // config.patch_size,
                max_image_len=-1,
            ),
            TransformerEncoder(
                dim=config.dim,
                depth=config.depth,
                num_heads=config.num_heads,
                mlp_ratio=config.mlp_ratio,
                norm_eps=1e-12,
            ),
        )
        self.mlm = MLMObjective(MLMHead(config.dim, vocab_size=config.vocab_size))
        self.itm = ITMObjective(ITMHead(config.dim))
        self.mlm.head.decoder.weight = self.model.text_embedder.word_embeddings.weight

    def losses(self, batch: Any) -> tuple[Tensor, Tensor]:
        """(MLM loss, ITM loss) of one pass over ``batch``, a :class:`~vlp.batch.Batch`."""
        outputs = self.model(
            batch.mlm_text_ids,
            batch.text_mask,
            batch.pixels,
            batch.pixel_mask,
            text_rows=batch.mlm_labels != -100,
        )
        return self.mlm(outputs, batch).loss, self.itm(outputs, batch).loss

    def itm_logits(self, batch: Any) -> Tensor:
        outputs = self.model(batch.mlm_text_ids, batch.text_mask, batch.pixels, batch.pixel_mask)
        return self.itm.head(outputs.pooled)
