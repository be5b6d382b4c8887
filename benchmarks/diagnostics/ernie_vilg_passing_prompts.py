"""Which prompts' best images the shapes judge passes, read back from predict's PNG grids (8-bit).

    python benchmarks/diagnostics/ernie_vilg_passing_prompts.py PREDICT_DIR [--judge runs/shapes_judge/checkpoints/last.ckpt]

Prints each passing prompt with the (colour, shape) mentions the judge had to find, then passed/scored.
The PNGs hold 8-bit pixels, so a borderline image may be judged differently from predict's in-memory ones.
"""

import argparse
import json
from pathlib import Path

import torch

from vlp.metrics.generation import GenerationEvaluation
from vlp.metrics.semantic import parse_prompt, prompt_satisfied
from vlp.metrics.shapes_judge import ShapesJudge
from vlp.tasks.predict_files import read_png_row

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("directory", type=Path)
parser.add_argument("--judge", default="runs/shapes_judge/checkpoints/last.ckpt")
args = parser.parse_args()
directory = args.directory
torch.set_num_threads(1)
judge = ShapesJudge.from_checkpoint(args.judge)
evaluation = GenerationEvaluation(judge, None)
metric = evaluation.semantic["generated"]
colours, shapes = metric.colours, metric.shapes
records = [json.loads(line) for line in (directory / "captions_rank0.jsonl").open()]
passed = scored = 0
with torch.no_grad():
    for record in records:
        image = read_png_row(directory / record["grid"], record["row"], 1, (64, 64))  # the chosen candidate
        present, _ = evaluation.judge_images(image)
        parsed = parse_prompt(record["prompt"], colours, shapes)
        if not parsed.mentions:
            continue
        scored += 1
        if prompt_satisfied(present[0], parsed, colours, shapes):
            passed += 1
            print("PASS", record["prompt"], parsed.mentions)
print(f"{passed}/{scored}")
