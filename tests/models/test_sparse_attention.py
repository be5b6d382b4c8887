"""Blocked sparse attention against the dense reference with the same mask (outputs and gradients),
causality per pattern and through the paper's schedule, padding, the drop-in contract with
``transformer.Attention`` / ``Block``, and bad input."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from vlp.models.ernie_vilg.seq2seq_mask import seq2seq_mask
from vlp.models.ernie_vilg.sparse_attention import (
    SparseSelfAttention,
    blocked_attention,
    dense_pattern_attention,
)
from vlp.models.ernie_vilg.sparse_blocks import block_plan
from vlp.models.ernie_vilg.sparse_patterns import ImageTextLayout, SparsePattern, ernie_vilg_schedule
from vlp.models.layers.transformer import Attention, TransformerEncoder

KINDS = ["row", "column", "conv"]
DIRECTIONS = ["text_to_image", "image_to_text"]


def padded_layout(
    text_len: int, grid: tuple[int, int], direction: str, source_first: bool
) -> ImageTextLayout:
    """Two samples: the second has its last two text tokens padded, the first one image token."""
    base = ImageTextLayout(text_len, grid, direction, source_first)
    key_mask = torch.ones(2, base.length, dtype=torch.bool)
    key_mask[1, base.text_start + text_len - 2 : base.text_start + text_len] = False
    key_mask[0, base.image_start + 1] = False
    return ImageTextLayout(text_len, grid, direction, source_first, key_mask)


def fused_qkv(length: int, seed: int) -> torch.Tensor:
    """A leaf ``[B, N, 3, H, d]`` as the module's projection lays it out (2 samples, 3 heads of 8)."""
    return torch.randn(2, length, 3, 3, 8, generator=torch.Generator().manual_seed(seed)).requires_grad_()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_blocked_equals_dense_with_the_same_mask(kind: str, direction: str) -> None:
    """Outputs and qkv gradients, both layouts, padding, halos, blocks that do not divide the grid,
    recomputing backward in chunks or keeping the graph."""
    cases = itertools.product(
        [True, False], [0, 1], [(None, 4, True), (1, 1, False), (3, 2, True)], [(4, 5), (3, 3)]
    )
    for source_first, context, (block, chunks, recompute), grid in cases:
        layout = padded_layout(5, grid, direction, source_first)
        pattern = SparsePattern(kind, context=context, kernel_size=3)
        qkv = fused_qkv(layout.length, seed=len(grid) + context)
        upstream = torch.randn(2, layout.length, 3, 8)
        results = []
        for blocked in (True, False):
            qkv.grad = None
            if blocked:
                out = blocked_attention(qkv, layout, pattern, block, recompute=recompute, chunks=chunks)
            else:
                out = dense_pattern_attention(qkv, layout, pattern)
            (out * upstream).sum().backward()
            results.append([out.detach(), qkv.grad.clone()])
        case = f"source_first={source_first} context={context} block={block} chunks={chunks} grid={grid}"
        for name, a, b in zip(["out", "dqkv"], *results):
            torch.testing.assert_close(
                a, b, atol=1e-5, rtol=1e-5, msg=lambda m, c=f"{case} {name}": f"{c}: {m}"
            )


@pytest.mark.parametrize("project", [False, True])
def test_recomputed_backward_redraws_the_same_dropout(project: bool) -> None:
    """With attention dropout, recomputing backward (with or without the fused output projection)
    gives the gradients of the graph that was kept."""
    layout = padded_layout(4, (4, 4), "text_to_image", True)
    qkv = fused_qkv(layout.length, seed=3)
    proj = nn.Linear(24, 24) if project else None
    upstream = torch.randn(2, layout.length, 24) if project else torch.randn(2, layout.length, 3, 8)
    pattern = SparsePattern("conv", kernel_size=3)
    results = []
    for recompute in (True, False):
        qkv.grad = None
        torch.manual_seed(7)
        out = blocked_attention(qkv, layout, pattern, 2, 0.5, recompute, chunks=3, proj=proj)
        (out * upstream).sum().backward()
        grads = [qkv.grad.clone()] + ([p.grad.clone() for p in proj.parameters()] if proj else [])
        if proj:
            proj.zero_grad()
        results.append((out.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b)
    torch.manual_seed(8)
    other = blocked_attention(qkv, layout, pattern, 2, 0.5, proj=proj)
    assert not torch.allclose(other, results[0][0])  # dropout really drew something


@pytest.mark.parametrize(("recompute", "recompute_qkv"), [(True, True), (True, False), (False, False)])
def test_module_blocked_equals_dense_with_parameter_gradients(recompute: bool, recompute_qkv: bool) -> None:
    layout = padded_layout(4, (4, 4), "text_to_image", True)
    x = torch.randn(2, layout.length, 16)
    for kind in ["row", "column", "conv", "dense"]:
        blocked = SparseSelfAttention(
            16, 2, kind, kernel_size=3, recompute=recompute, recompute_qkv=recompute_qkv
        )
        dense = SparseSelfAttention(16, 2, kind, kernel_size=3, implementation="dense")
        dense.load_state_dict(blocked.state_dict())
        outs = []
        for module in (blocked, dense):
            out = module(x, layout)
            out.square().sum().backward()
            outs.append(out)
        torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
        for (name, a), b in zip(blocked.named_parameters(), dense.parameters()):
            torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5, msg=f"{kind} {name}")


