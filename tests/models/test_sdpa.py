"""vlp.models.layers.attention: the explicit bf16 CPU path computes SDPA's attention, masks included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlp.models.layers.attention import additive_mask, explicit_attention, sdpa, uses_explicit_path


def _qkv(dtype: torch.dtype, length: int = 7) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2, 3, length, 8, generator=gen).to(dtype) for _ in range(3))  # type: ignore[return-value]


def _padding_mask() -> torch.Tensor:
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 5:] = False
    return mask


def test_path_choice() -> None:
    assert uses_explicit_path(torch.zeros(1, dtype=torch.bfloat16))
    assert uses_explicit_path(torch.zeros(1, dtype=torch.float16))
    assert not uses_explicit_path(torch.zeros(1))


def test_fp32_is_sdpa_exactly() -> None:
    q, k, v = _qkv(torch.float32)
    mask = _padding_mask()
    torch.testing.assert_close(sdpa(q, k, v, attn_mask=mask), F.scaled_dot_product_attention(q, k, v, mask))


@pytest.mark.parametrize(
    "mask_kind", ["none", "padding", "causal", "float", "empty_row"], ids=lambda kind: f"mask={kind}"
)
def test_explicit_path_equals_sdpa_in_fp32(mask_kind: str) -> None:
    """Run in fp32 the explicit formula must give SDPA's output to float rounding, for every mask form."""
    q, k, v = _qkv(torch.float32)
    kwargs: dict = {}
    if mask_kind == "padding":
        kwargs["attn_mask"] = _padding_mask()
    elif mask_kind == "causal":
        kwargs["is_causal"] = True
    elif mask_kind == "float":
        kwargs["attn_mask"] = torch.randn(2, 1, 7, 7, generator=torch.Generator().manual_seed(1))
    elif mask_kind == "empty_row":
        mask = torch.ones(2, 1, 7, 7, dtype=torch.bool)
        mask[0, 0, 3] = False  # query 3 of sample 0 may attend to nothing: SDPA gives zeros
        kwargs["attn_mask"] = mask
    expected = F.scaled_dot_product_attention(q, k, v, **kwargs)
    torch.testing.assert_close(explicit_attention(q, k, v, **kwargs), expected, atol=1e-6, rtol=1e-5)
    # in bf16 (matmuls and softmax in bf16) the same masks give the fp32 result to bf16 rounding
    low = {
        key: value.bfloat16() if torch.is_tensor(value) and value.is_floating_point() else value
        for key, value in kwargs.items()
    }
    out = explicit_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), **low)
    assert out.dtype == torch.bfloat16 and not out.isnan().any()
    torch.testing.assert_close(out.float(), expected, atol=3e-2, rtol=3e-2)


def test_bf16_matches_fp32_reference_and_masks_padding() -> None:
    q, k, v = _qkv(torch.bfloat16)
    mask = _padding_mask()
    out = sdpa(q, k, v, attn_mask=mask)
    assert out.dtype == torch.bfloat16
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), mask)
    torch.testing.assert_close(out.float(), reference, atol=3e-2, rtol=3e-2)
    v2 = v.clone()
    v2[1, :, 5:] = 100.0  # a masked key's value does not reach the output
    torch.testing.assert_close(sdpa(q, k, v2, attn_mask=mask)[1], out[1])


def test_causal_bf16_ignores_later_keys() -> None:
    q, k, v = _qkv(torch.bfloat16)
    out = sdpa(q, k, v, is_causal=True)
    k2, v2 = k.clone(), v.clone()
    k2[..., 4:, :] += 5.0
    v2[..., 4:, :] -= 7.0
    torch.testing.assert_close(sdpa(q, k2, v2, is_causal=True)[..., :4, :], out[..., :4, :])


def _mask_kwargs(mask_kind: str, length: int = 7) -> dict:
    if mask_kind == "padding":
        return {"attn_mask": _padding_mask()}
    if mask_kind == "causal":
        return {"is_causal": True}
    if mask_kind == "causal_and_padding":
        return {"attn_mask": _padding_mask(), "is_causal": True}
    if mask_kind == "float":
        return {"attn_mask": torch.randn(2, 1, length, length, generator=torch.Generator().manual_seed(1))}
    if mask_kind == "empty_row":
        mask = torch.ones(2, 1, length, length, dtype=torch.bool)
        mask[0, 0, 3] = False
        return {"attn_mask": mask}
    return {}


