"""The UniLM seq2seq mask: an explicit small case, a brute-force reference, padding, and bad input."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from vlp.models.ernie_vilg.seq2seq_mask import seq2seq_mask


def brute_force(
    source_len: int, target_len: int, source_mask, target_mask, source_first: bool
) -> torch.Tensor:
    """The rule in words, one pair at a time."""
    batch = source_mask.shape[0]
    n = source_len + target_len
    source_start = 0 if source_first else target_len
    target_start = source_len if source_first else 0
    mask = torch.zeros(batch, 1, n, n, dtype=torch.bool)
    for b, i, j in itertools.product(range(batch), range(n), range(n)):
        i_source = source_start <= i < source_start + source_len
        j_source = source_start <= j < source_start + source_len
        j_real = bool(source_mask[b, j - source_start] if j_source else target_mask[b, j - target_start])
        if i == j:
            allowed = True
        elif j_source:
            allowed = j_real
        else:
            allowed = not i_source and j <= i and j_real
        mask[b, 0, i, j] = allowed
    return mask


def test_explicit_small_case_source_first() -> None:
    # source s0 s1 s2 (s2 padded), target t0 t1 (t1 padded): sequence [s0 s1 s2 t0 t1]
    source_mask = torch.tensor([[True, True, False]])
    target_mask = torch.tensor([[True, False]])
    expected = torch.tensor(
        [
            #  s0 s1 s2 t0 t1
            [1, 1, 0, 0, 0],  # s0: real source only
            [1, 1, 0, 0, 0],  # s1
            [1, 1, 1, 0, 0],  # s2 (padded): the real source and itself
            [1, 1, 0, 1, 0],  # t0: real source and itself
            [1, 1, 0, 1, 1],  # t1 (padded): real source, t0, itself
        ],
        dtype=torch.bool,
    )
    mask = seq2seq_mask(3, 2, source_mask, target_mask)
    assert mask.shape == (1, 1, 5, 5) and mask.dtype == torch.bool
    assert torch.equal(mask[0, 0], expected)


def test_explicit_small_case_target_first() -> None:
    # sequence [t0 t1 t2 s0 s1], nothing padded
    expected = torch.tensor(
        [
            #  t0 t1 t2 s0 s1
            [1, 0, 0, 1, 1],  # t0: itself and the source
            [1, 1, 0, 1, 1],  # t1
            [1, 1, 1, 1, 1],  # t2
            [0, 0, 0, 1, 1],  # s0: the source only
            [0, 0, 0, 1, 1],  # s1
        ],
        dtype=torch.bool,
    )
    assert torch.equal(seq2seq_mask(2, 3, source_first=False)[0, 0], expected)


@pytest.mark.parametrize("source_first", [True, False])
@pytest.mark.parametrize(("source_len", "target_len"), [(4, 3), (1, 5), (5, 0), (0, 4)])
def test_matches_the_rule_pair_by_pair(source_len: int, target_len: int, source_first: bool) -> None:
    generator = torch.Generator().manual_seed(source_len * 10 + target_len)
    source_mask = torch.rand(3, source_len, generator=generator) > 0.3
    target_mask = torch.rand(3, target_len, generator=generator) > 0.3
    mask = seq2seq_mask(source_len, target_len, source_mask, target_mask, source_first)
    assert torch.equal(mask, brute_force(source_len, target_len, source_mask, target_mask, source_first))


def test_missing_masks_mean_all_real_and_batch_comes_from_the_given_one() -> None:
    target_mask = torch.tensor([[True, True], [True, False]])
    mask = seq2seq_mask(3, 2, None, target_mask)
    assert mask.shape == (2, 1, 5, 5)
    assert torch.equal(mask, seq2seq_mask(3, 2, torch.ones(2, 3, dtype=torch.bool), target_mask))


def test_a_fully_padded_source_still_gives_finite_attention() -> None:
    # every key of the source queries is padded: only "itself" keeps SDPA from returning NaN
    mask = seq2seq_mask(3, 2, torch.zeros(1, 3, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool))
    q = k = v = torch.randn(1, 2, 5, 4, requires_grad=True)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(q.grad).all()


def test_bad_input_names_the_argument() -> None:
    with pytest.raises(ValueError, match="source_mask"):
        seq2seq_mask(3, 2, torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="target_mask"):
        seq2seq_mask(3, 2, None, torch.ones(1, 2))  # float, not bool
    with pytest.raises(ValueError, match="batch size"):
        seq2seq_mask(3, 2, torch.ones(1, 3, dtype=torch.bool), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="source_len"):
        seq2seq_mask(-1, 2)
    with pytest.raises(ValueError, match="source_len"):
        seq2seq_mask(0, 0)
