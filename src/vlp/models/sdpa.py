"""``F.scaled_dot_product_attention``, with an explicit bf16 path on CPU where that is faster.

On CPU, PyTorch's fused ("flash") SDPA kernel is the fast one in fp32, but in bf16 / fp16 its backward
is several times slower, and the unfused math backend upcasts bf16 inputs to fp32, so its matmuls run at
fp32 speed. For reduced-precision CPU tensors :func:`sdpa` therefore computes attention explicitly: the
two matmuls (``q k^T`` and ``p v``) in the inputs' dtype, where this CPU's bf16 units pay off, and the
softmax in fp32 (as autocast does for ``torch.softmax``). ``python -m vlp bench cpu-kernels`` measures
the three (``benchmarks/RESULTS.md``). Everywhere else (fp32, CUDA) PyTorch chooses the kernel.

Semantics are SDPA's: a boolean ``attn_mask`` is True where a query may attend, a float mask is added
to the scores, ``is_causal`` adds the lower-triangular rule, and a query row with no key to attend to
gives zeros (as SDPA does), not NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_REDUCED_PRECISION = (torch.bfloat16, torch.float16)


def uses_explicit_path(query: Tensor) -> bool:
    """True where :func:`sdpa` computes attention explicitly: reduced-precision tensors on CPU."""
    return query.device.type == "cpu" and query.dtype in _REDUCED_PRECISION


def explicit_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
) -> Tensor:
    """Attention as two matmuls in the inputs' dtype around an fp32 softmax; SDPA's semantics."""
    scores = (query @ key.transpose(-2, -1)).float() * (1.0 / math.sqrt(query.shape[-1]))
    allowed = None
    if is_causal:
        length, keys = query.shape[-2], key.shape[-2]  # top-left aligned, as SDPA's is_causal
        allowed = torch.ones(length, keys, dtype=torch.bool, device=query.device).tril()
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = attn_mask if allowed is None else allowed & attn_mask
        else:
            scores = scores + attn_mask.float()
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if allowed is not None:  # rows with no allowed key: zeros, as SDPA gives, instead of NaN
        probs = probs.masked_fill(~allowed.any(dim=-1, keepdim=True), 0.0)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return probs.to(value.dtype) @ value


def sdpa(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
) -> Tensor:
    """``F.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal)``."""
    if uses_explicit_path(query):
        return explicit_attention(query, key, value, attn_mask, dropout_p, is_causal)
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal
    )