@pytest.mark.parametrize(
    "mask_kind",
    ["none", "padding", "causal", "causal_and_padding", "float", "empty_row"],
    ids=lambda kind: f"mask={kind}",
)
def test_explicit_backward_equals_sdpa_gradients_in_fp64(mask_kind: str) -> None:
    """ExplicitAttention's hand-written backward against autograd through SDPA, at fp64 precision,
    with q, k, v non-contiguous views of one projection (as the transformer passes them)."""
    gen = torch.Generator().manual_seed(2)
    qkv = torch.randn(2, 7, 3, 3, 8, generator=gen, dtype=torch.float64)
    weights = torch.randn(2, 3, 7, 8, generator=gen, dtype=torch.float64)
    kwargs = _mask_kwargs(mask_kind)
    if "attn_mask" in kwargs and kwargs["attn_mask"].is_floating_point():
        kwargs["attn_mask"] = kwargs["attn_mask"].double()
    reference_kwargs = kwargs
    if mask_kind == "causal_and_padding":  # SDPA takes one or the other: give it both as one mask
        reference_kwargs = {"attn_mask": torch.ones(7, 7, dtype=torch.bool).tril() & _padding_mask()}
    grads = []
    for attend, arguments in (
        (explicit_attention, kwargs),
        (F.scaled_dot_product_attention, reference_kwargs),
    ):
        leaf = qkv.clone().requires_grad_()
        q, k, v = (t.transpose(1, 2) for t in leaf.unbind(2))
        out = attend(q, k, v, **arguments)
        (out * weights).sum().backward()
        grads.append((out.detach(), leaf.grad))
    (out, grad), (expected_out, expected_grad) = grads
    torch.testing.assert_close(out, expected_out, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(grad, expected_grad, atol=1e-12, rtol=1e-10)
    if mask_kind == "empty_row":  # the row that attends to nothing passes no gradient to any key
        assert torch.equal(out[0, :, 3], torch.zeros_like(out[0, :, 3]))


@pytest.mark.parametrize("mask_kind", ["none", "padding", "causal", "float"], ids=lambda kind: f"mask={kind}")
def test_explicit_attention_is_autograds_formula_bit_for_bit_in_bf16(mask_kind: str) -> None:
    """The hand-written backward changes no rounding: outputs and gradients equal autograd's through
    ``softmax((q * scale) k^T + bias) v`` exactly, so a bf16 training run is the same run."""
    gen = torch.Generator().manual_seed(3)
    qkv = torch.randn(2, 7, 3, 3, 8, generator=gen).bfloat16()
    weights = torch.randn(2, 3, 7, 8, generator=gen).bfloat16()
    kwargs = _mask_kwargs(mask_kind)
    if "attn_mask" in kwargs and kwargs["attn_mask"].is_floating_point():
        kwargs["attn_mask"] = kwargs["attn_mask"].bfloat16()

    def autograd_formula(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        bias, no_key = additive_mask(q, k, kwargs.get("attn_mask"), kwargs.get("is_causal", False))
        assert no_key is None
        scores = torch.matmul(q * (1.0 / 8**0.5), k.transpose(-2, -1))
        if bias is not None:
            scores.add_(bias)
        return torch.matmul(torch.softmax(scores, dim=-1), v)

    results = []
    for attend in (lambda q, k, v: explicit_attention(q, k, v, **kwargs), autograd_formula):
        leaf = qkv.clone().requires_grad_()
        q, k, v = (t.transpose(1, 2) for t in leaf.unbind(2))
        out = attend(q, k, v)
        (out * weights).sum().backward()
        results.append((out.detach(), leaf.grad))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_explicit_backward_leaves_masked_keys_without_gradient() -> None:
    q, k, v = (t.requires_grad_() for t in _qkv(torch.bfloat16))
    mask = _padding_mask()
    sdpa(q, k, v, attn_mask=mask).float().square().sum().backward()
    assert torch.equal(k.grad[1, :, 5:], torch.zeros_like(k.grad[1, :, 5:]))
    assert torch.equal(v.grad[1, :, 5:], torch.zeros_like(v.grad[1, :, 5:]))
    assert k.grad[0, :, 5:].abs().sum() > 0


def test_bf16_gradients_match_fp32() -> None:
    q, k, v = (t.requires_grad_() for t in _qkv(torch.bfloat16))
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    mask = _padding_mask()
    sdpa(q, k, v, attn_mask=mask).float().square().sum().backward()
    F.scaled_dot_product_attention(q32, k32, v32, mask).square().sum().backward()
    for low, high in ((q, q32), (k, k32), (v, v32)):
        torch.testing.assert_close(low.grad.float(), high.grad, atol=0.1, rtol=0.05)


def test_dropout_is_applied_in_training_only_when_asked() -> None:
    q, k, v = _qkv(torch.bfloat16)
    torch.manual_seed(0)
    dropped = sdpa(q, k, v, dropout_p=0.5)
    assert not torch.equal(dropped, sdpa(q, k, v))
