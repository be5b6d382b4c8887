"""E2E-VLP's (and Pixel-BERT's) visual embedder: a CNN's last feature map as a grid of tokens."""

from __future__ import annotations

import math
from pathlib import Path

import timm
import torch
from timm.layers import freeze_batch_norm_2d
from torch import Tensor, nn

from vlp.checkpoints import torch_load
from vlp.models.embedders.base import VisualEmbedder, VisualTokens


class CNNGridEmbedder(VisualEmbedder):
    """A timm CNN's last stage → 1x1 conv to ``dim`` → ``h·w`` tokens with DETR's 2-D sine positions.

    As DETR's backbone + ``input_proj``: for ResNet-50 the last stage has 2048 channels at stride 32,
    so a 384x640 image gives 12x20 = 240 tokens. Padded pixels are zeroed before the CNN, so what the
    padding holds never reaches a token. A token is real when its stridexstride cell holds at least
    one real pixel. DETR instead resizes the pixel mask to the feature size with nearest
    interpolation, which samples pixel ``floor(i·H/h)``: the same answer when the padded size is a
    multiple of the stride, but a cell over padding only can come out real otherwise (``H = 70``,
    ``h = 3``: token 1 samples pixel 23, inside a 30-pixel image, while its cell is pixels 32-63).

    Real tokens still see the padding *size*: convolutions near the border of the real region read the
    padding (zeros) where an unpadded image would read the convolutions' own zero padding, and deeper
    layers differ from there; DETR has the same property. Only the token mask and the positions are
    exactly padding-invariant.

    A separate backbone learning rate (DETR: 1e-5 against 1e-4) is the task's
    ``lr_multipliers: {model.visual_embedder.backbone: 0.1}`` (parameter-name prefix, the task holds
    the assembly as ``model``); the 1x1 projection ``input_proj`` keeps the base rate.

    Args:
        dim: token width.
        backbone: a timm model name, built with ``features_only=True``.
        out_index: which feature level to use (timm ``out_indices``); ``-1`` is the last (stride 32).
        freeze_bn: replace every BatchNorm with a frozen one (fixed statistics and affine, no
            parameters), as DETR does with pre-trained weights; a small batch's statistics are noise.
            Leave it off when training the CNN from scratch.
        pretrained: start from timm's pre-trained weights (timm downloads them; never in tests).
        init_from: a local timm checkpoint (``.safetensors`` or ``.pth``/``.pt``/``.bin``) of the full
            classification model. Every backbone key must be in it with the right shape; keys of
            modules the features-only backbone drops (the classifier, later stages) are ignored; any
            other mismatch fails, naming the keys.
        temperature: of the sine positions (DETR: 10000).
        norm_groups: a GroupNorm of that many groups after ``input_proj`` (Deformable DETR's
            ``input_proj``: 1x1 conv + GroupNorm(32)); ``0``: none (DETR). Each image's tokens get mean 0
            and variance 1 per group over their positions, so they enter the encoder at the scale of
            LayerNorm'd word embeddings. A ResNet-18 trained from scratch gave shapes tokens of norm ~4
            against the text's ~11 at width 128, and the detection classifier learnt next to nothing
            (see benchmarks/RESULTS.md, E2E-VLP on shapes). The statistics include padded positions.
    """

    def __init__(
        self,
        dim: int = 256,
        backbone: str = "resnet50",
        out_index: int = -1,
        freeze_bn: bool = False,
        pretrained: bool = False,
        init_from: str | None = None,
        temperature: float = 10000.0,
        norm_groups: int = 0,
    ) -> None:
        super().__init__()
        if norm_groups < 0 or (norm_groups and dim % norm_groups):
            raise ValueError(f"norm_groups must be 0 or a divisor of dim={dim}, got {norm_groups}")
        if dim % 4:
            raise ValueError(
                f"dim must be divisible by 4 for the 2-D sine positions (sin and cos per axis), got {dim}"
            )
        self.dim = dim
        self.backbone_name = backbone
        self.temperature = temperature
        self.backbone = timm.create_model(
            backbone, pretrained=pretrained, features_only=True, out_indices=(out_index,)
        )
        self.channels = int(self.backbone.feature_info.channels()[-1])
        self.stride = int(self.backbone.feature_info.reduction()[-1])
        self.input_proj = nn.Conv2d(self.channels, dim, kernel_size=1)
        self.input_norm = nn.GroupNorm(norm_groups, dim) if norm_groups else None
        if init_from is not None:
            self.load_backbone(load_state_dict_file(init_from), source=init_from)
        self.freeze_bn = freeze_bn
        if freeze_bn:
            self.backbone = freeze_batch_norm_2d(self.backbone)

    def forward(self, pixels: Tensor, pixel_mask: Tensor | None = None) -> VisualTokens:
        batch, _, height, width = pixels.shape
        if pixel_mask is None:
            pixel_mask = torch.ones(batch, height, width, dtype=torch.bool, device=pixels.device)
        elif pixel_mask.shape != (batch, height, width):
            raise ValueError(
                f"pixel_mask must be [B, H, W] = {(batch, height, width)} like pixels, got {tuple(pixel_mask.shape)}"
            )
        else:
            pixel_mask = pixel_mask.bool()
            pixels = pixels.masked_fill(~pixel_mask[:, None], 0.0)
        features = self.backbone(pixels)[-1]  # [B, C, h, w]
        x = self.input_proj(features)
        if self.input_norm is not None:
            x = self.input_norm(x)
        h, w = x.shape[-2:]
        token_mask = cell_mask(pixel_mask, self.stride, (h, w))
        pos = sine_positions(token_mask, self.dim, self.temperature).to(x.dtype)
        return VisualTokens(
            embeds=x.flatten(2).transpose(1, 2),
            mask=token_mask.flatten(1),
            pos=pos.flatten(2).transpose(1, 2),
            grid=(h, w),
        )

    def load_backbone(self, state_dict: dict[str, Tensor], source: str = "state dict") -> None:
        """Load a timm classification model's weights into the features-only backbone (strict)."""
        own = self.backbone.state_dict()
        kept = {key.split(".")[0] for key in own}
        relevant: dict[str, Tensor] = {}
        for key, value in state_dict.items():
            name = backbone_key(key, kept)
            # BatchNorm step counters carry no weights; a frozen BatchNorm has none to receive them
            if name is not None and (name in own or not name.endswith("num_batches_tracked")):
                relevant[name] = value
        missing = [k for k in own if k not in relevant and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in relevant if k not in own]
        mismatched = [
            f"{k} {tuple(v.shape)} (backbone {tuple(own[k].shape)})"
            for k, v in relevant.items()
            if k in own and v.shape != own[k].shape
        ]
        if missing or unexpected or mismatched:
            problems = [
                f"{label} {names[:8]}{' ...' if len(names) > 8 else ''} ({len(names)})"
                for label, names in (("missing", missing), ("unexpected", unexpected), ("shape", mismatched))
                if names
            ]
            raise ValueError(
                f"init_from={source} does not fit timm {self.backbone_name}: " + "; ".join(problems)
            )
        for key in own:  # a checkpoint without BatchNorm step counters loses nothing
            relevant.setdefault(key, own[key])
        self.backbone.load_state_dict(relevant, strict=True)


