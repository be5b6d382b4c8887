"""Text-blind baselines for ERNIE-ViLG's text→image NLL: what predicting codes without the caption gives.

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/ernie_vilg_code_baseline.py VQGAN_CKPT [--root data/shapes64 --batches 4]

Encodes ``batches`` x 32 validation images of the shapes data with the VQGAN checkpoint and prints, in nats
per code (the unit of ``val/t2i_nll``): the entropy of the codes' overall frequencies and of their
frequencies at each grid cell, both measured on these same images (so optimistic for a model that never
saw them). A ``val/t2i_nll`` below them is information the model takes from the caption or from the
codes already drawn.
"""

from __future__ import annotations

import argparse

import torch

from vlp.datamodules import normalise_batch
from vlp.datamodules.decode import SampleDecoder
from vlp.datamodules.e2e import E2ECollator
from vlp.datamodules.shards import ShardDataModule
from vlp.datamodules.transforms import ViltTransform
from vlp.models.vqgan.model import VQGAN


def entropy(counts: torch.Tensor) -> float:
    p = counts.float() / counts.sum()
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint")
    parser.add_argument("--root", default="data/shapes64")
    parser.add_argument("--batches", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    vqgan = VQGAN.from_checkpoint(args.checkpoint).eval()
    collator = E2ECollator(max_text_len=40, mlm_probability=0.0, itm=False, targets=False, captions=True)
    data = ShardDataModule(
        args.root, ViltTransform(64, 8), SampleDecoder(), collator, batch_size=32, num_workers=0
    )
    data.setup("validate")
    codes = []
    with torch.no_grad():
        for index, batch in enumerate(data.val_dataloader()):
            if index == args.batches:
                break
            codes.append(vqgan.encode(normalise_batch(batch).pixels)[1].flatten(1))
    codes = torch.cat(codes)  # [N, h*w]
    num_codes = vqgan.num_codes
    overall = entropy(torch.bincount(codes.flatten(), minlength=num_codes))
    per_cell = sum(entropy(torch.bincount(codes[:, j], minlength=num_codes)) for j in range(codes.shape[1]))
    print(
        f"{codes.shape[0]} images, {codes.shape[1]} codes each, {int(codes.unique().numel())} distinct codes used"
    )
    print(
        f"code-frequency entropy          : {overall:.3f} nats/code (uniform over {num_codes}: {torch.log(torch.tensor(float(num_codes))):.3f})"
    )
    print(f"per-cell code-frequency entropy : {per_cell / codes.shape[1]:.3f} nats/code")


if __name__ == "__main__":
    main()
