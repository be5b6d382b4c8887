"""The official VQA accuracy: the answer processing and the leave-one-annotator-out average, with the
expected values worked out by hand from the official evaluation's rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vlp.metrics.vqa_official import OfficialVQAAccuracy, normalize_answer, vqa_accuracy


def official_mean(per_subset: list[float]) -> float:
    """The mean the official code takes: summed left to right, divided by the number of subsets."""
    total = 0.0
    for accuracy in per_subset:
        total += accuracy
    return total / len(per_subset)


# ------------------------------------------------------------------------------------- answer processing


@pytest.mark.parametrize(
    ("raw", "processed"),
    [
        ("Two dogs.", "2 dogs"),  # number word, capital, final period
        ("the red one", "red 1"),  # article dropped, number word
        ("An apple", "apple"),
        ("none", "0"),  # the official map sends "none" to "0"
        ("dont", "don't"),  # contractions restored
        ("Dont", "don't"),  # after lower-casing
        ("Im", "im"),  # the table's capitalised keys never match a lower-cased word
        ("black/white", "black white"),  # a mark touching no space becomes a space
        ("black / white", "black white"),  # a mark next to a space is removed
        ("hello-world, fine", "hello world fine"),  # ", " removes commas; "-" touches no space
        ("1,000", "1000"),  # digit-comma-digit: every mark is removed, not spaced
        ("(1,000)-ish", "1000ish"),  # ... including the others in the same text
        ("3.5", "3.5"),  # a period before a digit stays
        ("a.m.", "am"),
        ("yes!", "yes"),
        ("  yes\tsir\n", "yes sir"),  # tabs and new lines are spaces, white space collapses
        ("it's", "it's"),  # the apostrophe is not punctuation here
        ("1.\u0663", "1\u0663"),  # \d is ASCII [0-9] as in the official Python 2 code
    ],
)
def test_normalize_answer_follows_the_official_processing(raw: str, processed: str) -> None:
    assert normalize_answer(raw) == processed


def test_at_most_32_periods_are_removed_as_in_the_official_call() -> None:
    # The official code passes re.UNICODE (32) where Pattern.sub takes its count.
    assert normalize_answer("." * 40) == "." * 8


# ------------------------------------------------------------------------------------------------ accuracy


def test_answer_given_by_one_two_three_or_four_annotators() -> None:
    # n agreeing annotators: the n subsets without one of them hold n - 1 matches, the 10 - n others n.
    for n, expected in ((1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0)):
        answers = ["cat"] * n + ["dog"] * (10 - n)
        by_hand = official_mean([min(1.0, (n - 1) / 3)] * n + [min(1.0, n / 3)] * (10 - n))
        assert vqa_accuracy("cat", answers) == by_hand
        assert by_hand == pytest.approx(expected, abs=1e-15)  # the sum of thirds rounds in the last bit
    assert vqa_accuracy("cat", ["cat", "dog", "dog", "cat", "dog", "dog", "dog", "cat", "dog", "dog"]) == 0.9


def test_an_answer_nobody_gave_scores_zero() -> None:
    assert vqa_accuracy("bird", ["cat"] * 5 + ["dog"] * 5) == 0.0


def test_answers_differing_only_by_punctuation_articles_numbers_or_contractions_match() -> None:
    # Each prediction matches 2 annotators once processed: 2 subsets of 1 match, 8 of 2 -> 0.6.
    two_of_ten = official_mean([1 / 3] * 2 + [2 / 3] * 8)
    assert two_of_ten == 0.6
    assert vqa_accuracy("T shirt", ["t-shirt", "t-shirt"] + ["shirt"] * 8) == two_of_ten
    assert vqa_accuracy("the dog", ["a dog", "dog"] + ["cat"] * 8) == two_of_ten
    assert vqa_accuracy("two", ["2", "2 "] + ["3"] * 8) == two_of_ten
    assert vqa_accuracy("dont", ["don't", "don't"] + ["no"] * 8) == two_of_ten
    assert vqa_accuracy("1000", ["1,000", "1000"] + ["100"] * 8) == two_of_ten


def test_three_annotators_agreeing_after_processing_give_point_nine() -> None:
    # "2", "two" and "Two." are one answer once processed: the 3 subsets without one of them hold
    # 2 matches (2/3 each), the 7 others 3 (1 each): (3 * 2/3 + 7) / 10.
    answers = ["2", "two", "Two."] + ["3"] * 7
    expected = official_mean([2 / 3, 2 / 3, 2 / 3, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert vqa_accuracy("2", answers) == expected == 0.9
    assert vqa_accuracy("two", answers) == 0.9


def test_yes_no() -> None:
    answers = ["yes"] * 9 + ["no"]
    assert vqa_accuracy("yes", answers) == 1.0  # 8 or 9 matches in every subset
    assert vqa_accuracy("Yes", answers) == 1.0  # answers differ, so the prediction is processed
    # the 9 subsets that keep the "no" hold 1 match, the one without it none
    assert vqa_accuracy("no", answers) == official_mean([1 / 3] * 9 + [0.0]) == pytest.approx(0.3, abs=1e-15)
    assert vqa_accuracy("no", ["no"] * 10) == 1.0


def test_unanimous_answers_are_compared_without_processing() -> None:
    # Official quirk: when the ten cleaned answers are one string, nothing is processed.
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy("two", ["2"] * 10) == 0.0
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == 1.0  # cleaning always happens
    assert vqa_accuracy("Yes", ["yes"] * 9 + ["yes\t"]) == 0.0  # unanimous once cleaned
    # one differing spelling switches the processing on for all of them
    assert vqa_accuracy("two", ["2"] * 9 + ["two"]) == 1.0


def test_vqa_accuracy_refuses_no_answers() -> None:
    with pytest.raises(ValueError, match="non-empty list"):
        vqa_accuracy("yes", [])
    with pytest.raises(ValueError, match="non-empty list"):
        vqa_accuracy("yes", "yes")


# ------------------------------------------------------------------------------------------------ metric


def test_metric_is_the_mean_over_questions_of_every_batch() -> None:
    metric = OfficialVQAAccuracy()
    metric.update(["cat", "two"], [["cat"] * 10, ["2", "2", "2"] + ["3"] * 7])
    metric.update(["bird"], [["cat"] * 10])
    assert metric.compute().item() == (1.0 + 0.9 + 0.0) / 3
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert torch.isnan(metric.compute())


def test_metric_refuses_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1"):
        OfficialVQAAccuracy().update(["a", "b"], [["a"] * 10])


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        metric = OfficialVQAAccuracy()
        if rank == 0:
            metric.update(["cat", "cat"], [["cat"] * 10, ["cat"] + ["dog"] * 9])  # 1.0, 0.3
        else:
            metric.update(["dog"], [["cat"] * 10])  # 0.0
        torch.save(metric.compute(), Path(out_dir) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.slow
def test_metric_reduces_over_processes(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    expected = (1.0 + official_mean([0.0] + [1 / 3] * 9) + 0.0) / 3
    for rank in (0, 1):
        # sums of float64 over the two processes in a fixed order: exact
        assert torch.load(tmp_path / f"{rank}.pt", weights_only=True).item() == expected
