"""The DETR-style decoder: captions are causal, padded memory and padded caption tokens are invisible,
positions reach keys but never values, every layer's output comes back normalised, and incremental
decoding with a KV cache equals the full pass."""

from __future__ import annotations

import pytest
import torch

from vlp.models.layers.decoder import DecoderCache, TransformerDecoder, causal_mask
from vlp.models.layers.transformer import Attention

DIM = 16


@pytest.fixture
def decoder() -> TransformerDecoder:
    return TransformerDecoder(dim=DIM, depth=3, num_heads=4).eval()


def test_changing_a_later_caption_token_leaves_earlier_positions_unchanged(
    decoder: TransformerDecoder,
) -> None:
    memory = torch.randn(2, 5, DIM)
    x = torch.randn(2, 7, DIM)
    changed = x.clone()
    changed[:, 4] = torch.randn(2, DIM)
    out = decoder(x, memory, causal=True)
    out_changed = decoder(changed, memory, causal=True)
    assert out.shape == (3, 2, 7, DIM)
    torch.testing.assert_close(out_changed[:, :, :4], out[:, :, :4])
    assert (out_changed[-1, :, 4:] - out[-1, :, 4:]).abs().amax(-1).min() > 1e-3  # 4 and later all move
    # without the causal mask the earlier positions do see the change
    assert not torch.allclose(decoder(changed, memory)[:, :, :4], decoder(x, memory)[:, :, :4])


def test_padded_memory_tokens_change_nothing(decoder: TransformerDecoder) -> None:
    memory = torch.randn(2, 6, DIM)
    memory_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    x = torch.randn(2, 4, DIM)
    out = decoder(x, memory, memory_mask)
    garbage = memory.clone()
    garbage[~memory_mask] = 100 * torch.randn(int((~memory_mask).sum()), DIM)
    torch.testing.assert_close(decoder(x, garbage, memory_mask), out)
    real_changed = memory.clone()
    real_changed[:, 0] = torch.randn(2, DIM)
    assert not torch.allclose(decoder(x, real_changed, memory_mask), out)


