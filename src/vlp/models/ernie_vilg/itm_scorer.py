"""Rerank generated code grids by an image-text matching head: a ViLT over VQGAN codes scores each pair.

ERNIE-ViLG ranks its candidates by its own image→text likelihood of the prompt
(:func:`vlp.models.ernie_vilg.sampling.prompt_log_likelihood`). :class:`ITMScorer` is the alternative: a
:class:`~vlp.models.vilt.ViLT` whose visual embedder is a :class:`~vlp.models.embedders.VQTokenEmbedder`
(trained by :class:`~vlp.tasks.pretrain.PretrainTask` with MLM + ITM on the same VQGAN's codes, recipe
``configs/ernie_vilg/shapes_itm_reranker.yaml``) reads each candidate's codes with the prompt, and its
:class:`~vlp.models.layers.heads.ITMHead` gives the log-probability that they match. It is a
``scorer(codes, text_ids, text_mask) -> [M]`` for :func:`~vlp.models.ernie_vilg.sampling.generate_images`.

The generated images exist as codes, not pixels, so the scorer embeds the ids directly
(:meth:`VQTokenEmbedder.embed_ids`) instead of re-encoding decoded pixels (the VQGAN's encode∘decode is not
the identity on codes). :meth:`ITMScorer.fuse` therefore repeats :meth:`ViLT.forward`'s input assembly for
ids; the tests hold it equal to ``ViLT.forward`` on the pixels those codes came from.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from vlp.checkpoints import check_state_matches, load_existing
from vlp.models.embedders.vq_tokens import VQTokenEmbedder
from vlp.models.layers.heads import ITMHead
from vlp.models.layers.transformer import key_padding_mask
from vlp.models.vilt import ViLT

MODEL_PREFIX = "model."
HEAD_PREFIX = "objectives.itm.head."


class ITMScorer(nn.Module):
    """``log p(match | codes, text)`` of a ViLT-over-codes with an ITM head; frozen, in eval mode.

    Args:
        model: a ViLT whose ``visual_embedder`` is a :class:`VQTokenEmbedder` (its VQGAN must be the one
            that made the codes to score: same ``num_codes`` and grid).
        head: the ITM head (class 1 = matching pair, as :func:`vlp.datamodules.collate.itm_pairing` labels).
        checkpoint: a :class:`~vlp.tasks.pretrain.PretrainTask` checkpoint with an ``itm`` objective;
            ``model.*`` and ``objectives.itm.head.*`` are loaded strictly (missing, unexpected or
            mis-shaped keys are named), the rest (e.g. the MLM head) is not read.
    """

    def __init__(self, model: ViLT, head: ITMHead, checkpoint: str | None = None) -> None:
        super().__init__()
        if not isinstance(model, ViLT) or not isinstance(model.visual_embedder, VQTokenEmbedder):
            embedder = type(getattr(model, "visual_embedder", None)).__name__
            raise ValueError(
                f"ITMScorer needs a ViLT with a VQTokenEmbedder, got {type(model).__name__} with {embedder}"
            )
        if head.input_dim != model.dim:
            raise ValueError(f"ITMScorer: head width {head.input_dim} is not the model width {model.dim}")
        self.model = model
        self.head = head
        if checkpoint is not None:
            self.load_pretrain_checkpoint(checkpoint)
        self.requires_grad_(False)
        self.eval()

    @property
    def embedder(self) -> VQTokenEmbedder:
        return self.model.visual_embedder  # type: ignore[return-value]

    @property
    def num_codes(self) -> int:
        return self.embedder.num_codes

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.embedder.grid)  # type: ignore[return-value]

    def train(self, mode: bool = True) -> ITMScorer:
        """Always eval: the scorer is a fixed referee (no dropout, the VQGAN's EMA codebook stays)."""
        return super().train(False)

    def load_pretrain_checkpoint(self, path: str) -> None:
        """Load ``model.*`` and ``objectives.itm.head.*`` of a PretrainTask checkpoint strictly."""
        file = Path(path)
        checkpoint = load_existing(
            file,
            f"reranker checkpoint {file} not found: train it first "
            "(python -m vlp fit --config configs/ernie_vilg/shapes_itm_reranker.yaml)",
        )
        state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
        if not isinstance(state, dict):
            raise ValueError(f"{file}: no 'state_dict' entry; not a Lightning checkpoint")
        if not any(k.startswith(HEAD_PREFIX) for k in state):
            raise KeyError(
                f"{file}: no '{HEAD_PREFIX}*' keys; not a PretrainTask checkpoint with an itm objective"
            )
        mine = {MODEL_PREFIX + k: v for k, v in self.model.state_dict().items()}
        mine.update({HEAD_PREFIX + k: v for k, v in self.head.state_dict().items()})
        theirs = {k: v for k, v in state.items() if k.startswith((MODEL_PREFIX, HEAD_PREFIX))}
        check_state_matches(mine, theirs, f"{file}: ITM reranker weights and the configured model")
        cut = len(MODEL_PREFIX)
        self.model.load_state_dict({k[cut:]: v for k, v in theirs.items() if k.startswith(MODEL_PREFIX)})
        cut = len(HEAD_PREFIX)
        self.head.load_state_dict({k[cut:]: v for k, v in theirs.items() if k.startswith(HEAD_PREFIX)})

    def fuse(self, codes: Tensor, text_ids: Tensor, text_mask: Tensor | None) -> Tensor:
        """Pooled ``[CLS]`` states ``[M, D]`` of ``[text; codes]``, as :meth:`ViLT.forward` on the images
        these codes stand for (``codes``: ``[M, h*w]`` row-major on the embedder's grid)."""
        if codes.ndim != 2 or codes.shape[1] != self.grid[0] * self.grid[1]:
            raise ValueError(
                f"ITMScorer: codes must be [M, {self.grid[0] * self.grid[1]}], got {tuple(codes.shape)}"
            )
        if codes.shape[0] != text_ids.shape[0]:
            raise ValueError(f"ITMScorer: {codes.shape[0]} code grids for {text_ids.shape[0]} texts")
        if int(codes.min()) < 0 or int(codes.max()) >= self.num_codes:
            raise ValueError(
                f"ITMScorer: code ids must be in [0, {self.num_codes}), got [{int(codes.min())}, {int(codes.max())}]"
            )
        model = self.model
        if text_mask is None:
            text_mask = torch.ones_like(text_ids, dtype=torch.bool)
        types = model.token_type_embeddings.weight
        text = model.text_embedder(text_ids) + types[0]
        embeds, pos = self.embedder.embed_ids(codes)
        image = embeds + pos + types[1]
        mask = torch.cat([text_mask.bool(), torch.ones_like(codes, dtype=torch.bool)], dim=1)
        states = model.encoder(torch.cat([text, image.to(text.dtype)], dim=1), key_padding_mask(mask))
        return model.pooler(states[:, : text_ids.shape[1]])

    @torch.no_grad()
    def forward(self, codes: Tensor, text_ids: Tensor, text_mask: Tensor | None = None) -> Tensor:
        """``log p(match)`` ``[M]`` of each (code grid, text) row."""
        logits = self.head(self.fuse(codes, text_ids, text_mask)).float()
        return logits.log_softmax(dim=-1)[:, 1]