def layer_step(
    module: SparseSelfAttention, x: torch.Tensor, layout: ImageTextLayout, bf16: bool, x_grad: bool
) -> list[torch.Tensor]:
    """Output, input gradient (if asked) and every parameter gradient of one seeded forward + backward."""
    module.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(x_grad)
    torch.manual_seed(11)  # the dropout draws
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = module(x, layout)
    upstream = torch.linspace(-1, 1, out.numel()).view_as(out)
    (out.float() * upstream).sum().backward()
    return [out.detach()] + ([x.grad] if x_grad else []) + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_regenerating_qkv_in_backward_gives_the_kept_graphs_gradients(kind: str, direction: str) -> None:
    """``recompute_qkv`` against keeping ``qkv`` (``recompute_qkv=False``) and against no recomputation
    at all: outputs, the input's and every parameter's gradient, with padding, attention dropout, under
    bf16 autocast (backward outside it), with and without the qkv bias or an input gradient."""
    cases = itertools.product([0.0, 0.4], [False, True], [(True, True), (False, False)])
    for dropout, bf16, (qkv_bias, x_grad) in cases:
        layout = padded_layout(5, (4, 5), direction, source_first=direction == "text_to_image")
        torch.manual_seed(0)
        module = SparseSelfAttention(16, 2, kind, kernel_size=3, qkv_bias=qkv_bias, attn_drop=dropout)
        x = torch.randn(2, layout.length, 16, generator=torch.Generator().manual_seed(1))
        results = {}
        for name, recompute, recompute_qkv in [
            ("regenerated", True, True),
            ("kept", True, False),
            ("graph", False, False),
        ]:
            module.recompute, module.recompute_qkv = recompute, recompute_qkv
            results[name] = layer_step(module, x, layout, bf16, x_grad)
        case = f"dropout={dropout} bf16={bf16} qkv_bias={qkv_bias} x_grad={x_grad}"
        assert results["regenerated"][0].dtype == (torch.bfloat16 if bf16 else torch.float32)
        assert all(g.dtype == torch.float32 for g in results["regenerated"][1:])
        # against the graph kept whole, bf16 rounds differently through the output projection, which the
        # recomputing backward (either way) applies chunk by chunk, its weight gradient summed in fp32
        tolerances = {"kept": 1e-6, "graph": 5e-2 if bf16 else 1e-5}
        for other, tolerance in tolerances.items():
            for index, (a, b) in enumerate(zip(results["regenerated"], results[other])):
                torch.testing.assert_close(
                    a,
                    b,
                    atol=tolerance,
                    rtol=tolerance,
                    msg=lambda m, c=f"{case} vs {other} tensor {index}": f"{c}: {m}",
                )
        if dropout and not bf16:
            torch.manual_seed(12)
            with torch.no_grad():
                other = module(x, layout)
            assert not torch.allclose(other, results["graph"][0])  # dropout really drew something


