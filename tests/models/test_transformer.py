import pytest
import torch

from vlp.models.layers.transformer import Attention, TransformerEncoder, key_padding_mask, row_index


def reference_attention(attn: Attention, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Plain softmax attention written out, to check the SDPA path and the mask convention."""
    b, n, d = x.shape
    h = attn.num_heads
    q, k, v = attn.qkv(x).view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / (d // h) ** 0.5
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
    return attn.proj(out)


def test_attention_matches_explicit_softmax_with_padding() -> None:
    attn = Attention(16, 4).eval()
    x = torch.randn(2, 5, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    torch.testing.assert_close(attn(x, key_padding_mask(mask)), reference_attention(attn, x, mask))


def test_masked_keys_do_not_influence_real_tokens() -> None:
    encoder = TransformerEncoder(dim=16, depth=2, num_heads=2).eval()
    x = torch.randn(1, 6, 16)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    changed = x.clone()
    changed[:, 4:] = torch.randn(1, 2, 16) * 10
    out, out_changed = encoder(x, key_padding_mask(mask)), encoder(changed, key_padding_mask(mask))
    torch.testing.assert_close(out[:, :4], out_changed[:, :4])
    assert not torch.allclose(out[:, 4:], out_changed[:, 4:])


def test_activation_checkpointing_gives_same_outputs_and_gradients() -> None:
    plain = TransformerEncoder(dim=16, depth=2, num_heads=2)
    ckpt = TransformerEncoder(dim=16, depth=2, num_heads=2, activation_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 5, 16)
    out_plain, out_ckpt = plain(x), ckpt(x)
    out_plain.square().sum().backward()
    out_ckpt.square().sum().backward()
    torch.testing.assert_close(out_plain, out_ckpt)
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def _rows_case() -> tuple[TransformerEncoder, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    encoder = TransformerEncoder(dim=16, depth=3, num_heads=2).eval()
    x = torch.randn(2, 7, 16)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    wanted = torch.tensor([[1, 0, 1, 0, 0, 0, 0], [1, 0, 0, 1, 0, 1, 1]], dtype=torch.bool)
    return encoder, x, mask, wanted


def test_row_index_lists_wanted_rows_in_order_and_pads() -> None:
    wanted = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    index, valid = row_index(wanted)
    assert index.tolist() == [[0, 2, 0], [1, 2, 3]]
    assert valid.tolist() == [[True, True, False], [True, True, True]]


def test_last_layer_rows_equal_the_full_pass_and_its_gradients() -> None:
    """Computing only some rows in the last layer changes neither those rows nor any gradient they get."""
    encoder, x, mask, wanted = _rows_case()
    index, valid = row_index(wanted)
    full = encoder(x, key_padding_mask(mask))
    rows = encoder(x, key_padding_mask(mask), rows=index)
    assert rows.shape == (2, 4, 16)
    expected = full.gather(1, index[..., None].expand(-1, -1, 16))
    torch.testing.assert_close(rows[valid], expected[valid], atol=1e-6, rtol=1e-5)

    weights = torch.randn(2, 4, 16) * valid[..., None]  # a loss that reads only the valid rows
    encoder.zero_grad()
    (rows * weights).sum().backward()
    grads_rows = {name: p.grad.clone() for name, p in encoder.named_parameters()}
    encoder.zero_grad()
    (expected * weights).sum().backward()
    for name, p in encoder.named_parameters():
        torch.testing.assert_close(grads_rows[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_last_layer_rows_with_a_per_query_mask() -> None:
    """A full ``[B, 1, N, N]`` mask (causal here) is cut to the computed rows' own mask rows."""
    encoder, x, _, wanted = _rows_case()
    causal = torch.ones(7, 7, dtype=torch.bool).tril()[None, None].expand(2, 1, 7, 7)
    index, valid = row_index(wanted)
    full = encoder(x, causal)
    rows = encoder(x, causal, rows=index)
    expected = full.gather(1, index[..., None].expand(-1, -1, 16))
    torch.testing.assert_close(rows[valid], expected[valid], atol=1e-6, rtol=1e-5)


def test_last_layer_rows_under_activation_checkpointing() -> None:
    encoder, x, mask, wanted = _rows_case()
    encoder.activation_checkpointing = True
    encoder.train()
    index, valid = row_index(wanted)
    rows = encoder(x.requires_grad_(), key_padding_mask(mask), rows=index)
    expected = encoder(x, key_padding_mask(mask)).gather(1, index[..., None].expand(-1, -1, 16))
    torch.testing.assert_close(rows[valid], expected[valid], atol=1e-6, rtol=1e-5)
    rows[valid].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_last_layer_rows_with_positions_equal_the_full_pass() -> None:
    """Rows and positions together (MLM on an encoder with DETR positions): the rows of the full pass.
    The tolerance covers the row-subset matmuls, whose float reduction order differs from the full ones."""
    encoder, x, mask, wanted = _rows_case()
    pos = torch.randn_like(x)
    index, valid = row_index(wanted)
    full = encoder(x, key_padding_mask(mask), pos=pos)
    rows = encoder(x, key_padding_mask(mask), rows=index, pos=pos)
    expected = full.gather(1, index[..., None].expand(-1, -1, 16))
    torch.testing.assert_close(rows[valid], expected[valid], atol=1e-6, rtol=1e-5)


def test_the_attention_layer_is_passed_in_per_block() -> None:
    """Each block builds the attention it is given (timm's ``attn_layer``); a list must cover the depth."""

    class Halved(Attention):
        def forward(self, x: torch.Tensor, attn_mask: object = None) -> torch.Tensor:
            return super().forward(x, attn_mask) / 2

    encoder = TransformerEncoder(dim=16, depth=2, num_heads=2, attn_layer=[Attention, Halved])
    assert [type(b.attn) for b in encoder.blocks] == [Attention, Halved]
    x = torch.randn(1, 3, 16)
    block = encoder.blocks[1]
    expected = x + Attention.forward(block.attn, block.norm1(x)) / 2
    expected = expected + block.mlp(block.norm2(expected))
    torch.testing.assert_close(block(x), expected)
    with pytest.raises(ValueError, match="attn_layer lists 1 attention layers for a depth of 2"):
        TransformerEncoder(dim=16, depth=2, num_heads=2, attn_layer=[Attention])
