"""Converters of published datasets' raw downloads into vlp's webdataset shards.

``python -m vlp data convert <dataset> --root RAW --out OUT`` (:mod:`~vlp.datamodules.convert.command`)
reads a raw download with the dataset's :class:`~vlp.datamodules.convert.base.DatasetConverter` and writes
its splits as shards with :func:`~vlp.datamodules.convert.writer.write_shards`, plus a ``manifest.json``
saying what was written and what was left out.

This package imports nothing heavy: the writer's image workers import it.
"""

from vlp.datamodules.convert.base import DatasetConverter, InputTreeError, Record

__all__ = ["DatasetConverter", "InputTreeError", "Record"]
