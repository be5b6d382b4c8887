"""Synthetic datasets generated on first use, written as ordinary webdataset shards."""
