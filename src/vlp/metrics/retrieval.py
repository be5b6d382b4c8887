"""Image-text retrieval: recall@K of a text x image score matrix, and chunked scoring of all pairs.

Recall@K follows official ViLT (``compute_irtr_recall``): a query scores 1 when *any* of its relevant
items is among its ``K`` highest-scored ones (torchmetrics calls this the hit rate). Text -> image has
one relevant image per text; image -> text has every caption of the image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def retrieval_recall(scores: Tensor, text_image: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, Tensor]:
    """Recall@K both ways from ``scores [T, N]`` (text ``t`` against image ``n``).

    Args:
        scores: matching scores, higher = better match.
        text_image: ``[T]`` long, the image each text describes.
        ks: the cut-offs; a ``K`` larger than the number of candidates counts every candidate.

    Returns ``{"t2i_r{K}": ..., "i2t_r{K}": ...}`` (0-dim float tensors). Ties are broken by
    ``torch.topk``'s order, as in the official code. Images without any text are not queries.
    """
    if scores.ndim != 2 or text_image.shape != scores.shape[:1]:
        raise ValueError(
            f"scores must be [texts, images] with one image index per text, got {tuple(scores.shape)} "
            f"and {tuple(text_image.shape)}"
        )
    texts, images = scores.shape
    text_image = text_image.to(scores.device)
    relevant = text_image[:, None] == torch.arange(images, device=scores.device)[None]  # [T, N]
    queried = relevant.any(0)  # images that have at least one text
    results: dict[str, Tensor] = {}
    for k in ks:
        top_images = scores.topk(min(k, images), dim=1).indices  # [T, k]
        results[f"t2i_r{k}"] = (top_images == text_image[:, None]).any(1).float().mean()
        top_texts = scores.topk(min(k, texts), dim=0).indices  # [k, N]
        hit = relevant.gather(0, top_texts).any(0)
        results[f"i2t_r{k}"] = hit[queried].float().mean()
    return results


def score_pair_range(
    score_pairs: Callable[[Tensor, Tensor], Tensor],
    num_images: int,
    start: int,
    stop: int,
    chunk_size: int,
    calls: int | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Scores of pairs ``start .. stop - 1`` of the text-major grid (pair ``p`` is text ``p // num_images``
    with image ``p % num_images``), ``chunk_size`` pairs per ``score_pairs(text_index [C], image_index [C])
    -> [C]`` call, so memory stays bounded whatever the number of pairs.

    ``calls`` makes exactly that many calls, the extra ones scoring pair 0 (discarded): processes given
    fewer pairs then still call the model as often as the others, as FSDP needs (it gathers parameters
    collectively in every forward). Returns ``[stop - start]``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if not 0 <= start <= stop or num_images < 1:
        raise ValueError(f"bad pair range [{start}, {stop}) over {num_images} image(s)")
    needed = -(-(stop - start) // chunk_size)
    calls = needed if calls is None else calls
    if calls < needed:
        raise ValueError(f"{stop - start} pairs need {needed} calls of {chunk_size}, got calls={calls}")
    scores = []
    for call in range(calls):
        first = start + call * chunk_size
        index = torch.arange(first, first + chunk_size, device=device)
        index = index[index < stop] if first < stop else torch.zeros(1, dtype=torch.long, device=device)
        part = score_pairs(index // num_images, index % num_images)
        if first < stop:
            scores.append(part)
    return torch.cat(scores) if scores else torch.zeros(0, device=device)


def chunked_scores(
    score_pairs: Callable[[Tensor, Tensor], Tensor],
    num_texts: int,
    num_images: int,
    chunk_size: int,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Every text against every image, ``[num_texts, num_images]``, ``chunk_size`` pairs per call."""
    pairs = score_pair_range(score_pairs, num_images, 0, num_texts * num_images, chunk_size, device=device)
    return pairs.reshape(num_texts, num_images)