def backbone_key(key: str, modules: set[str]) -> str | None:
    """A full model's key under the features-only backbone's naming, or ``None`` when it drops it.

    timm's ``FeatureListNet`` flattens top-level ``nn.Sequential`` children one level: ``stages.0.x``
    becomes ``stages_0.x``.
    """
    parts = key.split(".")
    if parts[0] in modules:
        return key
    if len(parts) > 2 and f"{parts[0]}_{parts[1]}" in modules:
        return ".".join([f"{parts[0]}_{parts[1]}", *parts[2:]])
    return None


def load_state_dict_file(source: str) -> dict[str, Tensor]:
    """A state dict from a local ``.safetensors`` or ``torch.save`` file (``weights_only=True``)."""
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"init_from={source}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix in {".pth", ".pt", ".bin", ".ckpt"}:
        state = torch_load(path)
        for wrapper in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
        return state
    raise ValueError(
        f"init_from={source}: unknown checkpoint format (expected .safetensors, .pth, .pt, .bin)"
    )


def cell_mask(pixel_mask: Tensor, stride: int, size: tuple[int, int]) -> Tensor:
    """``[B, h, w]``: True where the token's ``stride x stride`` pixel cell holds a real pixel.

    The mask is padded with False to whole cells; a backbone whose grid rounds down (drops the last
    partial cell) gets the grid cropped to its size.
    """
    batch, height, width = pixel_mask.shape
    rows, cols = math.ceil(height / stride), math.ceil(width / stride)
    h, w = size
    if h > rows or w > cols:
        raise ValueError(
            f"the backbone's {h}x{w} grid is larger than the {rows}x{cols} cells of stride {stride} "
            f"over {height}x{width} pixels"
        )
    padded = pixel_mask.new_zeros(batch, rows * stride, cols * stride)
    padded[:, :height, :width] = pixel_mask
    cells = padded.view(batch, rows, stride, cols, stride).any(dim=4).any(dim=2)
    return cells[:, :h, :w]


def sine_positions(mask: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """DETR's normalised 2-D sine positions ``[B, dim, h, w]`` of a token mask ``[B, h, w]``.

    Row and column indices count real tokens only (a cumulative sum of the mask) and are divided by
    the number of real rows of that column (columns of that row), times 2π: a real token at row ``i``
    of an image ``n`` rows high sits at ``2π (i + 1) / n`` however much padding follows. The first
    ``dim / 2`` channels encode y, the rest x, each as interleaved ``sin, cos`` of that value over
    frequencies ``temperature ** (2k / (dim / 2))``.
    """
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4, got {dim}")
    scale, eps = 2 * math.pi, 1e-6
    real = mask.float()
    y = real.cumsum(1)
    x = real.cumsum(2)
    y = y / (y[:, -1:, :] + eps) * scale
    x = x / (x[:, :, -1:] + eps) * scale
    half = dim // 2
    freq = torch.arange(half, dtype=torch.float, device=mask.device)
    freq = temperature ** (2 * torch.div(freq, 2, rounding_mode="floor") / half)
    pos_x = x[..., None] / freq
    pos_y = y[..., None] / freq
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
