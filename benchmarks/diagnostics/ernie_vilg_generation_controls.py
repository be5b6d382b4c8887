"""Ceilings and floors of the ERNIE-ViLG generation metrics on shapes (semantic score, shapes Fréchet distance).

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/ernie_vilg_generation_controls.py \
        --judge runs/shapes_judge/checkpoints/last.ckpt --vqgan VQGAN_CKPT [VQGAN_CKPT ...] [--batches 16]

Reads the test prompts exactly as ``python -m vlp predict`` with ``configs/ernie_vilg/shapes_pretrain.yaml``
does (its data section: split test, batches of 32, in order), the first ``batches`` batches, and scores with
:class:`vlp.metrics.generation.GenerationEvaluation` in place of generated images:

- ``real``: the test images themselves (the judge's ceiling on these prompts); their Fréchet distance is to
  as many val images (the distance between two real sets of this size: its floor);
- ``recon``: each VQGAN's reconstructions of the test images (the best a generator over its codes can do);
- ``random codes``: uniformly random code grids decoded by each VQGAN (a generator that learnt nothing);
- ``noise``: uniform noise images.

The Fréchet distances of the last three are to the test images, as ``predict`` measures generated images.
``semantic_score_shuffled`` is the same images judged against the next prompt of their batch.
"""

from __future__ import annotations

import argparse
import json
from itertools import islice
from pathlib import Path

import torch
import yaml
from jsonargparse import ArgumentParser
from lightning import LightningDataModule

from vlp.datamodules import normalise_batch
from vlp.datamodules.shards import ShardDataModule
from vlp.metrics.generation import GenerationEvaluation
from vlp.metrics.shapes_judge import ShapesJudge
from vlp.models.vqgan.model import VQGAN

RECIPE = Path(__file__).resolve().parents[2] / "configs/ernie_vilg/shapes_pretrain.yaml"


def recipe_data() -> ShardDataModule:
    """The recipe's data section as the CLI builds it, reading the folder as it is (``synth: null``)."""
    section = yaml.safe_load(RECIPE.read_text())["data"]
    section["init_args"]["synth"] = None
    parser = ArgumentParser()
    parser.add_subclass_arguments(LightningDataModule, "data")
    data = parser.instantiate(parser.parse_object({"data": section})).data
    data.setup("predict")
    return data


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--judge", required=True)
    parser.add_argument("--vqgan", nargs="*", default=[])
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--out", help="also write the figures to this json file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    judge = ShapesJudge.from_checkpoint(args.judge)
    vqgans = {path: VQGAN.from_checkpoint(path).eval() for path in args.vqgan}
    rows = {"real": GenerationEvaluation(judge), "noise": GenerationEvaluation(judge)}
    for path in vqgans:
        rows[f"recon {path}"] = GenerationEvaluation(judge)
        rows[f"random codes {path}"] = GenerationEvaluation(judge)
    data = recipe_data()
    tokenizer = data.collator.tokenizer
    test = map(normalise_batch, islice(data.predict_dataloader(), args.batches))
    val = map(normalise_batch, islice(data._loader(data.val_split, train=False), args.batches))
    images = 0
    with torch.no_grad():
        for batch, other in zip(test, val):
            prompts = tokenizer.batch_decode(batch.caption_ids, skip_special_tokens=True)
            real = (batch.pixels.clamp(-1, 1) + 1) / 2
            n = min(len(real), len(other))  # the real row's distance needs as many val images
            rows["real"].update(real[:n], prompts[:n], (other.pixels[:n].clamp(-1, 1) + 1) / 2)
            rows["noise"].update(torch.rand_like(real), prompts, real)
            for path, vqgan in vqgans.items():
                recon = vqgan.decode_ids(vqgan.encode(batch.pixels)[1])
                rows[f"recon {path}"].update((recon.clamp(-1, 1) + 1) / 2, prompts, real)
                ids = torch.randint(vqgan.num_codes, (len(real), *vqgan.grid))
                rows[f"random codes {path}"].update(
                    (vqgan.decode_ids(ids).clamp(-1, 1) + 1) / 2, prompts, real
                )
            images += len(real)
    results = {name: evaluation.compute() for name, evaluation in rows.items()}
    print(f"{images} test prompts ({args.batches} batches), judge {args.judge}")
    print(
        "| images | semantic score | shuffled prompts | count acc (prompts) | shapes FD |\n|---|---|---|---|---|"
    )
    for name, r in results.items():
        print(
            f"| {name} | {r['semantic_score']:.3f} | {r['semantic_score_shuffled']:.3f} | "
            f"{r.get('count_acc', float('nan')):.3f} ({r.get('counted', 0):.0f}) | {r['shapes_fd']:.3f} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"images": images, "rows": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
