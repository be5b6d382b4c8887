"""Greedy and beam search over hand-made next-token tables: beam 1 is greedy, beam search sees past a
myopic first choice, the length penalty changes the winner as GNMT's formula says, EOS ends a
hypothesis, batching and state reordering change nothing, and a wide beam finds the exhaustive best."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from vlp.models.layers.generation import beam_search, greedy_search, index_state, length_penalty

PAD, BOS, EOS, A, B, C = range(6)
VOCAB = 6


def bigram_step(table: dict[int, dict[int, float]]):
    """``step`` whose next-token distribution depends on the last token only (unlisted tokens: 0)."""
    logits = torch.full((VOCAB, VOCAB), float("-inf"))
    for last, row in table.items():
        for token, prob in row.items():
            logits[last, token] = math.log(prob)

    def step(ids: torch.Tensor, state: object) -> tuple[torch.Tensor, object]:
        return logits[ids[:, -1]], state

    return step


def prompt(batch: int = 1, token: int = BOS) -> torch.Tensor:
    return torch.full((batch, 1), token)


# greedy takes A (0.5), then C (0.4), then EOS (0.9): 0.18; B (0.4) then EOS (0.95) is 0.38.
MYOPIC = {
    BOS: {A: 0.5, B: 0.4, C: 0.1},
    A: {C: 0.4, B: 0.3, EOS: 0.3},
    B: {EOS: 0.95, A: 0.05},
    C: {EOS: 0.9, A: 0.1},
    PAD: {A: 0.5, B: 0.5},  # what a finished row would be offered: must never be taken
}


def test_beam_search_sees_past_greedys_first_choice() -> None:
    step = bigram_step(MYOPIC)
    greedy = greedy_search(step, prompt(), max_len=6, eos_id=EOS, pad_id=PAD)
    beam = beam_search(step, prompt(), max_len=6, eos_id=EOS, pad_id=PAD, num_beams=2)
    assert greedy.sequences.tolist() == [[BOS, A, C, EOS]]
    assert beam.sequences.tolist() == [[BOS, B, EOS]]
    assert greedy.log_probs.item() == pytest.approx(math.log(0.5 * 0.4 * 0.9), rel=1e-5)
    assert beam.log_probs.item() == pytest.approx(math.log(0.4 * 0.95), rel=1e-5)
    assert beam.log_probs.item() > greedy.log_probs.item()


# an unlikely EOS ranked among the first K at step one, then another at step two, fill a pool of 2 while
# the likelier A C EOS (0.378, greedy's choice) is still live: stopping there would return BOS EOS (0.3)
EARLY_EOS = {
    BOS: {A: 0.6, EOS: 0.3, B: 0.1},
    A: {C: 0.7, EOS: 0.3},
    B: {EOS: 1.0},
    C: {EOS: 0.9, A: 0.1},
}


def test_beam_search_keeps_going_while_a_live_beam_can_beat_its_finished_hypotheses() -> None:
    step = bigram_step(EARLY_EOS)
    greedy = greedy_search(step, prompt(), max_len=6, eos_id=EOS, pad_id=PAD)
    beam = beam_search(step, prompt(), max_len=6, eos_id=EOS, pad_id=PAD, num_beams=2)
    assert greedy.sequences.tolist() == [[BOS, A, C, EOS]]
    assert beam.sequences.tolist() == [[BOS, A, C, EOS]]  # not [BOS, EOS], finished first
    assert beam.log_probs.item() == pytest.approx(math.log(0.6 * 0.7 * 0.9), rel=1e-5)
    assert beam.lengths.tolist() == [4]


@pytest.mark.parametrize("seed", range(6))
def test_beam_search_without_length_penalty_never_loses_to_greedy_on_its_own_path(seed: int) -> None:
    """On these peaked tables greedy's hypothesis stays among the live beams, so beam search (alpha = 0)
    must return one at least as likely; stopping at the first K finished did not (seeds 1 and 3)."""
    table = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(seed)) * 4
    table[:, PAD] = float("-inf")

    def step(ids: torch.Tensor, state: object) -> tuple[torch.Tensor, object]:
        return table[ids[:, -1]], state

    start = torch.tensor([[BOS], [A], [B], [C]])
    greedy = greedy_search(step, start, max_len=7, eos_id=EOS, pad_id=PAD)
    beam = beam_search(step, start, max_len=7, eos_id=EOS, pad_id=PAD, num_beams=3)
    assert (beam.log_probs >= greedy.log_probs - 1e-5).all(), (beam.log_probs, greedy.log_probs)


def random_step(seed: int, vocab: int = 9):
    """A trigram table of random logits (every token possible), fixed by ``seed``."""
    table = torch.randn(vocab, vocab, vocab, generator=torch.Generator().manual_seed(seed)) * 2

    def step(ids: torch.Tensor, state: object) -> tuple[torch.Tensor, object]:
        previous = ids[:, -2] if ids.shape[1] > 1 else ids[:, -1]
        return table[previous, ids[:, -1]], state

    return step


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.5])
def test_beam_of_one_is_greedy(alpha: float) -> None:
    step = random_step(3)
    start = torch.tensor([[1], [4], [5], [7]])
    greedy = greedy_search(step, start, max_len=9, eos_id=2, pad_id=0)
    beam = beam_search(step, start, max_len=9, eos_id=2, pad_id=0, num_beams=1, alpha=alpha)
    assert (greedy.lengths < 9).any() and (greedy.lengths == 9).any()  # some end with EOS, some are cut
    assert beam.sequences.tolist() == greedy.sequences.tolist()
    assert beam.lengths.tolist() == greedy.lengths.tolist()
    torch.testing.assert_close(beam.log_probs, greedy.log_probs)


def test_length_penalty_changes_the_winner() -> None:
    """A EOS (p 0.55, 2 tokens) against B C C C C EOS (p 0.45, 6 tokens): the raw log-probability
    prefers the short one; GNMT's penalty with alpha = 1 divides by 7/6 against 11/6 and flips it."""
    table = bigram_step({BOS: {A: 0.55, B: 0.45}, A: {EOS: 1.0}, B: {C: 1.0}, C: {C: 1.0}})
    long_seq = [BOS, B, C, C, C, C, EOS]

    def step(ids: torch.Tensor, state: object) -> tuple[torch.Tensor, object]:
        logits = table(ids, state)[0].clone()
        ends = (ids[:, -1] == C) & (ids.shape[1] == len(long_seq) - 1)  # the fifth C is EOS for sure
        logits[ends] = float("-inf")
        logits[ends, EOS] = 0.0
        return logits, state

    short = beam_search(step, prompt(), max_len=10, eos_id=EOS, pad_id=PAD, num_beams=2, alpha=0.0)
    assert short.sequences.tolist() == [[BOS, A, EOS]]
    long = beam_search(step, prompt(), max_len=10, eos_id=EOS, pad_id=PAD, num_beams=2, alpha=1.0)
    assert long.sequences.tolist() == [long_seq]
    assert long.log_probs.item() == pytest.approx(math.log(0.45), rel=1e-5)
    assert long.scores.item() == pytest.approx(math.log(0.45) / (11 / 6), rel=1e-5)
    assert math.log(0.55) / (7 / 6) < long.scores.item()  # what the short one would have scored
    assert length_penalty(6, 1.0).item() == pytest.approx(11 / 6)
    assert length_penalty(6, 0.0).item() == 1.0


