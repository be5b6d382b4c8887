"""Composed classifier-free guidance for ERNIE-ViLG: guide each code by the prompt and by every object it
names, then rerank and judge.

    python benchmarks/diagnostics/ernie_vilg_composed_guidance.py RUN_DIR PROMPTS_JSONL \
        [--guidance 5] [--object-guidance 0 1 2] [--candidates 16] [--limit 256] [--seed 0]

Plain guidance draws each code from ``u + s (c - u)``, ``c`` the logits given the prompt, ``u`` given
the null prompt. Three- and four-object prompts are rarely drawn in full: once a picture holds one or two
objects, the prompt's likelihood rises little for another. Composed guidance (Liu et al. 2022's
composable diffusion, as a product of experts over codes) adds ``s_o (c_i - u)`` for every object ``i``
the prompt names, ``c_i`` the logits given that object's single mention in the captions' own wording
("there is a red circle"). The idea: while an object is missing, its term pushes for it; once it is
drawn, the mention adds little over the unconditional logits. Measured in benchmarks/RESULTS.md ("Guidance
by each named object").

Every arm draws ``--candidates`` images per prompt from the same seeds, reranks them by the model's own
image→text likelihood of the prompt, as predict does, and reports the share of prompts whose chosen
candidate the shapes judge passes (the semantic score), the share with any passing candidate, and the
share of all draws that pass. ``PROMPTS_JSONL`` is a predict's ``captions_rank0.jsonl`` (its prompts).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from ernie_vilg_phrase_rerank import mention_captions
from ernie_vilg_text_use import build
from torch import Tensor

from vlp.metrics.generation import GenerationEvaluation
from vlp.metrics.semantic import parse_prompt, prompt_satisfied
from vlp.metrics.shapes_judge import ShapesJudge
from vlp.models.ernie_vilg.sampling import prompt_log_likelihood, sample_next
from vlp.tasks.text_to_image import ERNIEViLGTask


@torch.no_grad()
def composed_codes(
    task: ERNIEViLGTask,
    ids: Tensor,
    mask: Tensor,
    owner: Tensor,
    weight: Tensor,
    samples: int,
    generator: torch.Generator,
) -> Tensor:
    """Codes ``[samples, L]``; row ``r`` of ``ids`` feeds sample ``owner[r]`` with weight ``weight[r]``."""
    model = task.model
    length = model.grid[0] * model.grid[1]
    state, cache = model.prefill("text_to_image", text_ids=ids, text_mask=mask)

    def draw(states: Tensor) -> Tensor:
        logits = model.image_logits(states).float() * weight[:, None]
        combined = torch.zeros(samples, logits.shape[1]).index_add_(0, owner, logits)
        return sample_next(combined, task.temperature, task.top_k, task.top_p, generator)

    codes = [draw(state)]
    for _ in range(length - 1):
        state, cache = model.extend(codes[-1][owner], cache)
        codes.append(draw(state))
    return torch.stack(codes, dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path)
    parser.add_argument("prompts", type=Path)
    parser.add_argument("--checkpoint", default="last.ckpt")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--object-guidance", type=float, nargs="+", default=[0.0, 1.0, 2.0])
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--prompts-per-chunk", type=int, default=8)
    parser.add_argument("--limit", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--judge", default="runs/shapes_judge/checkpoints/last.ckpt")
    args = parser.parse_args()
    torch.set_num_threads(2)
    evaluation = GenerationEvaluation(ShapesJudge.from_checkpoint(args.judge), None)
    metric = evaluation.semantic["generated"]
    colours, shapes = metric.colours, metric.shapes
    task, data = build(args.run, args.checkpoint)
    collator = data.collator
    prompts = [json.loads(line)["prompt"] for line in args.prompts.open()][: args.limit]
    parsed = [parse_prompt(p, colours, shapes) for p in prompts]
    scored = [(p, q) for p, q in zip(prompts, parsed) if q.mentions]
    n = args.candidates
    for object_scale in args.object_guidance:
        start = time.time()
        chosen = anywhere = draws = 0
        for first in range(0, len(scored), args.prompts_per_chunk):
            chunk = scored[first : first + args.prompts_per_chunk]
            texts, owner, weight = [], [], []
            for index, (prompt, objects) in enumerate(chunk):
                mentions = mention_captions(objects) if object_scale else []
                rest = 1.0 - args.guidance - object_scale * len(mentions)  # the null prompt's weight
                rows = [(prompt, args.guidance), ("", rest), *((m, object_scale) for m in mentions)]
                for candidate in range(index * n, (index + 1) * n):
                    for text, w in rows:
                        texts.append(text)
                        owner.append(candidate)
                        weight.append(w)
            tokens = collator.tokenize(texts)
            generator = torch.Generator().manual_seed(args.seed + first)
            codes = composed_codes(
                task, tokens["input_ids"], tokens["attention_mask"].bool(),
                torch.tensor(owner), torch.tensor(weight), len(chunk) * n, generator,
            )  # fmt: skip
            own = collator.tokenize([p for p, _ in chunk for _ in range(n)])
            scores = prompt_log_likelihood(task.model, codes, own["input_ids"], own["attention_mask"].bool())
            pixels = task.vqgan.decode_ids(codes.view(codes.shape[0], *task.model.grid))
            present, _ = evaluation.judge_images((pixels.clamp(-1, 1) + 1) / 2)
            for index, (_, objects) in enumerate(chunk):
                rows = slice(index * n, (index + 1) * n)
                passed = [prompt_satisfied(grid, objects, colours, shapes) for grid in present[rows]]
                chosen += passed[int(scores[rows].argmax())]
                anywhere += any(passed)
                draws += sum(passed)
        total = len(scored)
        print(
            f"guidance {args.guidance:g}, object guidance {object_scale:g}: {total} prompts; "
            f"chosen {chosen / total:.3f}, any {anywhere / total:.3f}, per draw {draws / (total * n):.3f} "
            f"({time.time() - start:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
