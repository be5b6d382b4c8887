"""VQA answer text: the official VQA evaluation's answer processing, ViLT's answer normalisation and
ViLT's soft score.

The official evaluation (``vqaEval.py`` of the VQA API) cleans an answer (new lines and tabs to spaces,
surrounding white space removed) and *processes* it: punctuation removed or turned into spaces, lower case,
number words up to ten turned into digits (``"none"`` too, into ``"0"``), the articles *a*, *an*, *the*
removed and apostrophe-less contractions restored (``"dont"`` -> ``"don't"``). ViLT builds its answer
vocabulary with the same processing (its ``normalize_word``) and then removes every comma.

Plain Python (no torch): the dataset converters and :mod:`vlp.metrics.vqa_official` both use it.
"""

from __future__ import annotations

import re

__all__ = [
    "ARTICLES",
    "CONTRACTIONS",
    "NUMBER_WORDS",
    "PUNCTUATION",
    "clean_answer",
    "normalize_answer",
    "process_digits_articles",
    "process_punctuation",
    "vilt_answer",
    "vilt_score",
]

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
# loses it). re.ASCII: the official code ran on Python 2, where \d of these patterns is [0-9]; ViLT's copy
# runs on Python 3, where \d is any Unicode digit.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)", re.ASCII)
_PERIOD_UNICODE = re.compile(r"(?!<=\d)(\.)(?!\d)")
_DIGIT_COMMA_DIGIT_UNICODE = re.compile(r"(\d)(,)(\d)")
# The official call passes re.UNICODE (32) where Pattern.sub takes its count: at most 32 periods go.
_PERIOD_COUNT = 32


def clean_answer(text: str) -> str:
    """New lines and tabs to spaces, surrounding white space removed (applied to every answer)."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str, *, unicode_digits: bool = False) -> str:
    """Each punctuation mark is removed where it touches a space or the text holds a digit-comma-digit
    (``"1,000"`` -> ``"1000"``), else replaced by a space (``"black/white"`` -> ``"black white"``); both
    conditions look at the text as given, not as earlier marks left it. Then periods not followed by a
    digit are removed. ``unicode_digits``: any Unicode digit counts as a digit (ViLT), not only 0-9."""
    comma, period = (
        (_DIGIT_COMMA_DIGIT_UNICODE, _PERIOD_UNICODE) if unicode_digits else (_DIGIT_COMMA_DIGIT, _PERIOD)
    )
    remove = comma.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if remove or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return period.sub("", out, count=_PERIOD_COUNT)


def process_digits_articles(text: str) -> str:
    """Lower-cased words split on white space; number words to digits, then articles dropped, then
    contractions restored; joined by single spaces."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(text: str) -> str:
    """The official processing of an answer: :func:`clean_answer`, :func:`process_punctuation`, then
    :func:`process_digits_articles` (``"Two dogs."`` -> ``"2 dogs"``, ``"dont"`` -> ``"don't"``).

    :func:`vlp.metrics.vqa_official.vqa_accuracy` applies it only where the official evaluation does.
    """
    return process_digits_articles(process_punctuation(clean_answer(text)))


def vilt_answer(text: str) -> str:
    """ViLT's ``normalize_word``, which its answer vocabulary is built from: the official processing
    without the cleaning, with Unicode digits (ViLT runs on Python 3), then every comma removed."""
    return process_digits_articles(process_punctuation(text, unicode_digits=True)).replace(",", "")


def vilt_score(count: int) -> float:
    """ViLT's soft target of an answer given by ``count`` of the ten annotators: 0, 0.3, 0.6, 0.9, then
    1 from four on (the official accuracy of that answer, rounded)."""
    if count < 0:
        raise ValueError(f"an answer count cannot be negative, got {count}")
    return (0.0, 0.3, 0.6, 0.9)[count] if count < 4 else 1.0
