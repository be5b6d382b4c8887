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
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

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
    place as a 0 / -inf bias, which costs one pass forward and nothing backward. Without dropout, and
    when query, key and value share their batch dimensions, forward and backward are
    :class:`ExplicitAttention`'s.
    """
    scale = 1.0 / math.sqrt(query.shape[-1])
    bias, no_key = additive_mask(query, key, attn_mask, is_causal)
    same_batch = query.shape[:-2] == key.shape[:-2] == value.shape[:-2]
    if dropout_p == 0.0 and same_batch and (bias is None or not bias.requires_grad):
        return ExplicitAttention.apply(query, key, value, bias, no_key, scale)
    scores = torch.matmul(query * scale, key.transpose(-2, -1))
    if bias is not None:
        scores = scores + bias if bias.requires_grad else scores.add_(bias)
    probs = torch.softmax(scores, dim=-1)
    if no_key is not None:  # rows with no allowed key: zeros, as SDPA gives, instead of NaN
        probs = probs.masked_fill(no_key, 0.0)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return torch.matmul(probs, value)


def additive_mask(
    query: Tensor, key: Tensor, attn_mask: Tensor | None, is_causal: bool
) -> tuple[Tensor | None, Tensor | None]:
    """SDPA's mask arguments as one bias to add to the scores (``None``: nothing to add), in the
    query's dtype, and the query rows that may attend to no key at all (``[..., N, 1]`` bool, ``None``
    when every row has one)."""
    allowed = None
    if is_causal:
        length, keys = query.shape[-2], key.shape[-2]  # top-left aligned, as SDPA's is_causal
        allowed = torch.ones(length, keys, dtype=torch.bool, device=query.device).tril()
    bias = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = attn_mask if allowed is None else allowed & attn_mask
        else:
            bias = attn_mask.to(query.dtype)
    no_key = None
    if allowed is not None:
        blocked = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device)
        blocked.masked_fill_(~allowed, float("-inf"))
        bias = blocked if bias is None else bias + blocked
        has_key = allowed.any(dim=-1, keepdim=True)
        # compiled, no_key is always kept: zeroing no row changes nothing, and reading the flag
        # would be a host sync and a graph break
        if torch.compiler.is_compiling() or not bool(has_key.all()):
            no_key = ~has_key
    return bias, no_key


class ExplicitAttention(torch.autograd.Function):
    """``softmax((q * scale) k^T + bias) v`` over ``[..., N, d]`` inputs with the same batch dimensions,
    as two batched matmuls forward and four backward; it keeps the scaled q, k, v and the probabilities.

    It computes exactly what autograd computes through the same formula (same kernels, same roundings:
    a test checks the outputs and gradients bit for bit), without autograd's copies of the transposed
    operands of its 4-D matmuls and of the expanded and reshaped views around them: every matmul here
    reads the ``[batch, N, d]`` operands kept from the forward. Query rows in ``no_key`` (``[..., N, 1]``,
    they may attend to nothing) give zero outputs and gradients, as SDPA's rows do.
    """

    @staticmethod
    def forward(
        ctx: Any,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        bias: Tensor | None,
        no_key: Tensor | None,
        scale: float,
    ) -> Tensor:
        batch, length, keys = query.shape[:-2], query.shape[-2], key.shape[-2]
        q = (query * scale).reshape(-1, length, query.shape[-1])  # scaled before the matmul, as autograd's
        k, v = (t.reshape(-1, *t.shape[-2:]) for t in (key, value))
        scores = torch.bmm(q, k.transpose(1, 2)).view(*batch, length, keys)
        if bias is not None:
            scores.add_(bias)
        probs = torch.softmax(scores, dim=-1)
        if no_key is not None:
            probs.masked_fill_(no_key, 0.0)
        ctx.scale = scale
        ctx.shapes = (query.shape, key.shape, value.shape)
        ctx.save_for_backward(q, k, v, probs)
        return torch.bmm(probs.view(-1, length, keys), v).view(*batch, length, v.shape[-1])

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, probs = ctx.saved_tensors
        query_shape, key_shape, value_shape = ctx.shapes
        length, keys = probs.shape[-2:]
        grad = grad.reshape(-1, length, grad.shape[-1]).to(v.dtype)
        flat_probs = probs.view(-1, length, keys)
        grad_query = grad_key = grad_value = None
        if ctx.needs_input_grad[2]:
            grad_value = torch.bmm(flat_probs.transpose(1, 2), grad).view(value_shape)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            grad_probs = torch.bmm(grad, v.transpose(1, 2)).view_as(probs)
            # rows of zero probability (masked keys, rows in no_key) get zero score gradients
            grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
            grad_scores = grad_scores.view(-1, length, keys)
            if ctx.needs_input_grad[0]:
                grad_query = torch.bmm(grad_scores, k).mul_(ctx.scale).view(query_shape)
            if ctx.needs_input_grad[1]:  # q is the scaled query
                grad_key = torch.bmm(grad_scores.transpose(1, 2), q).view(key_shape)
        return grad_query, grad_key, grad_value, None, None, None


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
    is a pass over every score that changes nothing. (On CUDA the check would cost a device sync, and
    under ``torch.compile`` a graph break, so there the mask is passed as given.)
    """
    if (
        attn_mask is not None
        and attn_mask.dtype == torch.bool
        and query.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and bool(attn_mask.all())
    ):
        attn_mask = None
    if uses_explicit_path(query):
        return explicit_attention(query, key, value, attn_mask, dropout_p, is_causal)
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal
    )
