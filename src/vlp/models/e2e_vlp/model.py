"""The E2E-VLP assembly (Xu et al., ACL 2021): an encoder over ``[text; image]`` and a DETR-style decoder.

The encoder is single-stream like ViLT's, so MLM and ITM read its :class:`FusionOutput` unchanged. The
decoder attends to the encoder's output (the *memory*) and runs two ways with the same weights:
N learned object queries for detection (DETR) and causally over caption tokens for captioning. Each
has its own head: detection's lives in the detection objective, the caption LM head here, because
decoding captions (:meth:`E2EVLP.generate_captions`) needs it.

Where visual positions go is a config choice, :class:`E2EVLP`'s ``pos_every_layer``:

* ``True`` (DETR, the paper config's default): the positions are added to the queries and keys of the
  image tokens at every encoder layer (the encoder's ``pos`` input) and to the memory's keys at every
  decoder layer; the values and the residual stream never carry them.
* ``False`` (ViLT): added once, to the image tokens at the input; the decoder then gets none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vlp.models.embedders.base import VisualEmbedder, VisualTokens
from vlp.models.embedders.text import TextEmbedder
from vlp.models.layers.decoder import DecoderCache, TransformerDecoder
from vlp.models.layers.fusion import SingleStreamFusion
from vlp.models.layers.generation import GenerationOutput, beam_search, greedy_search
from vlp.models.layers.heads import Pooler
from vlp.models.layers.transformer import TransformerEncoder, init_weights, key_padding_mask
from vlp.models.outputs import DecoderOutput, FusionOutput


@dataclass
class ObjectQueryOutput(DecoderOutput):
    """:class:`DecoderOutput` of E2E-VLP's object queries, with what the detection objective must know
    beyond DETR's states.

    ``reference_boxes [L, B, Q, 4]`` (anchored queries, else ``None``) are ``cxcywh`` logits
    (pre-sigmoid); the box a layer predicts is ``sigmoid(reference + head offset)`` (DAB-DETR).
    ``groups``: the ``Q`` queries are that many independent groups of ``Q / groups`` (Group DETR, in
    training), each matched to the targets on its own.
    """

    reference_boxes: Tensor | None = None
    groups: int = 1


def box_sine_embedding(boxes: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """DAB-DETR's sine embedding of normalised boxes ``[..., 4]``: ``[..., 4 * dim]``.

    Each coordinate (cx, cy, w, h, in ``[0, 1]``) times 2π becomes ``dim`` interleaved ``sin, cos``
    features over the frequencies of :func:`~vlp.models.embedders.cnn_grid.sine_positions` (the image
    tokens' positions), so a reference centre and a grid cell at the same place share their phases.
    """
    if dim % 2:
        raise ValueError(f"dim must be even (sin and cos pairs), got {dim}")
    freq = torch.arange(dim, dtype=torch.float, device=boxes.device)
    freq = temperature ** (2 * torch.div(freq, 2, rounding_mode="floor") / dim)
    angles = boxes.float()[..., None] * (2 * math.pi) / freq  # [..., 4, dim]
    features = torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)
    return features.flatten(-2)


def group_mask(size: int, groups: int, device: torch.device | None = None) -> Tensor:
    """``[G * size, G * size]`` bool, True within each of ``groups`` consecutive blocks of ``size``
    queries: the self-attention mask that keeps Group DETR's groups apart."""
    group = torch.arange(groups * size, device=device) // size
    return group[:, None] == group[None, :]


def initial_reference_boxes(num_queries: int, size: float = 0.25, seed: int = 0) -> Tensor:
    """``[Q, 4]`` reference-box logits: centres uniform in ``(0.05, 0.95)^2`` (DAB-DETR's random
    reference points, from a fixed generator so the model seed does not move them), sides ``size``."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(num_queries, 2, generator=generator) * 0.9 + 0.05
    boxes = torch.cat([centres, torch.full((num_queries, 2), size)], dim=1)
    return torch.logit(boxes)


def check_queries(num_queries: int, query_groups: int, anchor_size: float) -> None:
    """Refuse object-query settings no decoder can run, naming the setting."""
    if num_queries < 1:
        raise ValueError(f"num_queries must be >= 1, got {num_queries}")
    if query_groups < 1:
        raise ValueError(f"query_groups must be >= 1, got {query_groups}")
    if not 0 < anchor_size < 1:
        raise ValueError(f"anchor_size must be in (0, 1), got {anchor_size}")


@dataclass
class CaptionOutput:
    """Decoder states over caption tokens; position ``t`` predicts token ``t + 1``.

    ``head`` maps states ``[..., D]`` to vocabulary logits ``[..., V]``; the objective applies it only
    to the positions that have a target.
    """

    states: Tensor  # [B, T, D], after the decoder's final norm
    head: nn.Module


class E2EVLP(SingleStreamFusion):
    """``[text; image]`` → encoder → memory → decoder (object queries | caption tokens).

    Args:
        text_embedder: word + position embeddings, shared by the encoder's text and the decoder's
            caption tokens (one vocabulary).
        visual_embedder: any :class:`VisualEmbedder` (``CNNGridEmbedder`` as the paper, ``ViTPatchEmbedder``
            as an ablation).
        encoder: the fusion :class:`~vlp.models.layers.transformer.TransformerEncoder`.
        decoder: shared by detection and captioning; ``None`` builds the encoder alone (no object
            queries, no caption head), for tasks that read only the encoder (VQA, ...): parameters
            no loss reaches would stall DDP.
        num_queries: learned object queries (DETR: 100).
        pooler: over the first token, for ITM ([CLS] of the text).
        tie_caption_head: the caption LM head's weight *is* the word-embedding table (BERT's MLM decoder
            is tied the same way; saves ``V x D`` parameters). Off by default: a weight shared by two
            modules cannot be sharded in two FSDP units.
        num_modality_types: modality-type embeddings (0 text, 1 image), as ViLT.
        anchor_queries: each object query also gets a learned reference box (DAB-DETR): its position
            in the decoder is an MLP of the box's sine embedding (instead of the learned query
            embedding, which becomes the query's content, DETR's zeros), and the detection objective
            predicts boxes as offsets of it, ``sigmoid(reference + offset)``. The queries then start
            spread over the image and each is matched to the objects near its box, which DETR's
            position-free queries have to learn. ``False``: DETR.
        anchor_size: initial side of the reference boxes (normalised); the centres start uniform.
        query_groups: Group DETR's one-to-many assignment: in training the decoder runs this many
            groups of ``num_queries`` queries, which do not attend to each other, and each group is
            matched to the targets one-to-one on its own, so every object supervises ``query_groups``
            queries per step instead of one; evaluation runs the first group alone (the same model
            and cost as ``query_groups=1``). The groups' reference boxes start alike. ``1``: DETR.
        pos_every_layer: the visual positions go to the queries and keys of every encoder and decoder
            layer (DETR); ``False``: added once to the image tokens at the input (ViLT).
    """

    def __init__(
        self,
        text_embedder: TextEmbedder,
        visual_embedder: VisualEmbedder,
        encoder: TransformerEncoder,
        decoder: TransformerDecoder | None,
        num_queries: int = 100,
        pooler: Pooler | None = None,
        tie_caption_head: bool = False,
        num_modality_types: int = 2,
        anchor_queries: bool = False,
        anchor_size: float = 0.25,
        query_groups: int = 1,
        pos_every_layer: bool = True,
    ) -> None:
        check_queries(num_queries, query_groups, anchor_size)
        super().__init__(
            "E2EVLP",
            text_embedder,
            visual_embedder,
            encoder,
            pooler,
            num_modality_types,
            {"decoder": decoder},
        )
        self.num_queries = num_queries
        self.query_groups = query_groups
        self.pos_every_layer = pos_every_layer
        self.decoder = decoder
        self.query_embed: nn.Embedding | None = None
        self.caption_head: nn.Linear | None = None
        self.reference_boxes: nn.Parameter | None = None
        self.anchor_pos: nn.Sequential | None = None
        if decoder is not None:
            self.query_embed = nn.Embedding(num_queries * query_groups, self.dim)  # N(0, 1), as DETR
            if anchor_queries:
                if self.dim % 2:
                    raise ValueError(f"anchor_queries needs an even model width, got {self.dim}")
                boxes = initial_reference_boxes(num_queries, anchor_size).repeat(query_groups, 1)
                self.reference_boxes = nn.Parameter(boxes)
                # DAB-DETR's ref_point_head: 4 coordinates x D/2 sine features -> D
                self.anchor_pos = nn.Sequential(
                    nn.Linear(2 * self.dim, self.dim), nn.ReLU(), nn.Linear(self.dim, self.dim)
                )
                self.anchor_pos.apply(init_weights)
            vocab_size = text_embedder.word_embeddings.num_embeddings
            self.caption_head = nn.Linear(self.dim, vocab_size)
            init_weights(self.caption_head)
            if tie_caption_head:
                self.caption_head.weight = text_embedder.word_embeddings.weight

    def forward(
        self,
        text_ids: Tensor | None,
        text_mask: Tensor | None,
        pixels: Tensor | None,
        pixel_mask: Tensor | None = None,
        visual: VisualTokens | None = None,
        image_token_type: int = 1,
    ) -> FusionOutput:
        """The encoder pass (ViLT's signature, so ViLT's pre-training task drives it as it is): encode
        ``[text; image]``, or the image alone with ``text_ids=None`` (the memory captioning
        decodes from; ``text_states`` is then empty and ``pooled`` reads the first image token).
        ``visual``: the images' tokens from :meth:`embed_images`, used instead of embedding ``pixels``.
        ``image_token_type``: the image's row of the modality-type table (NLVR2's second image: 2)."""
        if visual is None:
            if pixels is None:
                raise ValueError("E2EVLP needs pixels or visual (tokens from embed_images)")
            visual = self.visual_embedder(pixels, pixel_mask)
        image = visual.embeds + self.token_type_embeddings.weight[image_token_type]
        if visual.pos is not None and not self.pos_every_layer:
            image = image + visual.pos
        batch = image.shape[0]
        if text_ids is None:
            text = image.new_zeros(batch, 0, self.dim)
            text_mask = torch.zeros(batch, 0, dtype=torch.bool, device=image.device)
        else:
            if text_mask is None:
                raise ValueError("text_mask is required with text_ids (True on real tokens)")
            text = self.embed_text(text_ids)
            text_mask = text_mask.bool()
        x = torch.cat([text, image.to(text.dtype)], dim=1)
        mask = torch.cat([text_mask, visual.mask], dim=1)
        if self.pos_every_layer:
            pos = (
                None
                if visual.pos is None
                else torch.cat([torch.zeros_like(text), visual.pos.to(text.dtype)], 1)
            )
            states = self.encoder(x, key_padding_mask(mask), pos=pos)
        else:
            states = self.encoder(x, key_padding_mask(mask))
        length = text.shape[1]
        return FusionOutput(
            text_states=states[:, :length],
            image_states=states[:, length:],
            text_mask=mask[:, :length],
            image_mask=mask[:, length:],
            pooled=self.pooler(states),
            visual=visual,
        )

    def memory(self, fusion: FusionOutput) -> tuple[Tensor, Tensor, Tensor | None]:
        """What the decoder attends to: the encoder states, their mask and (DETR mode) positions."""
        if self.decoder is None:
            raise ValueError(
                "this E2EVLP was built without a decoder (decoder: null): detection and captioning need one"
            )
        memory = torch.cat([fusion.text_states, fusion.image_states], dim=1)
        mask = torch.cat([fusion.text_mask, fusion.image_mask], dim=1)
        pos = None
        if self.pos_every_layer and fusion.visual.pos is not None:
            pos = torch.cat([torch.zeros_like(fusion.text_states), fusion.visual.pos.to(memory.dtype)], dim=1)
        return memory, mask, pos

    def detect(self, fusion: FusionOutput) -> ObjectQueryOutput:
        """The object queries decoded against the memory: every layer's states, for DETR's aux losses,
        with the reference boxes of anchored queries; in training, every query group."""
        memory, mask, pos = self.memory(fusion)
        batch = memory.shape[0]
        groups = self.query_groups if self.training else 1
        active = self.num_queries * groups
        queries = self.query_embed.weight[:active].to(memory.dtype)[None].expand(batch, -1, -1)
        query_mask = group_mask(self.num_queries, groups, memory.device) if groups > 1 else None
        if self.reference_boxes is None:
            states = self.decoder(
                torch.zeros_like(queries),
                memory,
                mask,
                query_pos=queries,
                memory_pos=pos,
                query_mask=query_mask,
            )
            return ObjectQueryOutput(query_states=states, groups=groups)
        reference = self.reference_boxes[:active]
        anchor = self.anchor_pos(box_sine_embedding(reference.sigmoid(), self.dim // 2).to(memory.dtype))
        states = self.decoder(
            queries, memory, mask, query_pos=anchor[None], memory_pos=pos, query_mask=query_mask
        )
        return ObjectQueryOutput(
            query_states=states,
            reference_boxes=reference[None, None].expand(*states.shape[:3], 4),
            groups=groups,
        )

    def decode_captions(
        self, fusion: FusionOutput, caption_ids: Tensor, caption_mask: Tensor | None = None
    ) -> CaptionOutput:
        """Teacher forcing: the decoder's last-layer states over ``caption_ids [B, T]``, causally."""
        memory, mask, pos = self.memory(fusion)
        x = self.text_embedder(caption_ids).to(memory.dtype)
        states = self.decoder(
            x, memory, mask, memory_pos=pos, causal=True, padding_mask=caption_mask, return_intermediate=False
        )[-1]
        return CaptionOutput(states=states, head=self.caption_head)

    def caption_logits(
        self, fusion: FusionOutput, caption_ids: Tensor, caption_mask: Tensor | None = None
    ) -> Tensor:
        """Next-token logits ``[B, T, V]`` at every position. Training should use :meth:`decode_captions`
        and the head on the target positions only (what :class:`CaptioningObjective` does)."""
        return self.caption_head(self.decode_captions(fusion, caption_ids, caption_mask).states)

    @torch.no_grad()
    def generate_captions(
        self,
        fusion: FusionOutput,
        bos_id: int,
        eos_id: int,
        pad_id: int = 0,
        max_len: int = 20,
        num_beams: int = 1,
        alpha: float = 0.0,
        use_cache: bool = True,
    ) -> GenerationOutput:
        """Captions decoded from ``fusion`` (usually an image-only pass, ``model(None, None, pixels)``): greedy when
        ``num_beams == 1``, else beam search with GNMT length penalty ``alpha``. Sequences start with
        ``bos_id`` and count it in ``max_len``. ``use_cache`` keeps keys and values between steps (the
        same result, fewer operations). Call it in eval mode: dropout would sample the decoding."""
        if max_len > self.text_embedder.max_len:
            raise ValueError(
                f"max_len={max_len} is longer than the text embedder's max_len={self.text_embedder.max_len}"
            )
        memory, mask, pos = self.memory(fusion)
        state = {
            "memory": memory,
            "memory_mask": mask,
            "memory_pos": pos,
            "cache": DecoderCache.empty(self.decoder.depth) if use_cache else None,
        }
        prompt = torch.full((memory.shape[0], 1), bos_id, dtype=torch.long, device=memory.device)
        if num_beams == 1:
            return greedy_search(self._caption_step, prompt, max_len, eos_id, pad_id, state)
        return beam_search(self._caption_step, prompt, max_len, eos_id, pad_id, num_beams, alpha, state)

    def _caption_step(self, ids: Tensor, state: dict) -> tuple[Tensor, dict]:
        """Next-token logits for every row of ``ids``; with a cache only the new positions are decoded."""
        cache: DecoderCache | None = state["cache"]
        start = cache.length if cache is not None else 0
        # embedding the whole prefix keeps the learned positions right; it is cheap next to attention
        x = self.text_embedder(ids)[:, start:].to(state["memory"].dtype)
        states = self.decoder(
            x,
            state["memory"],
            state["memory_mask"],
            memory_pos=state["memory_pos"],
            causal=True,
            cache=cache,
            return_intermediate=False,
        )[-1]
        return self.caption_head(states[:, -1]), state
