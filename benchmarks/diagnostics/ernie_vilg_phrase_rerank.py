"""Rerank ERNIE-ViLG's saved candidates by the generator's own image→text likelihood of each object the
prompt names, and judge.

    python benchmarks/diagnostics/ernie_vilg_phrase_rerank.py RUN_DIR PREDICT_DIR [PREDICT_DIR ...] \
        [--checkpoint last.ckpt] [--weights W ...]

The task's reranking keeps the candidate with the highest ``log p(prompt | image)``, which favours sparse
pictures: fewer objects make any one caption of the picture more likely, so a candidate missing a named
object can win. Here each object the prompt names (:func:`vlp.metrics.semantic.parse_prompt`: a colour, a
shape or both) becomes a single mention in the shapes captions' own wording, "there is a red circle",
"there is a red shape", "there is a circle", and every candidate (read from predict's 8-bit PNG grid and
re-encoded by the run's VQGAN) is scored by the run's image→text log-likelihood of each mention
(:func:`vlp.models.ernie_vilg.sampling.prompt_log_likelihoods`). A missing object makes its mention
unlikely, whatever else the picture holds. Per predict directory, the share of prompts whose chosen
candidate passes the shapes judge:

- ``own``: the grid's first candidate, the task's own reranking (the semantic score, up to 8-bit rounding);
- ``min``: the highest least-likely mention;
- ``own + w * min``: the highest ``candidate_scores + w * min`` for each ``--weights`` value;
- ``any``: at least one candidate passes (a perfect reranker).

Tune ``w`` on val prompts, then read it once on test. A diagnostic: the choice is made after predict,
from the PNGs, by the same generator's image→text direction; the judge only scores it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

# The sibling scripts: same folder, on sys.path when run.
from ernie_vilg_candidates import JudgedRow, RowScore, report_reranking
from ernie_vilg_text_use import build

from vlp.metrics.generation import GenerationEvaluation
from vlp.metrics.semantic import PromptObjects
from vlp.metrics.shapes_judge import ShapesJudge
from vlp.models.ernie_vilg.sampling import prompt_log_likelihoods


def mention_captions(parsed: PromptObjects) -> list[str]:
    """One single-mention caption per named object, in the shapes captions' wording."""
    captions = []
    for colour, shape in parsed.mentions:
        phrase = " ".join(word for word in (colour, shape or "shape") if word)
        captions.append(f"there is {'an' if phrase[0] in 'aeiou' else 'a'} {phrase}")
    return captions


def least_likely_mention(task, collator) -> RowScore:
    """A row's candidates scored by their least likely named object (module docstring)."""

    @torch.no_grad()
    def score(row: JudgedRow) -> torch.Tensor:
        codes = task.encode_images(row.tiles * 2 - 1)
        text = collator.tokenize(mention_captions(row.parsed))
        table = prompt_log_likelihoods(task.model, codes, text["input_ids"], text["attention_mask"].bool())
        return table.min(dim=1).values

    return score


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="the ERNIE-ViLG run folder (config.yaml, checkpoints/)")
    parser.add_argument("directories", type=Path, nargs="+", help="its predict directories")
    parser.add_argument("--checkpoint", default="last.ckpt")
    parser.add_argument("--weights", type=float, nargs="*", default=[0.25, 0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--judge", default="runs/shapes_judge/checkpoints/last.ckpt")
    args = parser.parse_args()
    torch.set_num_threads(2)
    evaluation = GenerationEvaluation(ShapesJudge.from_checkpoint(args.judge), None)
    task, data = build(args.run, args.checkpoint)
    score = least_likely_mention(task, data.collator)
    for directory in args.directories:
        report_reranking(directory, evaluation, score, "min", args.weights)


if __name__ == "__main__":
    main()
