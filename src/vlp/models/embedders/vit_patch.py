"""ViLT's visual embedder: a linear patch projection straight from pixels, no CNN, no detector."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlp.checkpoints import torch_load
from vlp.models.embedders.base import VisualEmbedder, VisualTokens

VIT_EMBEDDING_KEYS = ("patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed")


class ViTPatchEmbedder(VisualEmbedder):
    """Conv patch projection + image [CLS] + learned positions interpolated to each image's grid.

    Args:
        dim: token width.
        patch_size: side of a square patch in pixels.
        pos_grid: side of the learned position table (``image_size // patch_size`` of pre-training);
            each image's positions are bilinearly interpolated from it to that image's own patch
            grid (``align_corners=True``, as official ViLT), so padding never shifts them.
        max_image_len: at train time, keep this many patches per image, sampled at random among
            the real ones (ViLT's patch sampling); ``-1`` keeps all.
        sample_at_eval: also sample patches in eval mode (official ViLT does; the default keeps all).
        init_from: a local timm-format ViT state dict (``.safetensors`` / ``.pth``) or a timm model
            name (downloaded by timm, never in tests) to take patch, [CLS] and position weights from.
        pre_norm: a LayerNorm over ``patch + position`` (and [CLS] + its position) before the tokens
            leave the embedder, as CLIP's ``ln_pre`` and timm's ``norm_pre``; the positions are then
            folded into ``embeds`` and ``pos`` is ``None``. Off in official ViLT. From scratch it puts
            the image tokens at the text tokens' scale (the text embedder ends in a LayerNorm): a raw
            projection of 64-px shapes patches has a quarter of their spread, most of it one shared
            background direction, and the tiny shapes ViLT then took far longer to compare text with
            image (benchmarks/RESULTS.md, "ViLT pre-training on shapes").

    The patch projection's weights are a ``Conv2d`` (``patch_embed.proj``, timm's and official ViLT's
    layout), but it is computed as one matrix multiply over the flattened patches (:meth:`project`):
    the same sums as the stride-``patch_size`` convolution, whose backward on CPU cost more than a
    tenth of a ViLT-B/32 bf16 training step (``benchmarks/diagnostics/profile_vilt_step.py``).
    """

    def __init__(
        self,
        dim: int = 768,
        patch_size: int = 32,
        pos_grid: int = 12,
        max_image_len: int = -1,
        sample_at_eval: bool = False,
        in_chans: int = 3,
        init_from: str | None = None,
        pre_norm: bool = False,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.patch_size = patch_size
        self.pos_grid = pos_grid
        self.max_image_len = max_image_len
        self.sample_at_eval = sample_at_eval
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + pos_grid * pos_grid, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.norm_pre = nn.LayerNorm(dim, eps=norm_eps) if pre_norm else None
        if init_from is not None:
            self.load_vit_embedding(load_vit_state_dict(init_from), source=init_from)

    def project(self, pixels: Tensor) -> tuple[Tensor, int, int]:
        """``[B, C, H, W]`` pixels → patch tokens ``[B, h * w, D]`` (row-major) and the grid ``h, w``:
        ``patch_embed.proj``'s convolution as a linear map of each flattened ``[C, p, p]`` patch (pixels
        beyond the last whole patch are dropped, as the convolution drops them)."""
        batch, chans, height, width = pixels.shape
        p = self.patch_size
        h, w = height // p, width // p
        patches = pixels[:, :, : h * p, : w * p].reshape(batch, chans, h, p, w, p)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, h * w, chans * p * p)
        proj = self.patch_embed.proj
        return F.linear(patches, proj.weight.reshape(proj.weight.shape[0], -1), proj.bias), h, w

    def forward(self, pixels: Tensor, pixel_mask: Tensor | None = None) -> VisualTokens:
        embeds, h, w = self.project(pixels)  # [B, h * w, D]
        batch = embeds.shape[0]
        if pixel_mask is None:
            patch_mask = torch.ones(batch, h, w, dtype=torch.bool, device=embeds.device)
        else:
            # A patch is real when its top-left pixel is: images are padded in whole patches.
            patch_mask = pixel_mask[:, :: self.patch_size, :: self.patch_size][:, :h, :w]
        pos = self._positions(patch_mask, embeds.dtype)  # [B, D, h, w]
        pos = pos.flatten(2).transpose(1, 2)
        mask = patch_mask.flatten(1)
        if (
            self.max_image_len > 0
            and (self.training or self.sample_at_eval)
            and mask.shape[1] > self.max_image_len
        ):
            embeds, pos, mask = sample_patches(embeds, pos, mask, self.max_image_len)
        cls = self.cls_token.to(embeds.dtype).expand(batch, -1, -1)
        cls_pos = self.pos_embed[:, :1].to(pos.dtype).expand(batch, -1, -1)
        real = torch.ones(batch, 1, dtype=torch.bool, device=mask.device)
        tokens, positions = torch.cat([cls, embeds], 1), torch.cat([cls_pos, pos], 1)
        if self.norm_pre is not None:
            tokens, positions = self.norm_pre(tokens + positions), None
        return VisualTokens(
            embeds=tokens,
            mask=torch.cat([real, mask], 1),
            pos=positions,
            grid=(h, w),
            num_prefix=1,
        )

    def _positions(self, patch_mask: Tensor, dtype: torch.dtype) -> Tensor:
        """Per-image bilinear interpolation of the position table with one ``grid_sample`` (no host sync)."""
        batch, h, w = patch_mask.shape
        table = self.pos_embed[0, 1:].transpose(0, 1).reshape(1, self.dim, self.pos_grid, self.pos_grid)
        rows = patch_mask.any(dim=2).sum(1).clamp(min=1)  # real patch rows per image
        cols = patch_mask.any(dim=1).sum(1).clamp(min=1)
        ys = torch.arange(h, device=patch_mask.device, dtype=table.dtype)
        xs = torch.arange(w, device=patch_mask.device, dtype=table.dtype)
        gy = ys[None] / (rows[:, None] - 1).clamp(min=1) * 2 - 1  # [B, h]
        gx = xs[None] / (cols[:, None] - 1).clamp(min=1) * 2 - 1  # [B, w]
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # [B, h, w, 2]
        pos = F.grid_sample(
            table.expand(batch, -1, -1, -1), grid, mode="bilinear", padding_mode="border", align_corners=True
        )
        return pos.to(dtype)

    def load_vit_embedding(self, state_dict: dict[str, Tensor], source: str = "state dict") -> None:
        """Take patch projection, [CLS] and positions (resampled to ``pos_grid``) from a timm ViT."""
        missing = [key for key in VIT_EMBEDDING_KEYS if key not in state_dict]
        if missing:
            raise KeyError(f"{source}: not a timm ViT state dict, missing {missing}")
        pos = state_dict["pos_embed"]
        if (
            pos.shape[-1] != self.dim
            or state_dict["patch_embed.proj.weight"].shape != self.patch_embed.proj.weight.shape
        ):
            raise ValueError(
                f"{source}: patch_embed.proj.weight {tuple(state_dict['patch_embed.proj.weight'].shape)} does not fit "
                f"{tuple(self.patch_embed.proj.weight.shape)}"
            )
        if pos.shape[1] != self.pos_embed.shape[1]:
            from timm.layers import resample_abs_pos_embed

            pos = resample_abs_pos_embed(pos, new_size=(self.pos_grid, self.pos_grid), num_prefix_tokens=1)
        with torch.no_grad():
            self.patch_embed.proj.weight.copy_(state_dict["patch_embed.proj.weight"])
            self.patch_embed.proj.bias.copy_(state_dict["patch_embed.proj.bias"])
            self.cls_token.copy_(state_dict["cls_token"])
            self.pos_embed.copy_(pos)
            if self.norm_pre is not None and "norm_pre.weight" in state_dict:
                self.norm_pre.weight.copy_(state_dict["norm_pre.weight"])
                self.norm_pre.bias.copy_(state_dict["norm_pre.bias"])


def sample_patches(embeds: Tensor, pos: Tensor, mask: Tensor, keep: int) -> tuple[Tensor, Tensor, Tensor]:
    """Keep ``keep`` patches per image, chosen uniformly among the real ones (padding only if too few)."""
    scores = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, -1.0)
    index = scores.topk(keep, dim=1).indices.sort(dim=1).values
    gather = index[..., None].expand(-1, -1, embeds.shape[-1])
    return embeds.gather(1, gather), pos.gather(1, gather), mask.gather(1, index)


def load_vit_state_dict(source: str) -> dict[str, Tensor]:
    """A timm ViT state dict from a local file, or by timm model name (timm may download it)."""
    path = Path(source)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix in {".pth", ".pt", ".bin", ".ckpt"}:
        state = torch_load(path)
        return state.get("state_dict", state.get("model", state))
    if path.exists():
        raise ValueError(f"{source}: unknown checkpoint format (expected .safetensors, .pth, .pt, .bin)")
    import timm

    return timm.create_model(source, pretrained=True, num_classes=0).state_dict()
