"""Data: webdataset shards, transforms, collation into a typed :class:`~vlp.batch.Batch`."""

from vlp.datamodules.normalise import normalise_batch

__all__ = ["normalise_batch"]
