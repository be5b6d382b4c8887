"""Checkpoints in and out: converters from other code bases and from vlp's own sharded runs."""

from vlp.zoo.consolidate import consolidate_checkpoint, save_consolidated
from vlp.zoo.pretrained import Pretrained, load, load_pretrained, save_pretrained

__all__ = [
    "Pretrained",
    "consolidate_checkpoint",
    "load",
    "load_pretrained",
    "save_consolidated",
    "save_pretrained",
]