def test_eos_ends_a_hypothesis() -> None:
    """Rows end at different steps; nothing follows EOS but padding, and its probability never counts."""
    table = {A: {B: 0.8, C: 0.2}, B: {EOS: 0.7, A: 0.3}, C: {A: 0.6, EOS: 0.4}, PAD: {A: 0.9, C: 0.1}}
    start = torch.tensor([[A], [C]])  # A B EOS | C A B EOS
    for result in (
        greedy_search(bigram_step(table), start, max_len=8, eos_id=EOS, pad_id=PAD),
        beam_search(bigram_step(table), start, max_len=8, eos_id=EOS, pad_id=PAD, num_beams=1),
    ):
        assert result.sequences.tolist() == [[A, B, EOS, PAD], [C, A, B, EOS]]
        assert result.lengths.tolist() == [3, 4]
        expected = torch.tensor([math.log(0.8 * 0.7), math.log(0.6 * 0.8 * 0.7)])
        torch.testing.assert_close(result.log_probs, expected)
    # 3 beams: two of them start dead (only B and C follow A) and read rows of -inf logits
    beam = beam_search(bigram_step(table), start, max_len=8, eos_id=EOS, pad_id=PAD, num_beams=3)
    assert beam.sequences.tolist() == [[A, B, EOS], [C, EOS, PAD]]  # C EOS (0.4) beats C A B EOS (0.336)
    torch.testing.assert_close(beam.log_probs, torch.tensor([math.log(0.56), math.log(0.4)]))
    for row, length in zip(beam.sequences.tolist(), beam.lengths.tolist()):
        assert row[length - 1] == EOS and EOS not in row[: length - 1]
        assert all(token == PAD for token in row[length:])


