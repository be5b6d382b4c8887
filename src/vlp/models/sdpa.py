"""``F.scaled_dot_product_attention``, with an explicit bf16 path on CPU where that is faster.

On CPU, PyTorch's fused ("flash") SDPA kernel is the fast one in fp32, but in bf16 / fp16 its backward
is several times slower, and the unfused math backend upcasts bf16 inputs to fp32, so its matmuls run at
fp32 speed. For reduced-precision CPU tensors :func:`sdpa` therefore computes attention explicitly: the
two matmuls (``q k^T`` and ``p v``) in the inputs' dtype, where this CPU's bf16 units pay off, and the
softmax too (its CPU kernel accumulates in fp32). ``python -m vlp bench cpu-kernels`` measures
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
    """Attention as two matmuls and a softmax, all in the inputs' dtype; SDPA's semantics.

    The softmax stays in the reduced dtype, as autocast leaves it on CPU: PyTorch's CPU softmax kernel
    accumulates in fp32 internally, so its bf16 output equals an fp32 softmax rounded to bf16 (the
    rounding the second matmul's input needs anyway) up to the last bit in ~1e-5 of the entries, at a
    quarter of the cost of converting the scores to fp32 and back. The mask is added to the scores in
    place as a 0 / -inf bias, which costs one pass forward and nothing backward.
    """
    scale = 1.0 / math.sqrt(query.shape[-1])
    scores = torch.matmul(query * scale, key.transpose(-2, -1))
    allowed = None
    if is_causal:
        length, keys = query.shape[-2], key.shape[-2]  # top-left aligned, as SDPA's is_causal
        allowed = torch.ones(length, keys, dtype=torch.bool, device=query.device).tril()
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = attn_mask if allowed is None else allowed & attn_mask
        else:
            scores.add_(attn_mask.to(scores.dtype))
    if allowed is not None:
        bias = torch.zeros(allowed.shape, dtype=scores.dtype, device=scores.device)
        scores.add_(bias.masked_fill_(~allowed, float("-inf")))
    probs = torch.softmax(scores, dim=-1)
    if allowed is not None:
        has_key = allowed.any(dim=-1, keepdim=True)
        if not bool(has_key.all()):  # rows with no allowed key: zeros, as SDPA gives, instead of NaN
            probs = probs.masked_fill(~has_key, 0.0)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return torch.matmul(probs, value)


def sdpa(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
) -> Tensor:
    """``F.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal)``.

    On CPU a boolean mask that allows everything (a batch with no padding) is dropped first: applying it
    is a pass over every score that changes nothing. (On CUDA the check would cost a device sync, so
    there the mask is passed as given.)
    """
    if (
        attn_mask is not None
        and attn_mask.dtype == torch.bool
        and query.device.type == "cpu"
        and bool(attn_mask.all())
    ):
        attn_mask = None
    if uses_explicit_path(query):
        return explicit_attention(query, key, value, attn_mask, dropout_p, is_causal)
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal
    )
