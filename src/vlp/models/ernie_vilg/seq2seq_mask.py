"""UniLM sequence-to-sequence attention masks: one transformer, one sequence ``[source; target]``.

The rule (Dong et al. 2019, UniLM; ERNIE-ViLG uses it in both directions with shared weights):

- a **source** query may attend to every source key (bidirectional) and to no target key;
- a **target** query may attend to every source key and to the target keys at or before its own
  position (causal, itself included);
- a padded key (``False`` in its mask) is seen by nobody, except that **every position may attend
  to itself**. For real tokens that changes nothing (the rule already lets them see themselves); it
  keeps a padded query from having no key at all, which would make SDPA return NaN and poison the
  gradients. A padded position's output is meaningless and must be ignored downstream.

The sequence is ``[source; target]`` (``source_first=True``) or ``[target; source]``; the rule is
the same, only the positions move. Masks are boolean with True = "may attend" (SDPA's convention).
"""

from __future__ import annotations

import torch
from torch import Tensor


def seq2seq_allowed(
    query: Tensor, key: Tensor, source_len: int, target_len: int, source_first: bool = True
) -> Tensor:
    """The UniLM rule without padding, on sequence positions in ``[0, source_len + target_len)``.

    ``query`` and ``key`` are integer tensors that broadcast against each other (e.g. ``[N, 1]`` and
    ``[1, N]``); the result is True where ``query`` may attend to ``key``. The sparse attention
    kernels evaluate this on the positions of one block at a time.
    """
    source_start = 0 if source_first else target_len
    key_is_source = (key >= source_start) & (key < source_start + source_len)
    query_is_source = (query >= source_start) & (query < source_start + source_len)
    return key_is_source | (~query_is_source & ~key_is_source & (key <= query))


def _check_mask(mask: Tensor | None, length: int, name: str) -> None:
    if mask is None:
        return
    if mask.dtype != torch.bool or mask.dim() != 2 or mask.shape[1] != length:
        raise ValueError(f"{name} must be a bool tensor [B, {length}], got {mask.dtype} {tuple(mask.shape)}")


def seq2seq_mask(
    source_len: int,
    target_len: int,
    source_mask: Tensor | None = None,
    target_mask: Tensor | None = None,
    source_first: bool = True,
) -> Tensor:
    """The UniLM mask with key padding: ``[B, 1, N, N]`` bool, ``N = source_len + target_len``.

    Args:
        source_len, target_len: lengths of the two segments (either may be 0: a target alone is a
            causal LM, a source alone a bidirectional encoder).
        source_mask: ``[B, source_len]`` True for real source tokens (``None``: all real).
        target_mask: ``[B, target_len]`` True for real target tokens (``None``: all real).
        source_first: the sequence is ``[source; target]``; otherwise ``[target; source]``.

    Returns:
        ``[B, 1, N, N]`` with ``B`` from the masks (1 when both are ``None``), on their device.
    """
    if source_len < 0 or target_len < 0 or source_len + target_len == 0:
        raise ValueError(
            f"source_len and target_len must be >= 0 with a positive sum, got {source_len}, {target_len}"
        )
    _check_mask(source_mask, source_len, "source_mask")
    _check_mask(target_mask, target_len, "target_mask")
    given = [m for m in (source_mask, target_mask) if m is not None]
    if len(given) == 2 and source_mask.shape[0] != target_mask.shape[0]:
        raise ValueError(
            f"source_mask and target_mask disagree on the batch size: "
            f"{source_mask.shape[0]} and {target_mask.shape[0]}"
        )
    batch = given[0].shape[0] if given else 1
    device = given[0].device if given else None
    if source_mask is None:
        source_mask = torch.ones(batch, source_len, dtype=torch.bool, device=device)
    if target_mask is None:
        target_mask = torch.ones(batch, target_len, dtype=torch.bool, device=device)
    key_valid = torch.cat([source_mask, target_mask] if source_first else [target_mask, source_mask], 1)
    positions = torch.arange(source_len + target_len, device=device)
    allowed = seq2seq_allowed(positions[:, None], positions[None, :], source_len, target_len, source_first)
    itself = torch.eye(source_len + target_len, dtype=torch.bool, device=device)
    return ((allowed & key_valid[:, None, :]) | itself)[:, None]
