import torch

from vlp.models.transformer import Attention, TransformerEncoder, key_padding_mask


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
