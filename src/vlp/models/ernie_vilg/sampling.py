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

import math
from collections.abc import Callable
from dataclasses import dataclass, field
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


def summed_text_log_probs(model: ERNIEViLG, states: Tensor, targets: Tensor, has_target: Tensor) -> Tensor:
    """Per row, the sum of the log-probabilities the text head gives ``targets [R, t]`` from the states
    that predict them ``[R, t, D]``, over the positions ``has_target`` ``[R, t]`` only → ``[R]``."""
    rows = torch.arange(targets.shape[0], device=targets.device)[:, None].expand_as(targets)[has_target]
    log_probs = model.text_logits(states[has_target]).float().log_softmax(dim=-1)
    token = log_probs.gather(1, targets[has_target][:, None])[:, 0]
    return torch.zeros(targets.shape[0], device=token.device).index_add(0, rows, token)


@torch.no_grad()
def prompt_log_likelihood(
    model: ERNIEViLG, image_codes: Tensor, text_ids: Tensor, text_mask: Tensor | None = None
) -> Tensor:
    """``log p(text | image)`` under the image→text direction: the sum over the real text tokens after
    the first (``[CLS]``) of their log-probabilities, one value per row ``[B]``."""
    states = model(text_ids, text_mask, image_codes, "image_to_text").text_states[:, :-1]
    targets = text_ids[:, 1:]
    has_target = torch.ones_like(targets, dtype=torch.bool) if text_mask is None else text_mask[:, 1:].bool()
    return summed_text_log_probs(model, states, targets, has_target)


@torch.no_grad()
def image_log_likelihood(
    model: ERNIEViLG, image_codes: Tensor, text_ids: Tensor, text_mask: Tensor | None = None
) -> Tensor:
    """``log p(image | text)`` under the text→image direction: the sum over the code slots of their
    log-probabilities (one teacher-forced pass), one value per row ``[B]``."""
    states = model(text_ids, text_mask, image_codes, "text_to_image").image_states
    log_probs = model.image_logits(states).float().log_softmax(dim=-1)
    return log_probs.gather(-1, image_codes[..., None])[..., 0].sum(dim=1)


@torch.no_grad()
def implicit_classifier_scores(
    model: ERNIEViLG,
    image_codes: Tensor,
    text_ids: Tensor,
    text_mask: Tensor | None,
    null_ids: Tensor,
    null_mask: Tensor | None,
) -> Tensor:
    """``log p(image | prompt) - log p(image | null prompt)`` ``[B]``: by Bayes' rule the log-ratio
    ``p(prompt | image) / p(prompt)`` that classifier-free guidance's conditional and unconditional
    models imply (Ho & Salimans 2022), read from the text→image direction. Unlike the image→text
    likelihood it does not fall when the image holds objects the prompt leaves unnamed but the
    unconditional model also draws. Needs a model trained with prompt dropout."""
    return image_log_likelihood(model, image_codes, text_ids, text_mask) - image_log_likelihood(
        model, image_codes, null_ids, null_mask
    )


