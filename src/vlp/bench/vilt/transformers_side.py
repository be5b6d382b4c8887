"""transformers' side: ``ViltForMaskedLM`` and an ITM linear, and its weights under vlp's keys."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlp.bench.vilt.config import ViltBenchConfig


class TransformersSide(nn.Module):
    """transformers' ``ViltForMaskedLM`` (its ``ViltModel`` + ``ViltMLMHead``) and an ITM linear."""

    def __init__(self, config: ViltBenchConfig) -> None:
        super().__init__()
        from transformers import ViltConfig, ViltForMaskedLM

        torch.manual_seed(config.seed)
        self.config = ViltConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.dim,
            num_hidden_layers=config.depth,
            num_attention_heads=config.num_heads,
            intermediate_size=int(config.dim * config.mlp_ratio),
            hidden_act="gelu",
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            layer_norm_eps=1e-12,
            image_size=config.image_size,
            patch_size=config.patch_size,
            max_position_embeddings=config.text_len,
            max_image_length=-1,
            pad_token_id=0,
        )
        self.mlm_model = ViltForMaskedLM(self.config)
        self.itm_score = nn.Linear(config.dim, 2)
        nn.init.normal_(self.itm_score.weight, std=self.config.initializer_range)
        nn.init.zeros_(self.itm_score.bias)

    def losses(
        self, inputs: dict[str, Tensor], mlm_labels: Tensor, itm_labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(MLM loss, ITM loss), computed as ``ViltForMaskedLM.forward`` computes its MLM loss."""
        outputs = self.mlm_model.vilt(**inputs)
        text_len = inputs["input_ids"].shape[1]
        mlm_logits = self.mlm_model.mlm_score(outputs.last_hidden_state[:, :text_len])
        mlm_loss = F.cross_entropy(mlm_logits.view(-1, self.config.vocab_size), mlm_labels.view(-1))
        itm_loss = F.cross_entropy(self.itm_score(outputs.pooler_output), itm_labels)
        return mlm_loss, itm_loss

    def itm_logits(self, inputs: dict[str, Tensor]) -> Tensor:
        return self.itm_score(self.mlm_model.vilt(**inputs).pooler_output)


def transformers_to_vlp(hf: TransformersSide, depth: int) -> dict[str, Tensor]:
    """The transformers side's weights under vlp's keys: every vlp key, q/k/v concatenated into qkv."""
    source = hf.state_dict()
    vilt = "mlm_model.vilt."
    target: dict[str, Tensor] = {}

    def copy(vlp_key: str, hf_key: str) -> None:
        target[vlp_key] = source[hf_key]

    for suffix in ("weight", "bias"):
        copy(f"model.text_embedder.norm.{suffix}", f"{vilt}embeddings.text_embeddings.LayerNorm.{suffix}")
        copy(
            f"model.visual_embedder.patch_embed.proj.{suffix}",
            f"{vilt}embeddings.patch_embeddings.projection.{suffix}",
        )
        copy(f"model.encoder.norm.{suffix}", f"{vilt}layernorm.{suffix}")
        copy(f"model.pooler.dense.{suffix}", f"{vilt}pooler.dense.{suffix}")
        copy(f"mlm.head.dense.{suffix}", f"mlm_model.mlm_score.transform.dense.{suffix}")
        copy(f"mlm.head.norm.{suffix}", f"mlm_model.mlm_score.transform.LayerNorm.{suffix}")
        copy(f"itm.head.fc.{suffix}", f"itm_score.{suffix}")
        for i in range(depth):
            ours, theirs = f"model.encoder.blocks.{i}.", f"{vilt}encoder.layer.{i}."
            copy(f"{ours}norm1.{suffix}", f"{theirs}layernorm_before.{suffix}")
            copy(f"{ours}norm2.{suffix}", f"{theirs}layernorm_after.{suffix}")
            copy(f"{ours}attn.proj.{suffix}", f"{theirs}attention.output.dense.{suffix}")
            copy(f"{ours}mlp.fc1.{suffix}", f"{theirs}intermediate.dense.{suffix}")
            copy(f"{ours}mlp.fc2.{suffix}", f"{theirs}output.dense.{suffix}")
            target[f"{ours}attn.qkv.{suffix}"] = torch.cat(
                [source[f"{theirs}attention.attention.{name}.{suffix}"] for name in ("query", "key", "value")]
            )
    for name in ("word", "position", "token_type"):
        copy(
            f"model.text_embedder.{name}_embeddings.weight",
            f"{vilt}embeddings.text_embeddings.{name}_embeddings.weight",
        )
    copy("model.visual_embedder.cls_token", f"{vilt}embeddings.cls_token")
    copy("model.visual_embedder.pos_embed", f"{vilt}embeddings.position_embeddings")
    copy("model.token_type_embeddings.weight", f"{vilt}embeddings.token_type_embeddings.weight")
    copy("mlm.head.decoder.weight", "mlm_model.mlm_score.decoder.weight")
    copy("mlm.head.bias", "mlm_model.mlm_score.decoder.bias")
    return target
