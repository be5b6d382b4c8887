"""ITM accuracy of a shapes pre-training checkpoint per caption family and label, on the val split.

Negatives are checked against the scene (``ShapesCaptionCheck``), so every label is right; the families are
the shapes captions' (listing, count, single mention, relation). Shows which statements the model has
learnt to compare with the image.

    python benchmarks/diagnostics/itm_caption_families.py runs/vilt_shapes_pretrain/checkpoints/last.ckpt
    python benchmarks/diagnostics/itm_caption_families.py CKPT --config RECIPE [--batches 32] [-- overrides]

Overrides after ``--`` are the recipe's command-line overrides the checkpoint was trained with (a patch
size, or a layered ``--config``), so that the model built matches the checkpoint; the check is set after
them, so a layered recipe that turns it off does not:

    python benchmarks/diagnostics/itm_caption_families.py runs/vilt_shapes_pretrain_p16/checkpoints/last.ckpt \
      -- --config configs/vilt/shapes_pretrain_p16.yaml
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from vlp.cli import VLPCLI
from vlp.datamodules.synth.truth import caption_family
from vlp.objectives.itm import ITMObjective

CHECK = "vlp.datamodules.synth.truth.ShapesCaptionCheck"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--config", default="configs/vilt/shapes_pretrain.yaml")
    parser.add_argument("--batches", type=int, default=32)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    check = f"--data.init_args.collator.init_args.itm_negative_check={CHECK}"
    cli = VLPCLI(args=["--config", args.config, *args.overrides, check], run=False)
    task, data = cli.model, cli.datamodule
    task.configure_model()
    task.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True)["state_dict"])
    task.eval()
    itm = next(o for o in task.objectives.values() if isinstance(o, ITMObjective))
    data.setup("validate")
    right: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for index, batch in enumerate(data.val_dataloader()):
            if index == args.batches:
                break
            batch = data.on_after_batch_transfer(batch, 0)
            predicted = itm.head(task.forward_model(batch)["itm"].pooled).float().argmax(-1)
            for caption, label, guess in zip(batch.captions, batch.itm_labels.tolist(), predicted.tolist()):
                counts = right[(caption_family(caption), label)]
                counts[0] += int(guess == label)
                counts[1] += 1
    print("| family | label | accuracy | pairs |\n|---|---|---|---|")
    for (name, label), (correct, total) in sorted(right.items()):
        print(f"| {name} | {'match' if label else 'mismatch'} | {correct / total:.3f} | {total} |")
    correct = sum(c for c, _ in right.values())
    total = sum(t for _, t in right.values())
    print(f"| all | | **{correct / total:.3f}** | {total} |")


if __name__ == "__main__":
    main()
