"""Data: webdataset shards, transforms, collation into a typed :class:`~vlp.datamodules.schema.Batch`."""
