"""Captioning metrics of the COCO caption evaluation (pycocoevalcap): BLEU-1..4, CIDEr-D, ROUGE-L, METEOR.

Scores are corpus-level, as the COCO server reports them: every generated caption against all the
references of its image. pycocoevalcap's ``Cider`` is CIDEr-D (clipped n-gram counts, Gaussian length
penalty with sigma 6, x10), its document frequencies taken from the references of the evaluated set.
METEOR runs the Meteor 1.5 jar that pycocoevalcap ships, so it needs Java (``java`` on the ``PATH``);
without Java it is left out, never faked.

Text is tokenized in Python the way the COCO evaluation's Stanford PTB tokenizer treats plain
captions: lower case, punctuation split off and dropped (pycocoevalcap's own punctuation list). It
differs from the Java tokenizer on contractions and quotes, which generated and shapes captions do not
have; it saves a Java process per evaluation.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

_TOKEN = re.compile(r"\.\.\.|--|[\w']+|[^\w\s]")
_DROP = frozenset(PUNCTUATIONS)


def tokenize_caption(text: str) -> str:
    """Lower-cased words separated by single spaces, punctuation removed."""
    return " ".join(t for t in _TOKEN.findall(text.lower()) if t not in _DROP)


def java_available() -> bool:
    """Whether METEOR can run (it is a Java program)."""
    return shutil.which("java") is not None


def caption_scores(
    predictions: Mapping[str, str], references: Mapping[str, Sequence[str]], meteor: bool | None = None
) -> dict[str, float]:
    """Corpus scores of ``predictions`` (sample key → caption) against ``references`` (key → captions).

    Returns ``bleu_1`` .. ``bleu_4``, ``cider`` (CIDEr-D), ``rouge_l`` and, when ``meteor`` is True (or
    None and Java is available), ``meteor``. ``meteor=True`` without Java is an error.
    """
    if set(predictions) != set(references):
        missing = sorted(set(references) - set(predictions))[:5]
        extra = sorted(set(predictions) - set(references))[:5]
        raise ValueError(f"predictions and references differ in keys: missing {missing}, extra {extra}")
    if not predictions:
        raise ValueError("no captions to score")
    empty = [key for key, refs in references.items() if not refs]
    if empty:
        raise ValueError(f"references of {empty[:5]} are empty: each sample needs at least one")
    if meteor is None:
        meteor = java_available()
    elif meteor and not java_available():
        raise RuntimeError("meteor=True, but METEOR needs Java and `java` is not on the PATH")
    keys = sorted(predictions)
    res = {key: [tokenize_caption(predictions[key])] for key in keys}
    gts = {key: [tokenize_caption(r) for r in references[key]] for key in keys}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"bleu_{n + 1}": float(value) for n, value in enumerate(bleu)}
    scores["cider"] = float(Cider().compute_score(gts, res)[0])
    scores["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    if meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        try:
            scores["meteor"] = float(scorer.compute_score(gts, res)[0])
        finally:
            del scorer  # ends the Java process
    return scores
