"""Greedy and beam-search decoding over a next-token function, for any autoregressive model.

The search knows nothing about the model. It calls ``step(ids, state) -> (logits, state)`` with every
token so far (``ids [N, t]``, one row per hypothesis) and an opaque ``state`` (encoder memory, a KV
cache ...), and gets the next-token logits ``[N, V]`` back. Beam search reorders the state's rows with
``reorder(state, index)`` whenever hypotheses are re-ranked; the default, :func:`index_state`, picks
rows of every tensor in nested dicts, lists and tuples and calls ``index_select`` on objects that
have one (:class:`vlp.models.layers.decoder.DecoderCache`).

Beam search follows fairseq in how it extends beams: each step keeps the ``2K`` best extensions of the
``K`` live beams; those ending in EOS *and* ranked among the first ``K`` become finished hypotheses, the
first ``K`` others become the next beams. Finished hypotheses are ranked by their log-probability
divided by GNMT's length penalty ``((5 + n) / 6) ** alpha`` (Wu et al. 2016), ``n`` the number of
generated tokens including EOS; a sample keeps its ``K`` best (a better one replaces the worst), and
beams still live at ``max_len`` compete as they are. A sample is done once it holds ``K`` finished
hypotheses *and* its best live beam, scored at the current length, cannot beat the worst of them
(Hugging Face's ``early_stopping=False`` rule). fairseq stops at the first ``K`` finished instead: an
early, unlikely EOS (``[BOS] [EOS]`` ranked in the top ``K`` at the first step) then fills the pool
while a likelier caption is still live, and beam search returns a worse caption than greedy decoding
(seen on memorised captions). With ``alpha = 0`` the rule is exact (a live beam's log-probability can
only fall); with ``num_beams=1`` the search is exactly greedy decoding, whatever alpha.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

StepFn = Callable[[Tensor, Any], tuple[Tensor, Any]]
ReorderFn = Callable[[Any, Tensor], Any]


@dataclass
class GenerationOutput:
    """The best hypothesis per sample.

    ``sequences`` hold the prompt, the generated tokens and ``pad_id`` after the end; ``lengths`` count
    the tokens up to and including EOS (all of them when cut at ``max_len``), prompt included.
    ``log_probs`` is the sum of the generated tokens' log-probabilities; ``scores`` what the search
    ranked by (beam search: ``log_probs`` over the length penalty; greedy: ``log_probs``).
    """

    sequences: Tensor  # [B, T] long
    lengths: Tensor  # [B] long
    log_probs: Tensor  # [B] float
    scores: Tensor  # [B] float


def length_penalty(num_tokens: Tensor | int, alpha: float) -> Tensor:
    """GNMT's ``((5 + n) / 6) ** alpha``; ``alpha = 0`` ranks by raw log-probability."""
    return ((5.0 + torch.as_tensor(num_tokens, dtype=torch.float)) / 6.0) ** alpha