def test_max_len_cuts_hypotheses_that_never_end() -> None:
    step = bigram_step({BOS: {A: 1.0}, A: {A: 0.9, EOS: 0.1}})
    for result in (
        greedy_search(step, prompt(2), max_len=5, eos_id=EOS, pad_id=PAD),
        beam_search(step, prompt(2), max_len=5, eos_id=EOS, pad_id=PAD, num_beams=1),
    ):
        assert result.sequences.tolist() == [[BOS, A, A, A, A]] * 2
        assert result.lengths.tolist() == [5, 5]


def test_beam_search_batches_and_reorders_state_like_one_sample_at_a_time() -> None:
    """Each sample's per-row bias lives in the state, so a wrong reorder would mix samples up."""
    table = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(1))
    biases = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(2)) * 3

    def step(ids: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        return table[ids[:, -1]] + state["bias"], state

    start = torch.tensor([[BOS], [A], [C]])
    batched = beam_search(step, start, 7, EOS, PAD, num_beams=3, alpha=0.7, state={"bias": biases})
    for i in range(3):
        single = beam_search(
            step, start[i : i + 1], 7, EOS, PAD, num_beams=3, alpha=0.7, state={"bias": biases[i : i + 1]}
        )
        length = int(single.lengths[0])
        assert batched.sequences[i, :length].tolist() == single.sequences[0, :length].tolist()
        torch.testing.assert_close(batched.scores[i], single.scores[0])


def test_a_beam_as_wide_as_the_search_space_finds_the_exhaustive_best() -> None:
    """Generated tokens are EOS, A or B, at most 4 of them, from a table that depends on the position
    and the last token: never more than 16 live prefixes, so 16 beams keep every one alive and must
    return the best length-normalised hypothesis of all 31."""
    table = torch.full((8, VOCAB, VOCAB), float("-inf"))
    table[..., [EOS, A, B]] = torch.randn(8, VOCAB, 3, generator=torch.Generator().manual_seed(4)) * 2

    def step(ids: torch.Tensor, state: object) -> tuple[torch.Tensor, object]:
        return table[ids.shape[1], ids[:, -1]], state

    alpha, max_len = 0.8, 5
    hypotheses = [
        [BOS, *body, EOS] for n in range(max_len - 1) for body in itertools.product([A, B], repeat=n)
    ]
    hypotheses += [[BOS, *body] for body in itertools.product([A, B], repeat=max_len - 1)]  # cut, no EOS
    assert len(hypotheses) == 31

    def score(seq: list[int]) -> float:
        ids = torch.tensor([seq])
        total = sum(
            torch.log_softmax(step(ids[:, :t], None)[0], -1)[0, seq[t]].item() for t in range(1, len(seq))
        )
        return total / ((5 + len(seq) - 1) / 6) ** alpha

    best = max(hypotheses, key=score)
    beam = beam_search(step, prompt(), max_len, EOS, PAD, num_beams=16, alpha=alpha)
    assert beam.sequences[0, : int(beam.lengths[0])].tolist() == best
    assert beam.scores.item() == pytest.approx(score(best), rel=1e-5)
    narrow = beam_search(step, prompt(), max_len, EOS, PAD, num_beams=2, alpha=alpha)
    assert narrow.scores.item() <= beam.scores.item() + 1e-6


def test_index_state_picks_rows_of_nested_tensors() -> None:
    state = {"a": torch.arange(3), "b": [torch.arange(6).view(3, 2), None], "n": 5}
    picked = index_state(state, torch.tensor([2, 0]))
    assert picked["a"].tolist() == [2, 0]
    assert picked["b"][0].tolist() == [[4, 5], [0, 1]] and picked["b"][1] is None and picked["n"] == 5


def test_bad_arguments_are_refused() -> None:
    step = bigram_step(MYOPIC)
    with pytest.raises(ValueError, match="max_len"):
        greedy_search(step, prompt(), max_len=1, eos_id=EOS, pad_id=PAD)
    with pytest.raises(ValueError, match="eos_id and pad_id"):
        beam_search(step, prompt(), max_len=4, eos_id=EOS, pad_id=EOS)
    with pytest.raises(ValueError, match="num_beams"):
        beam_search(step, prompt(), max_len=4, eos_id=EOS, pad_id=PAD, num_beams=0)
    with pytest.raises(ValueError, match="prompt"):
        greedy_search(step, torch.tensor([BOS]), max_len=4, eos_id=EOS, pad_id=PAD)
