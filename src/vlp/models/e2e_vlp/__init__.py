"""E2E-VLP (ACL 2021): CNN grid tokens into a transformer encoder with the text, and a DETR-style decoder
for object queries and captions."""

from vlp.models.e2e_vlp.model import E2EVLP

__all__ = ["E2EVLP"]
