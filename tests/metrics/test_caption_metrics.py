"""Caption metrics on hand cases with known values."""

from __future__ import annotations

import math

import pytest

from vlp.metrics.captioning import caption_scores, java_available, tokenize_caption

REFS = {"a": ["a red circle above a blue square"], "b": ["two green triangles"]}


def test_tokenization_lowers_and_drops_punctuation_as_the_coco_evaluation() -> None:
    assert tokenize_caption("Three shapes: a small, RED circle...") == "three shapes a small red circle"
    assert tokenize_caption("  it's  here. ") == "it's here"


def test_identical_captions_score_one_and_cider_d_is_ten_per_matched_n_gram_order() -> None:
    scores = caption_scores({k: v[0] for k, v in REFS.items()}, REFS, meteor=False)
    assert scores["bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert scores["bleu_1"] == pytest.approx(1.0, abs=1e-6)
    assert scores["rouge_l"] == pytest.approx(1.0)
    # CIDEr-D = 10 x mean over n = 1..4 of the cosine of the n-gram tf-idf vectors: 1 for every n of "a",
    # but "b" has three words, no 4-gram, so its n = 4 term is 0: (10 + 7.5) / 2
    assert scores["cider"] == pytest.approx((10.0 + 7.5) / 2)
    assert "meteor" not in scores


def test_unrelated_captions_score_zero() -> None:
    scores = caption_scores({"a": "hello world", "b": "foo"}, REFS, meteor=False)
    for name in ("bleu_1", "bleu_4", "cider", "rouge_l"):
        assert scores[name] == pytest.approx(0.0, abs=1e-9), name


def test_partial_match_has_the_hand_computed_bleu_1_and_rouge_l() -> None:
    # candidate "a red circle" against "a red circle above a blue square": 3 of 3 unigrams match, brevity
    # penalty exp(1 - 7/3); LCS = 3, P = 1, R = 3/7, ROUGE-L (beta 1.2) = (1 + b^2) P R / (R + b^2 P)
    scores = caption_scores({"a": "a red circle"}, {"a": REFS["a"]}, meteor=False)
    assert scores["bleu_1"] == pytest.approx(math.exp(1 - 7 / 3), rel=1e-6)
    beta, precision, recall = 1.2, 1.0, 3 / 7
    expected = (1 + beta**2) * precision * recall / (recall + beta**2 * precision)
    assert scores["rouge_l"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow  # each scorer starts a JVM that loads Meteor's paraphrase tables: about a minute here
@pytest.mark.skipif(not java_available(), reason="METEOR is a Java program")
def test_meteor_runs_through_java() -> None:
    same = caption_scores({k: v[0] for k, v in REFS.items()}, REFS, meteor=True)
    other = caption_scores({"a": "hello world", "b": "foo"}, REFS, meteor=True)
    assert same["meteor"] > 0.95 and other["meteor"] == pytest.approx(0.0, abs=1e-6)


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match=r"differ in keys: missing \['b'\]"):
        caption_scores({"a": "x"}, REFS, meteor=False)
    with pytest.raises(ValueError, match=r"references of \['a'\] are empty"):
        caption_scores({"a": "x"}, {"a": []}, meteor=False)