def test_padded_caption_tokens_are_hidden_from_real_ones(decoder: TransformerDecoder) -> None:
    """Left padding: only the padding mask (not causality) keeps the pads away from later tokens."""
    memory = torch.randn(1, 5, DIM)
    x = torch.randn(1, 6, DIM)
    padding = torch.tensor([[0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    out = decoder(x, memory, causal=True, padding_mask=padding)
    changed = x.clone()
    changed[:, :2] = torch.randn(1, 2, DIM)
    out_changed = decoder(changed, memory, causal=True, padding_mask=padding)
    torch.testing.assert_close(out_changed[:, :, 2:], out[:, :, 2:])
    assert torch.isfinite(out).all()  # padded rows attend to themselves, never to nothing
    # the same positions without the padding mask do see the pads
    assert not torch.allclose(
        decoder(changed, memory, causal=True)[:, :, 2:], decoder(x, memory, causal=True)[:, :, 2:]
    )


def test_every_layer_is_returned_through_the_final_norm(decoder: TransformerDecoder) -> None:
    memory, x = torch.randn(2, 5, DIM), torch.randn(2, 3, DIM)
    layers = decoder(x, memory)
    assert layers.shape == (3, 2, 3, DIM)
    torch.testing.assert_close(decoder(x, memory, return_intermediate=False)[0], layers[-1])
    manual = x
    for index, layer in enumerate(decoder.layers):
        manual = layer(manual, memory)
        torch.testing.assert_close(layers[index], decoder.norm(manual))
    # the final norm has unit weight at init: every returned token is standardised
    torch.testing.assert_close(layers.mean(-1), torch.zeros(3, 2, 3), atol=1e-5, rtol=0)
    assert not torch.allclose(layers[0], layers[1])


def test_positions_reach_keys_and_queries_not_values() -> None:
    """Memory tokens with one content and different positions: the attention weights depend on the
    positions, but every value is the same, so the output cannot."""
    decoder = TransformerDecoder(dim=DIM, depth=2, num_heads=4).eval()
    memory = torch.randn(1, 1, DIM).expand(2, 6, DIM)
    x = torch.randn(2, 3, DIM)
    a = decoder(x, memory, memory_pos=torch.randn(2, 6, DIM))
    b = decoder(x, memory, memory_pos=torch.randn(2, 6, DIM))
    torch.testing.assert_close(a, b)
    # with varied content the positions do matter
    memory = torch.randn(2, 6, DIM)
    assert not torch.allclose(decoder(x, memory, memory_pos=torch.randn(2, 6, DIM)), decoder(x, memory))


def test_object_queries_attend_to_each_other_without_a_mask(decoder: TransformerDecoder) -> None:
    memory = torch.randn(1, 5, DIM)
    queries = torch.randn(1, 4, DIM)
    zeros = torch.zeros(1, 4, DIM)
    out = decoder(zeros, memory, query_pos=queries)
    moved = queries.clone()
    moved[:, 3] = torch.randn(DIM)
    out_moved = decoder(zeros, memory, query_pos=moved)
    assert not torch.allclose(out_moved[:, :, 0], out[:, :, 0])  # query 0 sees query 3
    permutation = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(
        decoder(zeros, memory, query_pos=queries[:, permutation]), out[:, :, permutation]
    )


def test_incremental_decoding_with_a_cache_equals_the_full_pass(decoder: TransformerDecoder) -> None:
    memory = torch.randn(3, 5, DIM)
    memory_mask = torch.ones(3, 5, dtype=torch.bool)
    memory_mask[1, 3:] = False
    memory_pos = torch.randn(3, 5, DIM)
    x = torch.randn(3, 6, DIM)
    full = decoder(x, memory, memory_mask, memory_pos=memory_pos, causal=True, return_intermediate=False)[0]
    cache = DecoderCache.empty(decoder.depth)
    steps = [decoder(x[:, :2], memory, memory_mask, memory_pos=memory_pos, causal=True, cache=cache)[-1]]
    for t in range(2, 6):
        steps.append(
            decoder(x[:, t : t + 1], memory, memory_mask, memory_pos=memory_pos, causal=True, cache=cache)[-1]
        )
    assert cache.length == 6
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)

    # reordered rows (beam search) keep decoding as their new rows' full pass
    order = torch.tensor([2, 2, 0])
    cache = DecoderCache.empty(decoder.depth)
    decoder(x[:, :4], memory, memory_mask, memory_pos=memory_pos, causal=True, cache=cache)
    cache = cache.index_select(order)
    last = decoder(
        x[order, 4:5],
        memory[order],
        memory_mask[order],
        memory_pos=memory_pos[order],
        causal=True,
        cache=cache,
    )[-1]
    torch.testing.assert_close(last[:, 0], full[order, 4], atol=1e-5, rtol=1e-5)


def test_causal_mask_with_offset_and_padding() -> None:
    assert causal_mask(2, 4, torch.device("cpu")).tolist() == [
        [True, True, True, False],
        [True, True, True, True],
    ]
    padded = causal_mask(3, 3, torch.device("cpu"), torch.tensor([[False, True, True]]))
    assert padded.shape == (1, 1, 3, 3)
    assert padded[0, 0].tolist() == [[True, False, False], [False, True, False], [False, True, True]]
    with pytest.raises(ValueError, match="padding_mask"):
        causal_mask(2, 4, torch.device("cpu"), torch.ones(1, 3, dtype=torch.bool))


def test_attention_shares_one_projection_whatever_the_inputs() -> None:
    """Self-attention through the fused path equals the pieces (project_q, project_kv, attend) applied to
    separate inputs, and cross-attention equals torch's ``nn.MultiheadAttention`` with the same weights."""
    attn = Attention(DIM, 4).eval()
    x = torch.randn(2, 5, DIM)
    fused = attn(x)
    separate = attn.attend(attn.project_q(x), *attn.project_kv(x.clone(), x.clone()))
    torch.testing.assert_close(fused, separate)
    reference = torch.nn.MultiheadAttention(DIM, 4, batch_first=True).eval()
    with torch.no_grad():
        reference.in_proj_weight.copy_(attn.qkv.weight)
        reference.in_proj_bias.copy_(attn.qkv.bias)
        reference.out_proj.weight.copy_(attn.proj.weight)
        reference.out_proj.bias.copy_(attn.proj.bias)
    memory = torch.randn(2, 7, DIM)
    cross = attn.attend(attn.project_q(x), *attn.project_kv(memory, memory))
    torch.testing.assert_close(cross, reference(x, memory, memory, need_weights=False)[0])


def test_mismatched_widths_and_caches_are_refused(decoder: TransformerDecoder) -> None:
    with pytest.raises(ValueError, match="memory"):
        decoder(torch.randn(1, 2, DIM), torch.randn(1, 3, DIM + 4))
    with pytest.raises(ValueError, match="cache"):
        decoder(torch.randn(1, 2, DIM), torch.randn(1, 3, DIM), cache=DecoderCache.empty(1))
    with pytest.raises(ValueError, match="num_heads"):
        TransformerDecoder(dim=10, depth=1, num_heads=4)