def index_state(state: Any, index: Tensor) -> Any:
    """Rows ``index`` (dim 0) of every tensor in ``state``; other leaves are returned as they are."""
    if isinstance(state, Tensor):
        return state.index_select(0, index)
    if isinstance(state, dict):
        return {key: index_state(value, index) for key, value in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(index_state(value, index) for value in state)
    if hasattr(state, "index_select"):
        return state.index_select(index)
    return state


def _check(prompt: Tensor, max_len: int, eos_id: int, pad_id: int) -> None:
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be [B, P] with P >= 1 (e.g. the [CLS] id), got {tuple(prompt.shape)}")
    if max_len <= prompt.shape[1]:
        raise ValueError(f"max_len ({max_len}) must exceed the prompt length ({prompt.shape[1]})")
    if eos_id == pad_id:
        raise ValueError(f"eos_id and pad_id must differ, both are {eos_id}")


def _log_probs(logits: Tensor, rows: int) -> Tensor:
    if logits.ndim != 2 or logits.shape[0] != rows:
        raise ValueError(f"step must return next-token logits [{rows}, V], got {tuple(logits.shape)}")
    return torch.log_softmax(logits.float(), dim=-1)


@torch.no_grad()
def greedy_search(
    step: StepFn, prompt: Tensor, max_len: int, eos_id: int, pad_id: int = 0, state: Any = None
) -> GenerationOutput:
    """The most likely next token at every step, until EOS or ``max_len`` tokens (prompt included)."""
    _check(prompt, max_len, eos_id, pad_id)
    batch, start = prompt.shape
    ids = prompt
    finished = torch.zeros(batch, dtype=torch.bool, device=prompt.device)
    lengths = torch.full((batch,), -1, dtype=torch.long, device=prompt.device)
    total = torch.zeros(batch, device=prompt.device)
    for length in range(start, max_len):
        logits, state = step(ids, state)
        token_log_prob, token = _log_probs(logits, batch).max(dim=-1)
        token = token.masked_fill(finished, pad_id)
        total = total + token_log_prob.masked_fill(finished, 0.0)
        ids = torch.cat([ids, token[:, None]], dim=1)
        ended = ~finished & (token == eos_id)
        lengths = torch.where(ended, length + 1, lengths)
        finished = finished | ended
        if bool(finished.all()):
            break
    lengths = torch.where(lengths < 0, ids.shape[1], lengths)
    return GenerationOutput(ids, lengths, total, total.clone())


@torch.no_grad()
def beam_search(
    step: StepFn,
    prompt: Tensor,
    max_len: int,
    eos_id: int,
    pad_id: int = 0,
    num_beams: int = 4,
    alpha: float = 0.0,
    state: Any = None,
    reorder: ReorderFn = index_state,
) -> GenerationOutput:
    """Batched beam search (see the module docstring for the rules) with GNMT's length penalty ``alpha``.

    ``state`` holds one row per sample; it is expanded to ``num_beams`` rows per sample before the
    first step, so ``step`` always sees ``B * num_beams`` rows, sample-major.
    """
    _check(prompt, max_len, eos_id, pad_id)
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    batch, start = prompt.shape
    beams = num_beams
    ids, state, base, beam_scores = _expand_beams(prompt, state, beams, reorder)
    pool = _FinishedPool.empty(batch, beams, max_len, start, alpha, pad_id, prompt.device)
    done = torch.zeros(batch, dtype=torch.bool, device=prompt.device)
    for _ in range(start, max_len):
        logits, state = step(ids, state)
        top_scores, source_beam, token = _top_extensions(beam_scores, _log_probs(logits, batch * beams))
        is_eos = token == eos_id
        ending = (is_eos & torch.isfinite(top_scores) & ~done[:, None])[:, :beams]
        if bool(ending.any()):
            source = base + source_beam[:, :beams]  # [B, K] rows of ids
            seqs = torch.cat([ids[source.view(-1)], token[:, :beams].reshape(-1, 1)], dim=1)
            pool.add(ending, seqs.view(batch, beams, -1), top_scores[:, :beams])
        keep = _live_extensions(is_eos, beams)
        beam_scores = top_scores.gather(1, keep)
        source = (base + source_beam.gather(1, keep)).view(-1)
        ids = torch.cat([ids.index_select(0, source), token.gather(1, keep).view(-1, 1)], dim=1)
        state = reorder(state, source)
        done = done | pool.unbeatable(beam_scores, ids.shape[1])
        if bool(done.all()):
            break

    # samples still open at max_len: their live beams compete, unfinished, with the finished ones
    if not bool(done.all()):
        pool.add(~done[:, None].expand(-1, beams), ids.view(batch, beams, -1), beam_scores)
    return pool.best()


def _expand_beams(
    prompt: Tensor, state: Any, beams: int, reorder: ReorderFn
) -> tuple[Tensor, Any, Tensor, Tensor]:
    """``beams`` copies of each sample's prompt and state rows (sample-major), the first row of each
    sample ``[B, 1]``, and the beams' starting scores ``[B, K]``: only the first beam is live, so
    the ``K`` beams do not all extend the same prompt."""
    device = prompt.device
    batch = prompt.shape[0]
    rows = torch.arange(batch, device=device).repeat_interleave(beams)
    ids = prompt.index_select(0, rows)  # [B*K, t]
    state = reorder(state, rows)
    base = (torch.arange(batch, device=device) * beams)[:, None]
    beam_scores = torch.full((batch, beams), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0
    return ids, state, base, beam_scores


def _top_extensions(beam_scores: Tensor, log_probs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The ``2K`` best one-token extensions of each sample's ``K`` beams, best first: their scores,
    the beam each extends and the token it adds (each ``[B, 2K]``); ``log_probs`` is ``[B*K, V]``."""
    batch, beams = beam_scores.shape
    vocab = log_probs.shape[-1]
    if 2 * beams > beams * vocab:
        raise ValueError(f"num_beams={beams} needs a vocabulary of at least 2 tokens, got {vocab}")
    candidates = beam_scores[..., None] + log_probs.view(batch, beams, vocab)
    # a dead beam (-inf) stays dead even where its row's logits are all -inf (NaN after log_softmax)
    candidates = candidates.masked_fill(torch.isinf(beam_scores)[..., None], float("-inf")).view(batch, -1)
    top_scores, top_index = candidates.topk(2 * beams, dim=1)  # sorted, best first
    return top_scores, top_index // vocab, top_index % vocab


def _live_extensions(is_eos: Tensor, beams: int) -> Tensor:
    """Positions ``[B, K]`` (ascending, so still best first) of the ``K`` best extensions among the
    ``2K`` that do not end in EOS: EOS candidates sort behind every other one."""
    rank = torch.arange(is_eos.shape[1], device=is_eos.device)[None]
    return (rank + is_eos.long() * 2 * beams).topk(beams, dim=1, largest=False).indices.sort(1).values


@dataclass
class _FinishedPool:
    """Each sample's ``K`` best finished hypotheses, ranked by log-probability over the length penalty.

    Empty slots score ``-inf``; ``ids`` are padded to ``max_len`` with ``pad_id``.
    """

    ids: Tensor  # [B, K, max_len] long
    log_probs: Tensor  # [B, K] float
    scores: Tensor  # [B, K] float
    lengths: Tensor  # [B, K] long
    start: int  # prompt length: the length penalty counts the tokens after it
    alpha: float
    pad_id: int

    @classmethod
    def empty(
        cls, batch: int, beams: int, max_len: int, start: int, alpha: float, pad_id: int, device: torch.device
    ) -> _FinishedPool:
        return cls(
            ids=torch.full((batch, beams, max_len), pad_id, dtype=torch.long, device=device),
            log_probs=torch.full((batch, beams), float("-inf"), device=device),
            scores=torch.full((batch, beams), float("-inf"), device=device),
            lengths=torch.zeros(batch, beams, dtype=torch.long, device=device),
            start=start,
            alpha=alpha,
            pad_id=pad_id,
        )

    def add(self, mask: Tensor, seqs: Tensor, log_probs: Tensor) -> None:
        """Keep each sample's ``K`` best of the pool and the hypotheses ``seqs [B, M, w]`` that ``mask``
        selects (ties go to the pool: the earlier hypothesis stays)."""
        beams, max_len = self.ids.shape[1:]
        width = seqs.shape[2]
        log_probs = log_probs.masked_fill(~mask, float("-inf"))
        scores = log_probs / length_penalty(width - self.start, self.alpha).to(log_probs.device)
        seqs = torch.cat([seqs, seqs.new_full((*seqs.shape[:2], max_len - width), self.pad_id)], dim=2)
        all_scores = torch.cat([self.scores, scores], dim=1)
        keep = all_scores.sort(dim=1, descending=True, stable=True).indices[:, :beams]
        self.scores = all_scores.gather(1, keep)
        self.log_probs = torch.cat([self.log_probs, log_probs], dim=1).gather(1, keep)
        lengths = torch.cat([self.lengths, torch.full_like(log_probs, width, dtype=torch.long)], dim=1)
        self.lengths = lengths.gather(1, keep)
        self.ids = torch.cat([self.ids, seqs], dim=1).gather(1, keep[..., None].expand(-1, -1, max_len))

    def unbeatable(self, beam_scores: Tensor, width: int) -> Tensor:
        """``[B]``: the pool is full and its worst hypothesis scores at least the best live beam
        (``beam_scores [B, K]`` at ``width`` tokens): exact for alpha = 0, HF's heuristic otherwise."""
        penalty = length_penalty(width - self.start, self.alpha).to(beam_scores.device)
        bound = beam_scores.max(dim=1).values / penalty
        full = torch.isfinite(self.scores).all(dim=1)
        return full & (bound <= self.scores.min(dim=1).values)

    def best(self) -> GenerationOutput:
        """Each sample's best hypothesis, cut to the longest of them."""
        best = self.scores.argmax(dim=1)
        pick = torch.arange(best.shape[0], device=best.device)
        lengths = self.lengths[pick, best]
        width = int(lengths.max())
        return GenerationOutput(
            self.ids[pick, best, :width], lengths, self.log_probs[pick, best], self.scores[pick, best]
        )
