"""Semantic score of text→image generation on shapes: does the image hold what the prompt names?

:func:`parse_prompt` reads a shapes caption into the objects it names, each a ``(colour, shape)`` with
either part ``None`` when the caption leaves it open ("there are exactly two red shapes" names
``("red", None)``, "there is a circle" ``(None, "circle")``), plus the total number of shapes when the
caption states it ("three shapes: ...", "there are exactly two shapes"). The shapes captions are
templated (:func:`vlp.datamodules.synth.text.captions_for`): every object mention is
``[size] [colour] [style] noun`` with the noun a shape name (plural in counts) or "shape(s)", so a colour
belongs to the next noun. Sizes and styles are not checked.

:class:`SemanticScore` counts an image as right when a judge (on shapes the
:class:`~vlp.metrics.shapes_judge.ShapesJudge`, a presence classifier over colour x shape pairs) finds
every named object: the exact pair, or any pair with the named colour / shape. Two mentions of the same
pair need one such object (presence, not instances). Prompts that name no colour or shape ("a large
shape") are not scored, only counted. Where the caption states the total and the judge's count is
given, ``count_acc`` is the share of those images whose count the judge reads as stated.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics import Metric

Mention = tuple[str | None, str | None]
GENERIC_NOUNS = frozenset({"shape", "shapes", "object", "objects"})
_WORD = re.compile(r"[a-z]+")
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
"""The count words a prompt may put before "shapes" (English, as the shapes captions write them)."""


@dataclass(frozen=True)
class PromptObjects:
    """What a prompt names: distinct ``(colour, shape)`` mentions in order, and the stated total count."""

    mentions: tuple[Mention, ...]
    count: int | None = None


def parse_prompt(prompt: str, colours: Sequence[str], shapes: Sequence[str]) -> PromptObjects:
    """The objects a shapes caption names (module docstring), over the given colour and shape names."""
    colour_set = set(colours)
    nouns = {name: name for name in shapes} | {f"{name}s": name for name in shapes}
    words = _WORD.findall(prompt.lower())
    mentions: list[Mention] = []
    colour: str | None = None
    count: int | None = None
    for index, word in enumerate(words):
        if word in colour_set:
            colour = word
        elif word in nouns or word in GENERIC_NOUNS:
            mention = (colour, nouns.get(word))
            if mention != (None, None) and mention not in mentions:
                mentions.append(mention)
            colour = None
            if word in ("shape", "shapes") and index and words[index - 1] in NUMBER_WORDS:
                count = NUMBER_WORDS.index(words[index - 1])
    if colour is not None and (colour, None) not in mentions:
        mentions.append((colour, None))
    return PromptObjects(tuple(mentions), count)


def prompt_satisfied(
    present: Tensor, parsed: PromptObjects, colours: Sequence[str], shapes: Sequence[str]
) -> bool:
    """Whether the bool presence grid ``[num_colours, num_shapes]`` holds every mention of ``parsed``."""
    for colour, shape in parsed.mentions:
        rows = present[colours.index(colour)] if colour is not None else present.any(dim=0)
        if not bool(rows[shapes.index(shape)] if shape is not None else rows.any()):
            return False
    return True


class SemanticScore(Metric):
    """Share of scored images in which the judge finds every object the prompt names (module docstring).

    ``update(present [N, C, S] bool, prompts, counts [N] | None)``; ``compute()`` returns
    ``semantic_score``, ``scored`` and ``unscored`` (prompts naming no colour or shape) and, when counts
    were given for prompts that state one, ``count_acc`` over those ``counted`` prompts. Summed over
    processes.

    Args:
        colours, shapes: the judge's names, in the order of its presence grid.
    """

    full_state_update = False

    def __init__(self, colours: Sequence[str], shapes: Sequence[str]) -> None:
        super().__init__()
        self.colours, self.shapes = list(colours), list(shapes)
        for name in ("correct", "scored", "unscored", "count_correct", "count_total"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, present: Tensor, prompts: Sequence[str], counts: Tensor | None = None) -> None:
        if present.shape != (len(prompts), len(self.colours), len(self.shapes)):
            raise ValueError(
                f"present must be [len(prompts), {len(self.colours)}, {len(self.shapes)}], got {tuple(present.shape)}"
            )
        present = present.cpu()
        for row, prompt in enumerate(prompts):
            parsed = parse_prompt(prompt, self.colours, self.shapes)
            if not parsed.mentions:
                self.unscored += 1
                continue
            self.scored += 1
            self.correct += int(prompt_satisfied(present[row], parsed, self.colours, self.shapes))
            if counts is not None and parsed.count is not None:
                self.count_total += 1
                self.count_correct += int(int(counts[row]) == parsed.count)

    def compute(self) -> dict[str, Tensor]:
        result = {
            "semantic_score": self.correct.float() / self.scored.clamp(min=1),
            "scored": self.scored,
            "unscored": self.unscored,
        }
        if self.count_total > 0:
            result["count_acc"] = self.count_correct.float() / self.count_total
            result["counted"] = self.count_total
        return result
