"""The converters a registry entry can name, imported only when used (each pulls in its source's layout).

A converter is ``convert(state: Mapping[str, Tensor], source: str) -> Converted`` (see
:mod:`vlp.zoo.converted`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

from torch import Tensor

from vlp.zoo.converted import Converted

CONVERTERS: dict[str, str] = {
    "vilt-official": "vlp.zoo.vilt_convert:convert_official",
    "vilt-hf": "vlp.zoo.vilt_convert:convert_hf",
    "vqgan-taming": "vlp.zoo.taming:convert_vq",
    "vqgan-taming-gumbel": "vlp.zoo.taming:convert_gumbel",
    "detr-official": "vlp.zoo.detr:convert_official",
    "detr-hf": "vlp.zoo.detr:convert_hf",
    "timm-vit": "vlp.zoo.timm_weights:convert_vit",
    "timm-resnet": "vlp.zoo.timm_weights:convert_resnet",
}


def converter(name: str) -> Callable[[Mapping[str, Tensor], str], Converted]:
    """The converter function called ``name``."""
    if name not in CONVERTERS:
        raise KeyError(f"no zoo converter {name!r}; known: {sorted(CONVERTERS)}")
    module, _, function = CONVERTERS[name].partition(":")
    return getattr(importlib.import_module(module), function)
