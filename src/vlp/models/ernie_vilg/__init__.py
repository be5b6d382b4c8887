"""ERNIE-ViLG (arXiv 2112.15283): one seq2seq transformer over text and VQGAN codes for text->image and
image->text, with UniLM masks (seq2seq_mask), the paper's row / column / conv sparse attention
(sparse_patterns, sparse_blocks, sparse_attention), sampling and reranking (sampling, itm_scorer)."""

from vlp.models.ernie_vilg.model import ERNIEViLG

__all__ = ["ERNIEViLG"]
