"""Rerank ERNIE-ViLG's saved candidates with a ViLT image-text matching head on their pixels, and judge.

    python benchmarks/diagnostics/ernie_vilg_itm_rerank.py PREDICT_DIR [PREDICT_DIR ...] --itm CKPT \
        [--itm-config configs/vilt/shapes_pretrain.yaml] [--itm-override=--KEY=VALUE ...] [--weights W ...]

``CKPT`` is a :class:`~vlp.tasks.pretrain.PretrainTask` checkpoint of the ViLT shapes recipe (MLM + ITM on
pixels); ``--itm-override`` repeats the recipe overrides it was trained with (a patch size, say) so that
the model built matches it. Every candidate of every row of predict's PNG grids (8-bit, as the judge reads
them) is paired with its prompt, and the ITM head's logit margin ``m = logit(match) - logit(mismatch)`` is
its score. Per predict directory, the share of prompts whose chosen candidate passes the shapes judge:

- ``own``: the grid's first candidate, the generator's own reranking (the semantic score, up to 8-bit
  rounding);
- ``itm``: the candidate with the highest margin;
- ``own + w * itm``: the highest ``candidate_scores + w * m`` for each ``--weights`` value;
- ``any``: at least one candidate passes (a perfect reranker).

A diagnostic, not a reranker of the task: the ITM model is a separate training, and its choice is made
after predict, from the PNGs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from ernie_vilg_candidates import report_reranking  # the sibling script: same folder, on sys.path when run

from vlp.cli import VLPCLI
from vlp.datamodules.normalise import normalise_pixels
from vlp.metrics.generation import GenerationEvaluation
from vlp.metrics.shapes_judge import ShapesJudge
from vlp.objectives.itm import ITMObjective

Score = Callable[[torch.Tensor, str], torch.Tensor]
"""``score(tiles [N, 3, H, W] in [0, 1], prompt) -> [N]``: a candidate row's ITM logit margins."""


def itm_scorer(checkpoint: str, config: str, overrides: list[str]) -> Score:
    """The checkpoint's :data:`Score`, on its own model, ITM head and tokenization."""
    cli = VLPCLI(args=["--config", config, *overrides], run=False)
    task, data = cli.model, cli.datamodule
    task.configure_model()
    task.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"])
    task.eval()
    head = next(o for o in task.objectives.values() if isinstance(o, ITMObjective)).head
    collator = data.collator  # tokenizes as the ITM model's training did

    @torch.no_grad()
    def score(tiles: torch.Tensor, prompt: str) -> torch.Tensor:
        pixels = normalise_pixels((tiles * 255).round().to(torch.uint8))
        text = collator.tokenize([prompt] * len(tiles))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = head(task.model(text["input_ids"], text["attention_mask"].bool(), pixels).pooled)
        logits = logits.float()
        return logits[:, 1] - logits[:, 0]

    return score


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("directories", type=Path, nargs="+", help="predict directories")
    parser.add_argument("--itm", required=True, help="a PretrainTask checkpoint with an itm objective")
    parser.add_argument("--itm-config", default="configs/vilt/shapes_pretrain.yaml")
    parser.add_argument("--itm-override", action="append", default=[], metavar="--KEY=VALUE")
    parser.add_argument("--weights", type=float, nargs="*", default=[0.25, 0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--judge", default="runs/shapes_judge/checkpoints/last.ckpt")
    args = parser.parse_args()
    torch.set_num_threads(1)
    evaluation = GenerationEvaluation(ShapesJudge.from_checkpoint(args.judge), None)
    score = itm_scorer(args.itm, args.itm_config, args.itm_override)
    for directory in args.directories:
        report_reranking(
            directory, evaluation, lambda row: score(row.tiles, row.record["prompt"]), "itm", args.weights
        )


if __name__ == "__main__":
    main()
