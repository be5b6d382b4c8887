"""``F.scaled_dot_product_attention`` with the CPU kernel choice that is fast in bf16.

On CPU, PyTorch's fused ("flash") SDPA kernel is the fast one in fp32, but in bf16 / fp16 its backward
is several times slower than the unfused math path. Measured here (2-core AVX-512-bf16 CPU, torch 2.14,
forward + backward, ``benchmarks/RESULTS.md``): ``[32, 4, 46, 32]`` flash 12.7 ms vs math 2.8 ms in
bf16 (fp32: flash 4.5 ms, math 7.0 ms); ``[8, 12, 185, 64]`` flash 45.8 ms vs math 35.3 ms in bf16.
So every attention in vlp goes through :func:`sdpa`, which pins the math backend for reduced-precision
CPU tensors and leaves the choice to PyTorch everywhere else (on CUDA: flash / memory-efficient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

_REDUCED_PRECISION = (torch.bfloat16, torch.float16)


def uses_math_backend(query: Tensor) -> bool:
    """True where :func:`sdpa` pins the math backend: reduced-precision tensors on CPU."""
    return query.device.type == "cpu" and query.dtype in _REDUCED_PRECISION


def sdpa(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
) -> Tensor:
    """``F.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal)``."""
    if uses_math_backend(query):
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(
                query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal
            )
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal
    )
