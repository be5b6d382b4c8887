"""vlp.models.sdpa: the math backend is pinned for bf16 on CPU, and the result is SDPA's either way."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlp.models.sdpa import sdpa, uses_math_backend


def _qkv(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=gen).to(dtype) for _ in range(3))
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 5:] = False
    return q, k, v, mask


def test_backend_choice() -> None:
    assert uses_math_backend(torch.zeros(1, dtype=torch.bfloat16))
    assert uses_math_backend(torch.zeros(1, dtype=torch.float16))
    assert not uses_math_backend(torch.zeros(1))


def test_fp32_is_sdpa_exactly() -> None:
    q, k, v, mask = _qkv(torch.float32)
    torch.testing.assert_close(sdpa(q, k, v, attn_mask=mask), F.scaled_dot_product_attention(q, k, v, mask))


def test_bf16_matches_fp32_reference_and_masks_padding() -> None:
    q, k, v, mask = _qkv(torch.bfloat16)
    out = sdpa(q, k, v, attn_mask=mask)
    assert out.dtype == torch.bfloat16
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), mask)
    torch.testing.assert_close(out.float(), reference, atol=3e-2, rtol=3e-2)
    # a masked key's value does not reach the output
    v2 = v.clone()
    v2[1, :, 5:] = 100.0
    torch.testing.assert_close(sdpa(q, k, v2, attn_mask=mask)[1], out[1])


def test_bf16_gradients_flow() -> None:
    q, k, v, mask = (t.requires_grad_() if t.dtype != torch.bool else t for t in _qkv(torch.bfloat16))
    sdpa(q, k, v, attn_mask=mask, is_causal=False).float().square().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad.float()).all() for t in (q, k, v))
