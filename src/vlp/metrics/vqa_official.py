"""VQA accuracy as the official VQA evaluation (``vqaEval.py`` of the VQA API) computes it.

An answer is cleaned (new lines and tabs to spaces, surrounding white space removed) and then, as the
official code does, *processed*: punctuation removed or turned into spaces, lower case, number words up to
ten turned into digits (``"none"`` too, into ``"0"``), the articles *a*, *an*, *the* removed and
apostrophe-less contractions restored (``"dont"`` -> ``"don't"``).

The processing is applied only to questions whose ten cleaned ground-truth answers are not all the same
string; when they all agree, neither they nor the prediction are processed, so the prediction must equal
them exactly (``"Yes"`` scores 0 against ten ``"yes"``). This is the official code's behaviour, kept here
so that scores match those of the evaluation server.

The accuracy of a prediction is the average, over the ten ways of leaving one annotator out, of
``min(1, matches / 3)`` with ``matches`` the number of the nine others who gave the prediction: an answer
given by 1, 2, 3 or at least 4 of ten annotators scores 0.3, 0.6, 0.9 or 1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["OfficialVQAAccuracy", "normalize_answer", "vqa_accuracy"]

PUNCTUATION = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
"""Removed (or turned into a space) by the processing; the apostrophe, colon, ``#``, ``$``, ``%``, ``&``,
``*`` and the period (handled on its own) are not among them."""

NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

ARTICLES = frozenset({"a", "an", "the"})

# The official table, entries kept as they are: the capitalised keys ("Im", "Ive", ...) never match a
# lower-cased word, and "somebody'd" maps to "somebodyd".
CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}

# The official period pattern begins with "(?!<=\d)", a look-ahead (not the look-behind it resembles) that
# always holds where a period stands: a period is removed unless a digit follows it ("3.5" is kept, "5."
# loses it). re.ASCII: the official code ran on Python 2, where \d of these patterns is [0-9].
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)", re.ASCII)
# The official call passes re.UNICODE (32) where Pattern.sub takes its count: at most 32 periods go.
_PERIOD_COUNT = 32


def clean_answer(text: str) -> str:
    """New lines and tabs to spaces, surrounding white space removed (applied to every answer)."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """Each punctuation mark is removed where it touches a space or the text holds a digit-comma-digit
    (``"1,000"`` -> ``"1000"``), else replaced by a space (``"black/white"`` -> ``"black white"``); both
    conditions look at the text as given, not as earlier marks left it. Then periods not followed by a
    digit are removed."""
    remove = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if remove or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def process_digits_articles(text: str) -> str:
    """Lower-cased words split on white space; number words to digits, then articles dropped, then
    contractions restored; joined by single spaces."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(text: str) -> str:
    """The official processing of an answer: :func:`clean_answer`, :func:`process_punctuation`, then
    :func:`process_digits_articles` (``"Two dogs."`` -> ``"2 dogs"``, ``"dont"`` -> ``"don't"``).

    :func:`vqa_accuracy` applies it only where the official evaluation does (see the module docstring).
    """
    return process_digits_articles(process_punctuation(clean_answer(text)))


def vqa_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """The official accuracy of ``prediction`` against the annotators' answers (ten in VQAv2).

    The answers are compared processed (:func:`normalize_answer`) when the cleaned ground-truth answers
    are not all the same, else as cleaned only. The result is the mean over the leave-one-annotator-out
    subsets of ``min(1, matches / 3)``, summed in annotator order as the official code sums, so the float
    is the same to the last bit.
    """
    if isinstance(gt_answers, str) or not gt_answers:
        raise ValueError(f"gt_answers must be a non-empty list of answer strings, got {gt_answers!r}")
    answers = [clean_answer(answer) for answer in gt_answers]
    predicted = clean_answer(prediction)
    if len(set(answers)) > 1:
        answers = [process_digits_articles(process_punctuation(answer)) for answer in answers]
        predicted = process_digits_articles(process_punctuation(predicted))
    total = 0.0
    for left_out in range(len(answers)):
        matches = sum(1 for i, answer in enumerate(answers) if i != left_out and answer == predicted)
        total += min(1.0, matches / 3)
    return total / len(answers)


class OfficialVQAAccuracy(Metric):
    """Mean official VQA accuracy (:func:`vqa_accuracy`) over the questions seen since the last reset,
    summed over processes (float64 sum and question count), so a DDP evaluation scores the whole split.

    ``compute`` returns a 0-dim float64 tensor in [0, 1] (multiply by 100 for the server's percentage);
    NaN before any question was seen.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], gt_answers: Sequence[Sequence[str]]) -> None:
        """Score one batch: ``predictions[i]`` (an answer string) against ``gt_answers[i]``."""
        if len(predictions) != len(gt_answers):
            raise ValueError(
                f"{len(predictions)} predictions but {len(gt_answers)} ground-truth answer lists: one list "
                "of annotator answers per prediction"
            )
        batch_total = 0.0
        for prediction, answers in zip(predictions, gt_answers):
            batch_total += vqa_accuracy(prediction, answers)
        self.total += batch_total
        self.count += len(predictions)

    def compute(self) -> Tensor:
        return self.total / self.count