@pytest.mark.parametrize("recompute_qkv", [True, False])
def test_a_layer_regenerating_qkv_keeps_its_input_and_the_masks_only(recompute_qkv: bool) -> None:
    """Bytes autograd saves for backward, parameters aside: the input and the small masks with
    ``recompute_qkv``; the input and the fused ``qkv`` (three times the input) without."""
    layout = padded_layout(6, (8, 8), "text_to_image", True)
    module = SparseSelfAttention(128, 4, "row", recompute_qkv=recompute_qkv)
    parameters = {p.data_ptr() for p in module.parameters()}
    saved: dict[int, torch.Tensor] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.data_ptr() not in parameters:
            saved[tensor.data_ptr()] = tensor
        return tensor

    x = torch.randn(2, layout.length, 128, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = module(x, layout)
    floats = sum(t.nbytes for t in saved.values() if t.is_floating_point())
    masks = sum(t.nbytes for t in saved.values() if t.dtype == torch.bool)
    if recompute_qkv:
        assert floats == x.nbytes
        assert masks < x.nbytes / 4
    else:
        assert floats == 4 * x.nbytes  # x for the qkv projection, qkv for the attention
    out.sum().backward()
    assert x.grad is not None and module.qkv.weight.grad is not None


def perturbed_outputs(module: nn.Module, layout: ImageTextLayout, later: slice) -> tuple[torch.Tensor, ...]:
    """Outputs for an input and for the same input with the positions ``later`` replaced."""
    x = torch.randn(2, layout.length, 16)
    changed = x.clone()
    changed[:, later] = torch.randn_like(changed[:, later]) * 3
    with torch.no_grad():
        return module(x, layout), module(changed, layout)


@pytest.mark.parametrize("kind", ["dense", *KINDS])
@pytest.mark.parametrize("implementation", ["blocked", "dense"])
def test_text_to_image_is_causal_over_the_raster(kind: str, implementation: str) -> None:
    """Later image tokens (targets) change neither earlier image outputs nor any text output."""
    for source_first in (True, False):
        layout = ImageTextLayout(4, (4, 4), "text_to_image", source_first)
        module = SparseSelfAttention(16, 2, kind, kernel_size=3, implementation=implementation).eval()
        cut = layout.image_start + 6  # raster position 6: row 1, column 2
        out, out_changed = perturbed_outputs(module, layout, slice(cut, layout.image_start + 16))
        earlier = [*range(layout.text_start, layout.text_start + 4), *range(layout.image_start, cut)]
        torch.testing.assert_close(out[:, earlier], out_changed[:, earlier])
        assert not torch.allclose(out[:, cut], out_changed[:, cut])


@pytest.mark.parametrize("kind", ["dense", *KINDS])
@pytest.mark.parametrize("implementation", ["blocked", "dense"])
def test_image_to_text_is_causal_over_the_text(kind: str, implementation: str) -> None:
    """Later text tokens (targets) change neither earlier text outputs nor any image output."""
    for source_first in (True, False):
        layout = ImageTextLayout(5, (3, 4), "image_to_text", source_first)
        module = SparseSelfAttention(16, 2, kind, kernel_size=3, implementation=implementation).eval()
        cut = layout.text_start + 2
        out, out_changed = perturbed_outputs(module, layout, slice(cut, layout.text_start + 5))
        earlier = [*range(layout.image_start, layout.image_start + 12), *range(layout.text_start, cut)]
        torch.testing.assert_close(out[:, earlier], out_changed[:, earlier])
        assert not torch.allclose(out[:, cut], out_changed[:, cut])


def schedule_encoder(depth: int, implementation: str) -> TransformerEncoder:
    """A TransformerEncoder whose blocks' attention is swapped for the paper's schedule."""
    encoder = TransformerEncoder(dim=16, depth=depth, num_heads=2)
    for block, kind in zip(encoder.blocks, ernie_vilg_schedule(depth)):
        sparse = SparseSelfAttention(16, 2, kind, kernel_size=3, implementation=implementation)
        sparse.load_state_dict(block.attn.state_dict())  # same parameter names as Attention
        block.attn = sparse
    return encoder.eval()


def test_schedule_stack_in_transformer_blocks_is_causal_and_matches_dense() -> None:
    layout = padded_layout(4, (4, 4), "text_to_image", True)
    blocked, dense = schedule_encoder(4, "blocked"), schedule_encoder(4, "dense")
    dense.load_state_dict(blocked.state_dict())
    x = torch.randn(2, layout.length, 16)
    with torch.no_grad():
        torch.testing.assert_close(blocked(x, layout), dense(x, layout), atol=1e-5, rtol=1e-5)
    cut = layout.image_start + 9
    out, out_changed = perturbed_outputs(blocked, layout, slice(cut, layout.length))
    torch.testing.assert_close(out[:, :cut], out_changed[:, :cut])
    assert not torch.allclose(out[:, cut:], out_changed[:, cut:])


@pytest.mark.parametrize(
    ("kind", "outside", "inside"),
    [("row", 3, 9), ("column", 5, 2), ("conv", 0, 5)],  # query (2, 2) of a 4 x 4 grid, raster 10
)
def test_a_pattern_ignores_image_keys_outside_its_window(kind: str, outside: int, inside: int) -> None:
    """One layer: a key outside the query's row / column / 3 x 3 window does not reach it; one inside does."""
    layout = ImageTextLayout(2, (4, 4), "text_to_image")
    module = SparseSelfAttention(16, 2, kind, kernel_size=3).eval()
    query = layout.image_start + 10
    for position, reaches in [(outside, False), (inside, True)]:
        out, out_changed = perturbed_outputs(module, layout, slice(layout.image_start + position, None, 100))
        assert torch.allclose(out[:, query], out_changed[:, query]) != reaches, (kind, position)


def test_padded_keys_do_not_reach_real_tokens() -> None:
    layout = padded_layout(4, (3, 3), "text_to_image", True)
    module = SparseSelfAttention(16, 2, "row").eval()
    padded_text = slice(layout.text_start + 2, layout.text_start + 4)
    x = torch.randn(2, layout.length, 16)
    changed = x.clone()
    changed[1, padded_text] = torch.randn(2, 16) * 5
    with torch.no_grad():
        out, out_changed = module(x, layout), module(changed, layout)
    real = layout.key_mask[1]
    torch.testing.assert_close(out[1, real], out_changed[1, real])


def test_dense_pattern_is_a_drop_in_for_transformer_attention() -> None:
    attention = Attention(16, 2).eval()
    sparse = SparseSelfAttention(16, 2, "dense").eval()
    sparse.load_state_dict(attention.state_dict())
    layout = padded_layout(3, (2, 3), "text_to_image", True)
    mask = seq2seq_mask(3, 6, layout.key_mask[:, :3], layout.key_mask[:, 3:])
    x = torch.randn(2, layout.length, 16)
    torch.testing.assert_close(sparse(x, layout), attention(x, mask))


def test_fully_padded_text_keeps_outputs_and_gradients_finite() -> None:
    base = ImageTextLayout(3, (2, 2), "text_to_image")
    key_mask = torch.ones(1, base.length, dtype=torch.bool)
    key_mask[0, :3] = False
    layout = ImageTextLayout(3, (2, 2), "text_to_image", key_mask=key_mask)
    module = SparseSelfAttention(16, 2, "conv", kernel_size=3)
    x = torch.randn(1, layout.length, 16, requires_grad=True)
    out = module(x, layout)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()


def test_a_plan_built_in_inference_mode_serves_training() -> None:
    block_plan.cache_clear()
    layout = ImageTextLayout(2, (3, 3), "text_to_image")
    module = SparseSelfAttention(16, 2, "conv", kernel_size=3)
    x = torch.randn(1, layout.length, 16)
    with torch.inference_mode():
        expected = module(x, layout)
    out = module(x.requires_grad_(), layout)
    out.sum().backward()
    torch.testing.assert_close(out.detach(), expected)


def test_bad_input_names_the_argument() -> None:
    layout = ImageTextLayout(2, (2, 2), "text_to_image")
    module = SparseSelfAttention(16, 2, "row")
    with pytest.raises(TypeError, match="layout"):
        module(torch.randn(1, 6, 16), torch.ones(1, 1, 6, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="layout 6"):
        module(torch.randn(1, 7, 16), layout)
    with pytest.raises(ValueError, match="key_mask"):
        module(torch.randn(2, 6, 16), ImageTextLayout(2, (2, 2), key_mask=torch.ones(1, 6, dtype=torch.bool)))
    with pytest.raises(ValueError, match="num_heads"):
        SparseSelfAttention(10, 3)
    with pytest.raises(ValueError, match="implementation"):
        SparseSelfAttention(16, 2, implementation="flex")
    with pytest.raises(ValueError, match="block"):
        SparseSelfAttention(16, 2, block=0)
    with pytest.raises(ValueError, match="kind"):
        SparseSelfAttention(16, 2, "strided")


@pytest.mark.parametrize("kind", KINDS)
def test_blocked_path_never_builds_the_full_mask(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from vlp.models.ernie_vilg import sparse_kernels

    monkeypatch.setattr(sparse_kernels, "pattern_mask", lambda *a, **k: pytest.fail("built [N, N]"))
    layout = padded_layout(4, (4, 4), "text_to_image", True)
    module = SparseSelfAttention(16, 2, kind, kernel_size=3)
    module(torch.randn(2, layout.length, 16, requires_grad=True), layout).sum().backward()


def test_bf16_autocast_trains_close_to_dense() -> None:
    layout = padded_layout(4, (4, 4), "text_to_image", True)
    x = torch.randn(2, layout.length, 16)
    blocked = SparseSelfAttention(16, 2, "conv", kernel_size=3)
    dense = SparseSelfAttention(16, 2, "conv", kernel_size=3, implementation="dense")
    dense.load_state_dict(blocked.state_dict())
    outs = []
    for module in (blocked, dense):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(x, layout)
        assert out.dtype == torch.bfloat16
        out.float().square().sum().backward()
        outs.append(out.float())
    assert blocked.proj.weight.grad.dtype == torch.float32
    torch.testing.assert_close(outs[0], outs[1], atol=2e-2, rtol=2e-2)
    for a, b in zip(blocked.parameters(), dense.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=5e-2, rtol=5e-2)
