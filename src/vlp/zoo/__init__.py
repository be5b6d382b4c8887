"""Checkpoints in and out: converters from other code bases and from vlp's own sharded runs."""

from vlp.zoo.consolidate import consolidate_checkpoint, save_consolidated

__all__ = ["consolidate_checkpoint", "save_consolidated"]
