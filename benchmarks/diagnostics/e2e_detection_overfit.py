"""How fast does the E2E-VLP shapes detection recipe fit ONE fixed batch? (issue 5 diagnosis)

Builds the task and data of ``configs/e2e_vlp/shapes_detection.yaml`` (with any CLI overrides, from
random weights: ``init_from`` is dropped), takes the first training batch (32 shapes images with their
paired captions) and trains on it alone in fp32 with AdamW (lr 1e-3, the object queries and their
reference boxes at ``--query-lr-mult`` times that) and gradient clipping at 0.1, printing the last
decoder layer's class cross-entropy, matched class accuracy, 1 - GIoU and cardinality error every 10
steps (over every query group of the recipe). A model that cannot fit one batch in a few dozen steps
will not generalise in a few hundred; the levers in the recipe were chosen with it. The figures in
benchmarks/RESULTS.md were taken with the recipe of commit 8320de9 (DETR queries, no groups); add
``-- --model.init_args.model.init_args.anchor_queries=false --model.init_args.model.init_args.query_groups=1``
for those.

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/e2e_detection_overfit.py --steps 80 --query-lr-mult 10
    OMP_NUM_THREADS=1 python benchmarks/diagnostics/e2e_detection_overfit.py --steps 80 -- \\
        --model.init_args.model.init_args.visual_embedder.init_args.norm_groups=0 \\
        --model.init_args.objectives.detection.init_args.ce_weight=1.0
"""

from __future__ import annotations

import argparse

import torch

from vlp.cli import VLPCLI
from vlp.datamodules import normalise_batch

RECIPE = "configs/e2e_vlp/shapes_detection.yaml"
SHOWN = ("det_ce", "det_class_acc", "det_giou", "det_cardinality_error")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--query-lr-mult", type=float, default=1.0)
    parser.add_argument("--clip", type=float, default=0.1, help="gradient norm clip (0: none)")
    parser.add_argument("overrides", nargs="*", help="LightningCLI overrides of the recipe (after --)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cli = VLPCLI(
        args=[
            "--config", RECIPE,
            "--model.init_args.init_from=null",
            "--data.init_args.num_workers=0",
            *args.overrides,
        ],
        run=False,
    )  # fmt: skip
    task, data = cli.model, cli.datamodule
    data.setup("fit")
    batch = normalise_batch(next(iter(data.train_dataloader())))
    fast = ("model.query_embed", "model.reference_boxes")  # the recipe's lr_multipliers
    queries = [p for n, p in task.named_parameters() if p.requires_grad and n.startswith(fast)]
    rest = [p for n, p in task.named_parameters() if p.requires_grad and not n.startswith(fast)]
    optimizer = torch.optim.AdamW(
        [{"params": rest}, {"params": queries, "lr": args.lr * args.query_lr_mult}], lr=args.lr
    )
    objective = task.objectives["detection"]
    for step in range(args.steps):
        result = objective(task.forward_model(batch), batch)
        result.loss.backward()
        if args.clip:
            torch.nn.utils.clip_grad_norm_(task.parameters(), args.clip)
        optimizer.step()
        optimizer.zero_grad()
        if step % 10 == 9:
            shown = {k: round(float(v), 3) for k, v in result.logs.items() if k in SHOWN}
            print(step + 1, shown, flush=True)


if __name__ == "__main__":
    main()