@torch.no_grad()
def prompt_log_likelihoods(
    model: ERNIEViLG,
    image_codes: Tensor,
    text_ids: Tensor,
    text_mask: Tensor | None = None,
    max_pairs: int = 512,
) -> Tensor:
    """``log p(text_p | image_m)`` for every image and every text: ``[M, P]``.

    Each image is encoded once (the image→text source attends only to itself); its cached keys and
    values are repeated for the ``P`` texts, which are appended at once (:meth:`ERNIEViLG.append`). Equal
    to :func:`prompt_log_likelihood` of each pair up to float reduction order. ``max_pairs``
    (image, text) rows are scored at a time, which bounds the memory of the vocabulary's log-softmax.
    All texts start with the same token (``[CLS]``); their padding must follow their real tokens.
    """
    if text_ids.shape[1] < 2:
        raise ValueError(f"texts need at least 2 tokens ([CLS] and one to score), got {text_ids.shape[1]}")
    if not bool((text_ids[:, 0] == text_ids[0, 0]).all()):
        raise ValueError("prompt_log_likelihoods: every text must start with the same token ([CLS])")
    mask = torch.ones_like(text_ids, dtype=torch.bool) if text_mask is None else text_mask.bool()
    if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise ValueError("prompt_log_likelihoods: text_mask must hold each text's real tokens first")
    texts, length = text_ids.shape
    images_per_chunk = max(1, max_pairs // texts)
    targets, has_target = text_ids[:, 1:], mask[:, 1:]
    rows = []
    for codes in image_codes.split(images_per_chunk):
        state, cache = model.prefill(
            "image_to_text",
            image_codes=codes,
            text_ids=text_ids[:1, :1].expand(codes.shape[0], 1),
            max_text_len=length,
        )
        images = codes.shape[0]
        cache = cache.index_select(torch.arange(images, device=codes.device).repeat_interleave(texts))
        later = model.append(targets[:, :-1].repeat(images, 1), cache)
        states = torch.cat([state.repeat_interleave(texts, dim=0)[:, None], later], dim=1)
        pairs = summed_text_log_probs(model, states, targets.repeat(images, 1), has_target.repeat(images, 1))
        rows.append(pairs.view(images, texts))
    return torch.cat(rows)


@torch.no_grad()
def contrastive_terms(
    model: ERNIEViLG, image_codes: Tensor, text_ids: Tensor, text_mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """For candidates ``image_codes [M, L]`` drawn for prompts ``text_ids [M, T]`` (rows may repeat):
    ``log p(own prompt | image)`` and the log-mean-exp over the distinct prompts of
    ``log p(prompt | image)``, each ``[M]``.

    Their difference is the pointwise mutual information of image and prompt against the distinct
    prompts as a uniform prior, ``log p(own | image) - log mean_p p(p | image)``: it discounts images
    that make every prompt likely (few, plain shapes) in favour of ones that single out their own.
    """
    mask = torch.ones_like(text_ids, dtype=torch.bool) if text_mask is None else text_mask.bool()
    distinct, own = torch.unique(text_ids.masked_fill(~mask, 0), dim=0, return_inverse=True)
    distinct_mask = torch.zeros_like(distinct, dtype=torch.bool)
    distinct_mask[own] = mask
    table = prompt_log_likelihoods(model, image_codes, distinct, distinct_mask)
    own_term = table.gather(1, own[:, None])[:, 0]
    contrast = table.logsumexp(dim=1) - math.log(table.shape[1])
    return own_term, contrast


@dataclass
class SampledImages:
    """``num_candidates`` code grids per prompt, their scores and the best one.

    ``codes``: ``[B, n, h*w]``; ``scores``: ``[B, n]`` (higher is better); ``best``: ``[B, h*w]``,
    the candidate with the highest score; ``best_index``: ``[B]``; ``terms``: the parts the scores were
    made of, each ``[B, n]`` (contrastive reranking's ``log_likelihood`` and ``contrast``), so that other
    weightings can be judged on the same candidates.
    """

    codes: Tensor
    scores: Tensor
    best: Tensor
    best_index: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


def rerank(codes: Tensor, scores: Tensor, terms: dict[str, Tensor] | None = None) -> SampledImages:
    """The best of ``codes [B, n, L]`` by ``scores [B, n]``."""
    best_index = scores.argmax(dim=1)
    best = codes[torch.arange(codes.shape[0], device=codes.device), best_index]
    return SampledImages(codes, scores, best, best_index, terms or {})


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
    contrast_weight: float = 0.0,
    scored_codes: Callable[[Tensor], Tensor] | None = None,
) -> SampledImages:
    """``num_candidates`` images per prompt, reranked by ``scorer`` (default: :func:`prompt_log_likelihood`).

    The prompt rows are repeated ``num_candidates`` times (sample-major) and sampled in one batch;
    ``guidance_scale`` and the null prompts as :func:`sample_image_codes` (one null row per prompt row).
    ``contrast_weight`` ``w > 0`` (default scorer only) ranks by ``log p(prompt | image) - w * contrast``,
    the contrast being the log-mean-exp of the likelihoods of all the batch's distinct prompts given the
    image (:func:`contrastive_terms`; ``w = 1`` is their pointwise mutual information).
    ``scored_codes`` maps the drawn codes ``[M, h*w]`` to the codes the scoring reads (e.g. the VQGAN's
    codes of their decoded image); the returned ``codes`` stay the drawn ones.
    """
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    if contrast_weight < 0:
        raise ValueError(f"contrast_weight must be >= 0, got {contrast_weight}")
    if contrast_weight > 0 and scorer is not None:
        raise ValueError("contrast_weight reweights the model's own likelihood: it cannot go with a scorer")
    batch = text_ids.shape[0]
    repeat = lambda t: None if t is None else t.repeat_interleave(num_candidates, dim=0)  # noqa: E731
    ids, mask = repeat(text_ids), repeat(text_mask)
    codes = sample_image_codes(
        model, ids, mask, temperature, top_k, top_p, generator, use_cache,
        guidance_scale, repeat(null_ids), repeat(null_mask),
    )  # fmt: skip
    terms: dict[str, Tensor] = {}
    read = codes if scored_codes is None or num_candidates == 1 else scored_codes(codes)
    if read.shape != codes.shape:
        raise ValueError(
            f"scored_codes must keep the codes' shape {tuple(codes.shape)}, got {tuple(read.shape)}"
        )
    if num_candidates == 1:
        scores = torch.zeros(batch * num_candidates, device=codes.device)
    elif contrast_weight > 0:
        own, contrast = contrastive_terms(model, read, ids, mask)
        scores = own - contrast_weight * contrast
        terms = {"log_likelihood": own.view(batch, -1), "contrast": contrast.view(batch, -1)}
    else:
        score = scorer or (lambda c, t, m: prompt_log_likelihood(model, c, t, m))
        scores = score(read, ids, mask)
        if scores.shape != (batch * num_candidates,):
            raise ValueError(
                f"scorer must return one score per candidate [{batch * num_candidates}], got {tuple(scores.shape)}"
            )
    return rerank(codes.view(batch, num_candidates, -1), scores.view(batch, num_candidates), terms)


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
