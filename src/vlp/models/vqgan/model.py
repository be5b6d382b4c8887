"""VQGAN (Esser et al. 2021): convolutional encoder, vector quantizer, decoder.

The module tree follows CompVis/taming-transformers (``taming/models/vqgan.py`` ``VQModel`` and
``taming/modules/diffusionmodules/model.py``) name for name, so a taming checkpoint's autoencoder keys
(``encoder.*``, ``decoder.*``, ``quantize.embedding.weight``, ``quant_conv.*``, ``post_quant_conv.*``) map
1:1 onto :class:`VQGAN`'s state dict; taming keeps its discriminator under ``loss.discriminator``, vlp in
:class:`~vlp.models.vqgan.discriminator.NLayerDiscriminator`. An EMA quantizer adds two statistics buffers
(``quantize.cluster_size``, ``quantize.embed_avg``) that taming does not have. ``quantizer="gumbel"``
takes :class:`~vlp.models.vqgan.gumbel.GumbelQuantizer` (taming's ``GumbelVQ``: ``quantize.proj.*`` and the
codebook ``quantize.embedding.weight``, which taming calls ``quantize.embed.weight``).

Pixels are in ``[-1, 1]`` (the shards' normalisation with mean = std = 0.5 gives exactly that).
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from vlp.checkpoints import check_state_matches, load_existing
from vlp.models.layers.attention import sdpa
from vlp.models.vqgan.gumbel import GumbelQuantizer, GumbelQuantizerOutput
from vlp.models.vqgan.quantizer import VectorQuantizer

CONFIG_KEY = "vqgan_config"
"""Key of the constructor arguments in a :class:`~vlp.tasks.vqgan.VQGANTask` checkpoint."""


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    if channels % groups:
        raise ValueError(f"VQGAN: {channels} channels do not split into norm_groups={groups} groups")
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """Two (GroupNorm, swish, 3x3 conv) layers plus a shortcut (1x1 ``nin_shortcut`` when widths differ)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels of a feature map (1x1 conv ``q``, ``k``, ``v``, ``proj_out``)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, h, w = x.shape
        y = self.norm(x)
        q, k, v = (
            conv(y).reshape(batch, 1, channels, h * w).transpose(2, 3) for conv in (self.q, self.k, self.v)
        )
        out = sdpa(q, k, v)  # scale 1/sqrt(C), as taming's
        return x + self.proj_out(out.transpose(2, 3).reshape(batch, channels, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding right and bottom by one (taming's asymmetric padding)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


@dataclass(frozen=True)
class ConvStack:
    """The shape the encoder and decoder share (taming's ``ddconfig`` less the image channels): base width
    ``ch`` times ``ch_mult`` per level, ``num_res_blocks`` per level, self-attention at
    ``attn_resolutions``, ``z_channels`` latent channels, GroupNorm with ``groups`` groups."""

    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    attn_resolutions: tuple[int, ...]
    resolution: int
    z_channels: int
    dropout: float
    groups: int


class Encoder(nn.Module):
    """``conv_in`` → per level ``down[i].block[j]`` (+ ``attn[j]`` at attention resolutions) and
    ``down[i].downsample`` (all levels but the last) → ``mid`` → ``norm_out`` → swish → ``conv_out``."""

    def __init__(self, in_channels: int, stack: ConvStack) -> None:
        super().__init__()
        ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels, dropout, groups = astuple(
            stack
        )
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        in_mult = (1, *ch_mult)
        res = resolution
        self.down = nn.ModuleList()
        block_in = ch
        for level, mult in enumerate(ch_mult):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            stage.attn = nn.ModuleList()
            block_in = ch * in_mult[level]
            for _ in range(num_res_blocks):
                stage.block.append(ResnetBlock(block_in, ch * mult, dropout, groups))
                block_in = ch * mult
                if res in attn_resolutions:
                    stage.attn.append(AttnBlock(block_in, groups))
            if level != len(ch_mult) - 1:
                stage.downsample = Downsample(block_in)
                res //= 2
            self.down.append(stage)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout, groups)
        self.mid.attn_1 = AttnBlock(block_in, groups)
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout, groups)
        self.norm_out = _norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            for j, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[j](h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """``conv_in`` → ``mid`` → per level, coarsest first, ``up[i].block[j]`` (``num_res_blocks + 1`` of
    them, + ``attn[j]``) and ``up[i].upsample`` (all levels but the first) → ``norm_out`` → swish → ``conv_out``.

    ``up`` is indexed by level as in taming (``up[0]`` is the finest), though it runs from the last.
    """

    def __init__(self, out_channels: int, stack: ConvStack) -> None:
        super().__init__()
        ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels, dropout, groups = astuple(
            stack
        )
        levels = len(ch_mult)
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (levels - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout, groups)
        self.mid.attn_1 = AttnBlock(block_in, groups)
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout, groups)
        stages: list[nn.Module] = []
        for level in reversed(range(levels)):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, ch * ch_mult[level], dropout, groups))
                block_in = ch * ch_mult[level]
                if res in attn_resolutions:
                    stage.attn.append(AttnBlock(block_in, groups))
            if level != 0:
                stage.upsample = Upsample(block_in)
                res *= 2
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)
        self.norm_out = _norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for stage in reversed(self.up):
            for j, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[j](h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


@dataclass
class VQGANOutput:
    """One autoencoding pass."""

    reconstruction: Tensor  # [B, 3, H, W]
    z_e: Tensor  # [B, code_dim, h, w] encoder output after quant_conv
    codes: Tensor  # [B, code_dim, h, w] chosen code vectors
    ids: Tensor  # [B, h, w] long
    kl: Tensor | None = None  # Gumbel quantizer: KL(softmax(logits) || uniform), mean over positions


class VQGAN(nn.Module):
    """Encoder → ``quant_conv`` → quantizer → ``post_quant_conv`` → Decoder.

    Args (taming's ``ddconfig`` names in brackets):
        resolution: training image side [resolution]; decides where attention sits, not a limit on
            input size (any side divisible by the downsampling factor works).
        ch, ch_mult, num_res_blocks, attn_resolutions, z_channels, dropout: the conv stack [same names].
        in_channels, out_channels: image channels [in_channels, out_ch].
        num_codes, code_dim: codebook size and width [n_embed, embed_dim].
        norm_groups: GroupNorm groups (taming: 32; CPU-sized channel counts may need fewer).
        ema, ema_decay, dead_code_threshold: see :class:`~vlp.models.vqgan.quantizer.VectorQuantizer`.
        quantizer: ``"vector"`` (nearest code, :class:`~vlp.models.vqgan.quantizer.VectorQuantizer`) or
            ``"gumbel"`` (logits over the codes, :class:`~vlp.models.vqgan.gumbel.GumbelQuantizer`).
        gumbel_temperature, gumbel_straight_through: the Gumbel quantizer's initial temperature and
            straight-through flag (training only).

    taming's f8 / 8192 model: ``resolution=256, ch=128, ch_mult=(1, 1, 2, 4), num_res_blocks=2,
    attn_resolutions=(32,), z_channels=256, num_codes=8192, code_dim=256``.
    """

    def __init__(
        self,
        resolution: int = 256,
        ch: int = 128,
        ch_mult: tuple[int, ...] = (1, 1, 2, 4),
        num_res_blocks: int = 2,
        attn_resolutions: tuple[int, ...] = (32,),
        z_channels: int = 256,
        num_codes: int = 8192,
        code_dim: int = 256,
        in_channels: int = 3,
        out_channels: int = 3,
        dropout: float = 0.0,
        norm_groups: int = 32,
        ema: bool = False,
        ema_decay: float = 0.99,
        dead_code_threshold: float = 0.0,
        quantizer: Literal["vector", "gumbel"] = "vector",
        gumbel_temperature: float = 1.0,
        gumbel_straight_through: bool = True,
    ) -> None:
        super().__init__()
        if not ch_mult:
            raise ValueError("VQGAN: ch_mult needs at least one level")
        if quantizer not in ("vector", "gumbel"):
            raise ValueError(f"VQGAN: quantizer must be 'vector' or 'gumbel', got {quantizer!r}")
        if quantizer == "gumbel" and (ema or dead_code_threshold > 0):
            raise ValueError(
                "VQGAN: ema and dead_code_threshold belong to the vector quantizer; with quantizer='gumbel' "
                "leave them at ema=false, dead_code_threshold=0"
            )
        self.config: dict[str, Any] = {
            "resolution": resolution,
            "ch": ch,
            "ch_mult": list(ch_mult),
            "num_res_blocks": num_res_blocks,
            "attn_resolutions": list(attn_resolutions),
            "z_channels": z_channels,
            "num_codes": num_codes,
            "code_dim": code_dim,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "dropout": dropout,
            "norm_groups": norm_groups,
            "ema": ema,
            "ema_decay": ema_decay,
            "dead_code_threshold": dead_code_threshold,
            "quantizer": quantizer,
            "gumbel_temperature": gumbel_temperature,
            "gumbel_straight_through": gumbel_straight_through,
        }
        self.resolution = resolution
        self.downsample_factor = 2 ** (len(ch_mult) - 1)
        if resolution % self.downsample_factor:
            raise ValueError(f"VQGAN: resolution {resolution} is not divisible by f={self.downsample_factor}")
        stack = ConvStack(
            ch,
            tuple(ch_mult),
            num_res_blocks,
            tuple(attn_resolutions),
            resolution,
            z_channels,
            dropout,
            norm_groups,
        )
        self.encoder = Encoder(in_channels, stack)
        self.decoder = Decoder(out_channels, stack)
        self.quantize: VectorQuantizer | GumbelQuantizer
        if quantizer == "gumbel":
            self.quantize = GumbelQuantizer(
                num_codes, code_dim, temperature=gumbel_temperature, straight_through=gumbel_straight_through
            )
        else:
            self.quantize = VectorQuantizer(
                num_codes, code_dim, ema=ema, decay=ema_decay, dead_code_threshold=dead_code_threshold
            )
        self.quant_conv = nn.Conv2d(z_channels, code_dim, 1)
        self.post_quant_conv = nn.Conv2d(code_dim, z_channels, 1)

    @property
    def num_codes(self) -> int:
        return self.quantize.num_codes

    @property
    def code_dim(self) -> int:
        return self.quantize.code_dim

    @property
    def grid(self) -> tuple[int, int]:
        """Code grid ``(h, w)`` of a ``resolution``-sized image."""
        side = self.resolution // self.downsample_factor
        return side, side

    @property
    def last_layer(self) -> Tensor:
        """The decoder's last weight, against which the GAN loss is balanced (taming's ``get_last_layer``)."""
        return self.decoder.conv_out.weight

    def _check_pixels(self, pixels: Tensor) -> None:
        if (
            pixels.ndim != 4
            or pixels.shape[-1] % self.downsample_factor
            or pixels.shape[-2] % self.downsample_factor
        ):
            raise ValueError(
                f"VQGAN: pixels must be [B, C, H, W] with H and W divisible by f={self.downsample_factor}, "
                f"got {tuple(pixels.shape)}"
            )

    def forward(self, pixels: Tensor) -> VQGANOutput:
        self._check_pixels(pixels)
        quantized = self.quantize(self.quant_conv(self.encoder(pixels)))
        return VQGANOutput(
            reconstruction=self.decode(quantized.z_q),
            z_e=quantized.z_e,
            codes=quantized.codes,
            ids=quantized.ids,
            kl=quantized.kl if isinstance(quantized, GumbelQuantizerOutput) else None,
        )

    def encode(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """``pixels [B, 3, H, W]`` → ``(z_q [B, code_dim, H/f, W/f], ids [B, H/f, W/f])``."""
        self._check_pixels(pixels)
        quantized = self.quantize(self.quant_conv(self.encoder(pixels)))
        return quantized.z_q, quantized.ids

    def decode(self, z_q: Tensor) -> Tensor:
        """Quantized map ``[B, code_dim, h, w]`` → pixels ``[B, 3, h*f, w*f]`` in about ``[-1, 1]``."""
        return self.decoder(self.post_quant_conv(z_q))

    def decode_ids(self, ids: Tensor) -> Tensor:
        """Code ids ``[B, h, w]`` → pixels."""
        if ids.ndim != 3:
            raise ValueError(f"VQGAN.decode_ids: ids must be [B, h, w], got {tuple(ids.shape)}")
        return self.decode(self.quantize.lookup(ids))

    @classmethod
    def from_checkpoint(cls, path: str | Path, prefix: str = "model.") -> VQGAN:
        """The VQGAN of a :class:`~vlp.tasks.vqgan.VQGANTask` checkpoint (a single ``.ckpt`` file).

        The architecture comes from the checkpoint's ``vqgan_config``, the weights from the keys under
        ``prefix``; every VQGAN key must be there and nothing else under the prefix, or the error names them.
        """
        path = Path(path)
        checkpoint = load_existing(path, f"VQGAN checkpoint {path} not found (a VQGANTask .ckpt file)")
        if not isinstance(checkpoint, dict) or CONFIG_KEY not in checkpoint:
            raise ValueError(f"{path}: no '{CONFIG_KEY}' entry; not a VQGANTask checkpoint")
        model = cls(**checkpoint[CONFIG_KEY])
        state = checkpoint.get("state_dict", {})
        model.load_vqgan_state(
            {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, str(path)
        )
        return model

    def load_vqgan_state(self, state: dict[str, Tensor], source: str) -> None:
        """Load every key strictly; a missing, unexpected or mis-shaped key is an error naming it."""
        check_state_matches(self.state_dict(), state, f"{source}: VQGAN weights")
        self.load_state_dict(state)
