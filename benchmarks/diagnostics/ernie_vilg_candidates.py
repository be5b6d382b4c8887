"""How often the generator draws what a prompt names, and how often the reranker picks such a draw.

    python benchmarks/diagnostics/ernie_vilg_candidates.py PREDICT_DIR [PREDICT_DIR ...] [--judge JUDGE_CKPT]

Reads every candidate of every row of predict's PNG grids (8-bit; a row holds the prompt's candidates,
reranked, best first) and judges each with the shapes judge. Per kind of prompt, by what it names as
:func:`vlp.metrics.semantic.parse_prompt` reads it (each mention a colour, a shape, or a colour-shape pair):

- ``chosen``: the share of prompts whose first (chosen) candidate passes: the semantic score, up to 8-bit
  rounding of the PNGs;
- ``any``: the share with at least one passing candidate: what a perfect reranker would score;
- ``per draw``: the share of all candidates that pass: what one unranked sample scores.

Then, over every colour-shape pair a prompt names and every candidate: how often the named colour (on any
shape), the named shape (in any colour) and the pair itself are present. The pair's rate over the colour's
is how often a named colour, when drawn at all, sits on the named shape.

When predict reranked contrastively (``--model.init_args.contrast_weight``), each record holds both terms
of every candidate's score; ``--contrast-weights`` then judges the choice every other weight ``w`` would
make among the same candidates (``log p(prompt | image) - w * contrast``; ``w = 0`` is plain likelihood
reranking), which tunes ``w`` from one predict.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import torch

from vlp.metrics.generation import GenerationEvaluation
from vlp.metrics.semantic import PromptObjects, parse_prompt, prompt_satisfied
from vlp.metrics.shapes_judge import ShapesJudge
from vlp.tasks.predict_files import read_png_row

TILE = (64, 64)  # the shapes images predict draws
KINDS = (
    "one object by colour or by shape",
    "one object by colour and shape",
    "two objects, at least one by colour or shape alone",
    "two objects, each by colour and shape",
    "three or four objects, each by colour and shape",
)


def prompt_kind(parsed: PromptObjects) -> str:
    pairs = sum(colour is not None and shape is not None for colour, shape in parsed.mentions)
    mentions = len(parsed.mentions)
    if mentions == 1:
        return KINDS[1] if pairs else KINDS[0]
    if mentions == 2:
        return KINDS[3] if pairs == 2 else KINDS[2]
    return KINDS[4] if pairs == mentions else "three or more objects, some by colour or shape alone"


def reranked_choice(record: dict, weight: float) -> int:
    """The candidate contrastive reranking with ``weight`` keeps (ties: the earlier, as ``argmax``)."""
    scores = [
        own - weight * contrast
        for own, contrast in zip(record["candidate_log_likelihood"], record["candidate_contrast"])
    ]
    return max(range(len(scores)), key=lambda index: (scores[index], -index))


class JudgedRow(NamedTuple):
    record: dict  # the row's line of captions_rank0.jsonl
    parsed: PromptObjects  # what its prompt names
    tiles: torch.Tensor  # its candidates [N, 3, H, W] in [0, 1], best first, as the PNG holds them
    present: torch.Tensor  # the judge's presence grids of the candidates
    passed: list[bool]  # which candidates draw every object the prompt names


def judged_rows(directory: Path, evaluation: GenerationEvaluation) -> Iterator[JudgedRow]:
    """Every row of a predict directory whose prompt names something, its candidates judged."""
    metric = evaluation.semantic["generated"]
    colours, shapes = metric.colours, metric.shapes
    for line in (directory / "captions_rank0.jsonl").open():
        record = json.loads(line)
        parsed = parse_prompt(record["prompt"], colours, shapes)
        if not parsed.mentions:
            continue
        tiles = read_png_row(directory / record["grid"], record["row"], len(record["candidate_scores"]), TILE)
        present, _ = evaluation.judge_images(tiles)
        passed = [prompt_satisfied(grid, parsed, colours, shapes) for grid in present]
        yield JudgedRow(record, parsed, tiles, present, passed)


RowScore = Callable[[JudgedRow], torch.Tensor]
"""``score(row) -> [N]``: another reranker's score of each of a judged row's candidates (higher is better)."""


def report_reranking(
    directory: Path, evaluation: GenerationEvaluation, score: RowScore, name: str, weights: list[float]
) -> None:
    """Print the share of prompts whose chosen candidate passes the judge: ``own`` (the grid's first, the
    task's reranking), ``name`` (the highest ``score``), ``own + w name`` (the highest
    ``candidate_scores + w * score`` for each weight) and ``any`` (a perfect reranker)."""
    prompts = own = alone = anywhere = 0
    combined = dict.fromkeys(weights, 0)
    with torch.no_grad():
        for row in judged_rows(directory, evaluation):
            passed = row.passed
            scores = score(row)
            own_scores = torch.tensor(row.record["candidate_scores"])
            prompts += 1
            own += passed[0]
            anywhere += any(passed)
            alone += passed[int(scores.argmax())]
            for weight in weights:
                combined[weight] += passed[int((own_scores + weight * scores).argmax())]
    line = f"{directory}: {prompts} prompts; own {own / prompts:.3f}, {name} {alone / prompts:.3f}, "
    line += ", ".join(f"own + {w:g} {name} {c / prompts:.3f}" for w, c in combined.items())
    print(line + f"; any {anywhere / prompts:.3f}", flush=True)


def report(directory: Path, evaluation: GenerationEvaluation, weights: list[float]) -> None:
    metric = evaluation.semantic["generated"]
    colours, shapes = metric.colours, metric.shapes
    prompts: Counter[str] = Counter()
    chosen: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    per_draw: Counter[str] = Counter()
    colour_hits = shape_hits = pair_hits = pair_draws = 0
    by_weight: Counter[float] = Counter()
    weighed = 0
    with torch.no_grad():
        for row in judged_rows(directory, evaluation):
            record, parsed, present, passed = row.record, row.parsed, row.present, row.passed
            kind = prompt_kind(parsed)
            prompts[kind] += 1
            chosen[kind] += passed[0]
            anywhere[kind] += any(passed)
            per_draw[kind] += sum(passed) / len(passed)
            if weights and "candidate_contrast" in record:
                weighed += 1
                for weight in weights:
                    by_weight[weight] += passed[reranked_choice(record, weight)]
            for colour, shape in parsed.mentions:
                if colour is None or shape is None:
                    continue
                row, column = colours.index(colour), shapes.index(shape)
                colour_hits += int(present[:, row, :].any(dim=1).sum())
                shape_hits += int(present[:, :, column].any(dim=1).sum())
                pair_hits += int(present[:, row, column].sum())
                pair_draws += len(passed)
    print(f"{directory}")
    print("| the prompt names | prompts | chosen | any candidate | per draw |")
    print("|---|---|---|---|---|")
    ordered = [kind for kind in KINDS if kind in prompts] + [kind for kind in prompts if kind not in KINDS]
    for kind in [*ordered, "all"]:
        if kind == "all":
            n, c, a, d = (sum(counter.values()) for counter in (prompts, chosen, anywhere, per_draw))
        else:
            n, c, a, d = prompts[kind], chosen[kind], anywhere[kind], per_draw[kind]
        print(f"| {kind} | {n} | {c / n:.3f} ({c}) | {a / n:.3f} | {d / n:.3f} |")
    if pair_draws:
        c, s, p = colour_hits / pair_draws, shape_hits / pair_draws, pair_hits / pair_draws
        print(
            f"named colour-shape pairs x candidates ({pair_draws}): colour present {c:.3f}, shape present {s:.3f}, "
            f"the pair {p:.3f} (a drawn named colour on its named shape: {p / c:.3f})"
        )

    if weights and not weighed:
        print("no candidate_contrast in the records: predict with --model.init_args.contrast_weight > 0")
    elif weights:
        print(f"chosen by log p(prompt | image) - w * contrast, over the same {weighed} prompts:")
        print(", ".join(f"w={w:g}: {by_weight[w] / weighed:.3f} ({by_weight[w]})" for w in weights))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "directories", type=Path, nargs="+", help="predict directories (captions_rank0.jsonl + PNG grids)"
    )
    parser.add_argument("--judge", default="runs/shapes_judge/checkpoints/last.ckpt")
    parser.add_argument(
        "--contrast-weights", type=float, nargs="*", default=[], metavar="W",
        help="judge contrastive reranking at these weights (needs a contrastive predict's records)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)
    evaluation = GenerationEvaluation(ShapesJudge.from_checkpoint(args.judge), None)
    for directory in args.directories:
        report(directory, evaluation, args.contrast_weights)


if __name__ == "__main__":
    main()
