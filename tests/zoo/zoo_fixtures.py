"""A tiny zoo entry served from a local file (a timm ViT the size of the test tasks' ViLT), and the sizes
and tolerance of the weight-conversion tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from vlp.zoo import registry
from vlp.zoo.fetch import sha256_of
from vlp.zoo.registry import Entry

# fp32 outputs of size ~1 from a converted model and its source, which run the same operations: 0 apart on
# the machine these tests were written on, but vlp's ViT positions come through grid_sample and its
# attention through other views of the qkv output, so another CPU's kernels may sum in another order (~1e-7).
ATOL = 1e-5
SIDE, PATCH = 64, 16  # the converted ViTs' image side and patch size
GRID = SIDE // PATCH


def tiny_vit_file(path: Path, dim: int = 32, image: int = 16, patch: int = 8) -> Path:
    """A random timm ViT (depth 2, 4 heads) saved as safetensors: what ``timm:vit_*`` entries hold."""
    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=image, patch_size=patch, embed_dim=dim, depth=2, num_heads=4, num_classes=3
    )
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    return path


def add_entry(
    monkeypatch: pytest.MonkeyPatch, path: Path, name: str = "test:tiny-vit", **changes: object
) -> Entry:
    """Register an entry for ``path`` (a ``file://`` URL, its real sha256) for the length of a test."""
    base = registry.ENTRIES["timm:vit_base_patch32_384"]
    entry = dataclasses.replace(
        base, name=name, filename="zoo-" + path.name, hub=None, url=path.resolve().as_uri(),
        sha256=sha256_of(path), **changes,
    )  # fmt: skip
    monkeypatch.setitem(registry.ENTRIES, name, entry)
    return entry
