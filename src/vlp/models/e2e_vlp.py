"""The E2E-VLP assembly (Xu et al., ACL 2021): an encoder over ``[text; image]`` and a DETR-style decoder.

The encoder is single-stream like ViLT's, so MLM and ITM read its :class:`FusionOutput` unchanged. The
decoder attends to the encoder's output (the *memory*) and runs two ways with the same weights:
N learned object queries for detection (DETR) and causally over caption tokens for captioning. Each
has its own head: detection's lives in the detection objective, the caption LM head here, because
decoding captions (:meth:`E2EVLP.generate_captions`) needs it.

Visual positions are a config choice, made by the encoder's class:

* :class:`PosTransformerEncoder` (DETR, the default of the paper config): the positions are added to
  the queries and keys of the image tokens at every encoder layer and to the memory's keys at every
  decoder layer; the values and the residual stream never carry them.
* a plain :class:`~vlp.models.transformer.TransformerEncoder` (ViLT): added once, to the image tokens
  at the input; the decoder then gets none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vlp.models.decoder import DecoderCache, MultiHeadAttention, TransformerDecoder
from vlp.models.embedders.base import VisualEmbedder, VisualTokens
from vlp.models.generation import GenerationOutput, beam_search, greedy_search
from vlp.models.heads import Pooler
from vlp.models.outputs import DecoderOutput, FusionOutput
from vlp.models.text import TextEmbedder
from vlp.models.transformer import Block, TransformerEncoder, init_weights, key_padding_mask


class PosBlock(Block):
    """A pre-LN encoder block that adds positions to queries and keys only (DETR's encoder layer).

    Parameter names are :class:`~vlp.models.transformer.Block`'s (``attn.qkv``, ``attn.proj`` ...), so
    the same checkpoints load into either.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__(
            dim=dim,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop=drop,
            attn_drop=attn_drop,
            drop_path=drop_path,
            norm_eps=norm_eps,
        )
        self.attn = MultiHeadAttention(dim, num_heads, qkv_bias, attn_drop, drop)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, pos: Tensor | None = None) -> Tensor:
        h = self.norm1(x)
        qk = h if pos is None else h + pos
        x = x + self.drop_path(self.attn(qk, qk, h, attn_mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PosTransformerEncoder(TransformerEncoder):
    """:class:`~vlp.models.transformer.TransformerEncoder` whose blocks take positions at every layer.

    ``forward(x, attn_mask, pos)`` adds ``pos [B, N, D]`` to the queries and keys of every block
    (zeros where a token has none, e.g. text); with ``pos=None`` it is a plain encoder.
    """

    def __init__(
        self,
        dim: int = 256,
        depth: int = 6,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__(
            dim=dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop=drop,
            attn_drop=attn_drop,
            drop_path=drop_path,
            norm_eps=norm_eps,
            activation_checkpointing=activation_checkpointing,
        )
        rates = torch.linspace(0, drop_path, depth).tolist() if depth > 1 else [drop_path] * depth
        self.blocks = nn.ModuleList(
            PosBlock(dim, num_heads, mlp_ratio, qkv_bias, drop, attn_drop, rate, norm_eps) for rate in rates
        )
        self.apply(init_weights)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, pos: Tensor | None = None) -> Tensor:
        for block in self.blocks:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, attn_mask, pos, use_reentrant=False)
            else:
                x = block(x, attn_mask, pos)
        return self.norm(x)


@dataclass
class CaptionOutput:
    """Decoder states over caption tokens; position ``t`` predicts token ``t + 1``.

    ``head`` maps states ``[..., D]`` to vocabulary logits ``[..., V]``; the objective applies it only
    to the positions that have a target.
    """

    states: Tensor  # [B, T, D], after the decoder's final norm
    head: nn.Module


class E2EVLP(nn.Module):
    """``[text; image]`` → encoder → memory → decoder (object queries | caption tokens).

    Args:
        text_embedder: word + position embeddings, shared by the encoder's text and the decoder's
            caption tokens (one vocabulary).
        visual_embedder: any :class:`VisualEmbedder` (``CNNGridEmbedder`` as the paper, ``ViTPatchEmbedder``
            as an ablation).
        encoder: :class:`PosTransformerEncoder` (positions at every layer, DETR) or a plain
            :class:`~vlp.models.transformer.TransformerEncoder` (positions once at the input).
        decoder: shared by detection and captioning; ``None`` builds the encoder alone (no object
            queries, no caption head), for tasks that read only :meth:`encode` (VQA, ...): parameters
            no loss reaches would stall DDP.
        num_queries: learned object queries (DETR: 100).
        pooler: over the first token, for ITM ([CLS] of the text).
        tie_caption_head: the caption LM head's weight *is* the word-embedding table (BERT's MLM decoder
            is tied the same way; saves ``V x D`` parameters). Off by default: a weight shared by two
            modules cannot be sharded in two FSDP units.
        num_modality_types: modality-type embeddings (0 text, 1 image), as ViLT.
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
    ) -> None:
        super().__init__()
        widths = {
            "text_embedder": text_embedder.dim,
            "visual_embedder": visual_embedder.dim,
            "encoder": encoder.dim,
        }
        if decoder is not None:
            widths["decoder"] = decoder.dim
        if len(set(widths.values())) != 1:
            raise ValueError(f"E2EVLP parts disagree on the model width: {widths}")
        if num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {num_queries}")
        self.dim = encoder.dim
        self.text_embedder = text_embedder
        self.visual_embedder = visual_embedder
        self.token_type_embeddings = nn.Embedding(num_modality_types, self.dim)
        nn.init.trunc_normal_(self.token_type_embeddings.weight, std=0.02)
        self.encoder = encoder
        self.pooler = pooler if pooler is not None else Pooler(self.dim)
        self.decoder = decoder
        self.query_embed: nn.Embedding | None = None
        self.caption_head: nn.Linear | None = None
        if decoder is not None:
            self.query_embed = nn.Embedding(num_queries, self.dim)  # N(0, 1), as DETR
            vocab_size = text_embedder.word_embeddings.num_embeddings
            self.caption_head = nn.Linear(self.dim, vocab_size)
            init_weights(self.caption_head)
            if tie_caption_head:
                self.caption_head.weight = text_embedder.word_embeddings.weight

    @property
    def pos_every_layer(self) -> bool:
        """Visual positions go to every encoder and decoder layer (DETR), not once at the input."""
        return isinstance(self.encoder, PosTransformerEncoder)

    def forward(
        self,
        text_ids: Tensor | None,
        text_mask: Tensor | None,
        pixels: Tensor | None,
        pixel_mask: Tensor | None = None,
        visual: VisualTokens | None = None,
    ) -> FusionOutput:
        """The encoder pass, with ViLT's signature (so ViLT's pre-training task drives it as it is)."""
        return self.encode(text_ids, text_mask, pixels, pixel_mask, visual)

    def embed_images(self, pixels: Tensor, pixel_mask: Tensor | None = None) -> VisualTokens:
        """The visual tokens of ``pixels``, to pass as ``visual`` to several encoder passes (a task
        with several views of the same images runs the CNN once)."""
        return self.visual_embedder(pixels, pixel_mask)

    def encode(
        self,
        text_ids: Tensor | None,
        text_mask: Tensor | None,
        pixels: Tensor | None,
        pixel_mask: Tensor | None = None,
        visual: VisualTokens | None = None,
    ) -> FusionOutput:
        """Encode ``[text; image]``, or the image alone with ``text_ids=None`` (the memory captioning
        decodes from; ``text_states`` is then empty and ``pooled`` reads the first image token).
        ``visual``: the images' tokens from :meth:`embed_images`, used instead of embedding ``pixels``."""
        if visual is None:
            if pixels is None:
                raise ValueError("encode needs pixels or visual (tokens from embed_images)")
            visual = self.visual_embedder(pixels, pixel_mask)
        image = visual.embeds + self.token_type_embeddings.weight[1]
        if visual.pos is not None and not self.pos_every_layer:
            image = image + visual.pos
        batch = image.shape[0]
        if text_ids is None:
            text = image.new_zeros(batch, 0, self.dim)
            text_mask = torch.zeros(batch, 0, dtype=torch.bool, device=image.device)
        else:
            if text_mask is None:
                raise ValueError("text_mask is required with text_ids (True on real tokens)")
            text = self.text_embedder(text_ids) + self.token_type_embeddings.weight[0]
            text_mask = text_mask.bool()
        x = torch.cat([text, image.to(text.dtype)], dim=1)
        mask = torch.cat([text_mask, visual.mask], dim=1)
        if self.pos_every_layer:
            pos = (
                None
                if visual.pos is None
                else torch.cat([torch.zeros_like(text), visual.pos.to(text.dtype)], 1)
            )
            states = self.encoder(x, key_padding_mask(mask), pos)
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

    def detect(self, fusion: FusionOutput) -> DecoderOutput:
        """The object queries decoded against the memory: every layer's states, for DETR's aux losses."""
        memory, mask, pos = self.memory(fusion)
        queries = self.query_embed.weight.to(memory.dtype)[None].expand(memory.shape[0], -1, -1)
        states = self.decoder(torch.zeros_like(queries), memory, mask, query_pos=queries, memory_pos=pos)
        return DecoderOutput(query_states=states)

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
        """Captions decoded from ``fusion`` (usually an image-only :meth:`encode`): greedy when
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
