"""ERNIE-ViLG generation: text→image sampling with reranking, image→text greedy / beam search.

**Text → image.** Codes are drawn one slot at a time in raster order from the image half of the
output head, divided by ``temperature`` and filtered by :func:`filter_logits` (top-k, then top-p),
with ``torch.multinomial`` on an optional ``torch.Generator``. ``num_candidates`` images are drawn per
prompt and ranked by a scorer: by default the model's own image→text log-likelihood of the prompt
given each candidate (:func:`prompt_log_likelihood`, ERNIE-ViLG's and CogView's self-reranking); any
``scorer(codes, text_ids, text_mask) -> [M]`` may replace it: an ITM head
(:class:`vlp.models.ernie_vilg.itm_scorer.ITMScorer`, a ViLT over the same codes), CLIP. With
``use_cache`` each new code costs one incremental step (:meth:`ERNIEViLG.extend`); without it every
step runs the full sequence (the reference the cache is tested against: same seed, same codes).

**Classifier-free guidance** (Ho & Salimans 2022; Parti and Make-A-Scene for token generators): with
``guidance_scale`` ``s != 1`` every draw reads ``u + s * (c - u)``, where ``c`` are the code logits given
the prompt and ``u`` those given the null prompt ``[CLS] [SEP]`` (:func:`null_prompts`), both rows run in
one batch and fed the same drawn code. ``s > 1`` pushes the image towards what the prompt adds over no
prompt. The model must have seen the null prompt in training (``ERNIEViLGTask(prompt_dropout=...)``);
``s = 1`` is plain conditional sampling and runs no null rows.

**Image → text.** :func:`caption_images` drives :mod:`vlp.models.layers.generation`'s greedy and beam search
with a step over the KV cache (or the full pass), the search E2E-VLP captioning uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vlp.models.ernie_vilg.model import ERNIEViLG
from vlp.models.layers.generation import GenerationOutput, beam_search, greedy_search

Scorer = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """``logits [..., V]`` with the tokens outside the top-k and the nucleus set to ``-inf``.

    - ``top_k``: keep exactly the ``k`` largest logits (ties broken by ``torch.topk``).
    - ``top_p``: keep the smallest set of most probable tokens whose probability reaches ``p``
      (the token that crosses ``p`` is kept; the most probable token always is).

    Applied in that order (as Hugging Face's warpers); ``None`` skips a filter.
    """
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if top_k < logits.shape[-1]:
            keep = torch.zeros_like(logits, dtype=torch.bool)
            keep.scatter_(-1, logits.topk(top_k, dim=-1).indices, True)
            logits = logits.masked_fill(~keep, float("-inf"))
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.float().softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above
        drop_sorted = before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One token per row of ``logits [B, V]`` from the tempered, filtered distribution → ``[B]``."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def null_prompts(
    rows: int, length: int, bos_id: int, eos_id: int, pad_id: int, device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """``rows`` null prompts ``[CLS] [SEP]`` padded to ``length``: ids and mask ``[rows, length]``.

    The unconditional input of classifier-free guidance, and what prompt dropout trains on.
    """
    if length < 2:
        raise ValueError(f"a null prompt needs length >= 2 ([CLS] [SEP]), got {length}")
    ids = torch.full((rows, length), pad_id, dtype=torch.long, device=device)
    ids[:, 0], ids[:, 1] = bos_id, eos_id
    mask = torch.zeros(rows, length, dtype=torch.bool, device=device)
    mask[:, :2] = True
    return ids, mask


def guided_logits(logits: Tensor, guidance_scale: float) -> Tensor:
    """``[2B, V]`` logits, the conditional rows first, → ``u + s * (c - u)`` ``[B, V]`` (in float32)."""
    conditional, unconditional = logits.float().chunk(2)
    return unconditional + guidance_scale * (conditional - unconditional)


@torch.no_grad()
def sample_image_codes(
    model: ERNIEViLG,
    text_ids: Tensor,
    text_mask: Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    guidance_scale: float = 1.0,
    null_ids: Tensor | None = None,
    null_mask: Tensor | None = None,
) -> Tensor:
    """One image ``[B, h*w]`` of code ids per prompt row (module docstring).

    With ``guidance_scale != 1``, ``null_ids`` / ``null_mask`` ``[B, T]`` (:func:`null_prompts`, the
    prompt's length) are the unconditional rows.
    """
    length = model.grid[0] * model.grid[1]
    batch = text_ids.shape[0]
    guided = guidance_scale != 1.0
    if guided:
        if null_ids is None or null_ids.shape != text_ids.shape:
            raise ValueError(
                f"guidance_scale {guidance_scale} needs null_ids of the prompts' shape {tuple(text_ids.shape)} "
                f"(vlp.models.ernie_vilg.sampling.null_prompts), got "
                f"{None if null_ids is None else tuple(null_ids.shape)}"
            )
        mask = torch.ones_like(text_ids, dtype=torch.bool) if text_mask is None else text_mask.bool()
        null = torch.ones_like(null_ids, dtype=torch.bool) if null_mask is None else null_mask.bool()
        text_ids, text_mask = torch.cat([text_ids, null_ids]), torch.cat([mask, null])

    def draw(states: Tensor) -> Tensor:
        logits = model.image_logits(states)
        return sample_next(
            guided_logits(logits, guidance_scale) if guided else logits, temperature, top_k, top_p, generator
        )

    both = (lambda code: torch.cat([code, code])) if guided else (lambda code: code)
    if use_cache:
        state, cache = model.prefill("text_to_image", text_ids=text_ids, text_mask=text_mask)
        codes = [draw(state)]
        for _ in range(length - 1):
            state, cache = model.extend(both(codes[-1]), cache)
            codes.append(draw(state))
        return torch.stack(codes, dim=1)
    codes = torch.zeros(batch, length, dtype=torch.long, device=text_ids.device)
    for slot in range(length):  # slot j reads codes < j only, so the zeros after it do not matter
        states = model(text_ids, text_mask, both(codes), "text_to_image").image_states
        codes[:, slot] = draw(states[:, slot])
    return codes


@torch.no_grad()
def prompt_log_likelihood(
    model: ERNIEViLG, image_codes: Tensor, text_ids: Tensor, text_mask: Tensor | None = None
) -> Tensor:
    """``log p(text | image)`` under the image→text direction: the sum over the real text tokens after
    the first (``[CLS]``) of their log-probabilities, one value per row ``[B]``."""
    states = model(text_ids, text_mask, image_codes, "image_to_text").text_states[:, :-1]
    targets = text_ids[:, 1:]
    has_target = torch.ones_like(targets, dtype=torch.bool) if text_mask is None else text_mask[:, 1:].bool()
    rows = torch.arange(text_ids.shape[0], device=text_ids.device)[:, None].expand_as(targets)[has_target]
    log_probs = model.text_logits(states[has_target]).float().log_softmax(dim=-1)
    token = log_probs.gather(1, targets[has_target][:, None])[:, 0]
    return torch.zeros(text_ids.shape[0], device=token.device).index_add(0, rows, token)


@dataclass
class SampledImages:
    """``num_candidates`` code grids per prompt, their scores and the best one.

    ``codes``: ``[B, n, h*w]``; ``scores``: ``[B, n]`` (higher is better); ``best``: ``[B, h*w]``,
    the candidate with the highest score; ``best_index``: ``[B]``.
    """

    codes: Tensor
    scores: Tensor
    best: Tensor
    best_index: Tensor


def rerank(codes: Tensor, scores: Tensor) -> SampledImages:
    """The best of ``codes [B, n, L]`` by ``scores [B, n]``."""
    best_index = scores.argmax(dim=1)
    best = codes[torch.arange(codes.shape[0], device=codes.device), best_index]
    return SampledImages(codes, scores, best, best_index)


@torch.no_grad()
def generate_images(
    model: ERNIEViLG,
    text_ids: Tensor,
    text_mask: Tensor | None = None,
    num_candidates: int = 1,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    scorer: Scorer | None = None,
    guidance_scale: float = 1.0,
    null_ids: Tensor | None = None,
    null_mask: Tensor | None = None,
) -> SampledImages:
    """``num_candidates`` images per prompt, reranked by ``scorer`` (default: :func:`prompt_log_likelihood`).

    The prompt rows are repeated ``num_candidates`` times (sample-major) and sampled in one batch;
    ``guidance_scale`` and the null prompts as :func:`sample_image_codes` (one null row per prompt row).
    """
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    batch = text_ids.shape[0]
    repeat = lambda t: None if t is None else t.repeat_interleave(num_candidates, dim=0)  # noqa: E731
    ids, mask = repeat(text_ids), repeat(text_mask)
    codes = sample_image_codes(
        model, ids, mask, temperature, top_k, top_p, generator, use_cache,
        guidance_scale, repeat(null_ids), repeat(null_mask),
    )  # fmt: skip
    if num_candidates == 1:
        scores = torch.zeros(batch * num_candidates, device=codes.device)
    else:
        score = scorer or (lambda c, t, m: prompt_log_likelihood(model, c, t, m))
        scores = score(codes, ids, mask)
        if scores.shape != (batch * num_candidates,):
            raise ValueError(
                f"scorer must return one score per candidate [{batch * num_candidates}], got {tuple(scores.shape)}"
            )
    return rerank(codes.view(batch, num_candidates, -1), scores.view(batch, num_candidates))


@torch.no_grad()
def caption_images(
    model: ERNIEViLG,
    image_codes: Tensor,
    bos_id: int,
    eos_id: int,
    pad_id: int = 0,
    max_len: int = 30,
    num_beams: int = 1,
    alpha: float = 0.0,
    use_cache: bool = True,
    prompt: Tensor | None = None,
) -> GenerationOutput:
    """Captions for code grids ``[B, h*w]``: greedy (``num_beams=1``) or beam search, ``[BOS] .. [EOS]``.

    ``prompt`` ``[B, P]``: the text every caption continues (a question ``[CLS] q [SEP]`` for generative
    VQA), in place of the ``[BOS]`` column; ``max_len`` counts it. The returned sequences start with it.
    """
    if max_len > model.max_text_len:
        raise ValueError(f"max_len ({max_len}) exceeds the model's max_text_len ({model.max_text_len})")

    def step(ids: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        codes = state["codes"]
        if not use_cache:
            states = model(ids, None, codes, "image_to_text").text_states[:, -1]
            return model.text_logits(states), state
        if state["cache"] is None:
            last, cache = model.prefill(
                "image_to_text", text_ids=ids, image_codes=codes, max_text_len=max_len
            )
        else:
            last, cache = model.extend(ids[:, -1], state["cache"])
        return model.text_logits(last), {"codes": codes, "cache": cache}

    if prompt is None:
        prompt = torch.full((image_codes.shape[0], 1), bos_id, dtype=torch.long, device=image_codes.device)
    elif prompt.ndim != 2 or prompt.shape[0] != image_codes.shape[0]:
        raise ValueError(
            f"prompt must be [B, P] with B = {image_codes.shape[0]} (one row per image), got {tuple(prompt.shape)}"
        )
    state = {"codes": image_codes, "cache": None}
    if num_beams == 1:
        return greedy_search(step, prompt, max_len, eos_id, pad_id, state=state)
    return beam_search(step, prompt, max_len, eos_id, pad_id, num_beams=num_beams, alpha=alpha, state=state)
