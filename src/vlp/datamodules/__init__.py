"""Data: webdataset shards, transforms, collation into a typed :class:`~vlp.batch.Batch`."""
