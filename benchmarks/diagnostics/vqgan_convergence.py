"""How fast a shapes VQGAN's conv stack learns, with and without its quantizer (issue 6).

Trains a VQGAN encoder/decoder (default: the first shapes recipe's, ch 8, ch_mult 1-2-4-8, one block per
level, f = 8) on the first 896 training images of ``data/shapes64`` (sorted shards, no shuffle) and
reports PSNR on the next 128 every ``--eval-every`` steps: ``vq`` through the EMA quantizer (512 codes,
restarts at 0.1), ``ae`` as a plain autoencoder (quant_conv straight into post_quant_conv), to tell
whether the quantizer or the conv stack limits early progress. Batch 16, Adam(0.5, 0.9), L1 (+ 0.25
commitment). The architecture, pixel loss and bf16 autocast are options, so candidate recipes can be
compared at equal steps and CPU time before a long run:

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/vqgan_convergence.py {vq,ae} [--lr 1e-3] [--norm-groups 8]
    OMP_NUM_THREADS=1 python benchmarks/diagnostics/vqgan_convergence.py vq --ch 16 --ch-mult 1 2 4 \
        --attn 16 --loss l2 --bf16
"""

from __future__ import annotations

import argparse
import glob
import io
import time

import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image

from vlp.models.vqgan.model import VQGAN


def load_images(pattern: str, count: int) -> torch.Tensor:
    images = []
    for url in sorted(glob.glob(pattern)):
        for sample in wds.WebDataset(url, shardshuffle=False):
            array = np.asarray(Image.open(io.BytesIO(sample["png"])).convert("RGB"))
            images.append(torch.from_numpy(array.copy()).permute(2, 0, 1))
            if len(images) == count:
                return torch.stack(images).float() / 127.5 - 1
    raise ValueError(f"{pattern}: fewer than {count} images")


def pixel_loss(kind: str, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if kind == "l1":
        return F.l1_loss(reconstruction, target)
    if kind == "l2":
        return F.mse_loss(reconstruction, target)
    return F.l1_loss(reconstruction, target) + F.mse_loss(reconstruction, target)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["vq", "ae"])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--norm-groups", type=int, default=8)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--ch", type=int, default=8)
    parser.add_argument("--ch-mult", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--res-blocks", type=int, default=1)
    parser.add_argument("--attn", type=int, nargs="*", default=[8], help="attention resolutions")
    parser.add_argument("--z", type=int, default=64, help="z_channels")
    parser.add_argument("--codes", type=int, default=512)
    parser.add_argument("--code-dim", type=int, default=32)
    parser.add_argument("--loss", choices=["l1", "l2", "l1+l2"], default="l1")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for forward and loss")
    parser.add_argument("--data", default="data/shapes64/train/*.tar")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    images = load_images(args.data, 1024)
    train, val = images[:-128], images[-128:]
    model = VQGAN(
        resolution=64, ch=args.ch, ch_mult=tuple(args.ch_mult), num_res_blocks=args.res_blocks,
        attn_resolutions=tuple(args.attn), z_channels=args.z, num_codes=args.codes, code_dim=args.code_dim,
        norm_groups=args.norm_groups, ema=True, dead_code_threshold=0.1,
    )  # fmt: skip
    print(
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, grid {model.grid}", flush=True
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.5, 0.9))

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            if args.mode == "ae":
                return model.decode(model.quant_conv(model.encoder(x))), x.new_zeros(()), None
            out = model(x)
            return out.reconstruction, 0.25 * F.mse_loss(out.z_e, out.codes.detach()), out.ids

    start = time.process_time()
    for step in range(1, args.steps + 1):
        x = train[torch.randint(0, len(train), (args.batch,))]
        reconstruction, commitment, _ = forward(x)
        loss = pixel_loss(args.loss, reconstruction.float(), x) + commitment.float()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.eval_every == 0:
            model.eval()
            with torch.no_grad():
                reconstruction, _, ids = forward(val)
            model.train()
            mse = ((reconstruction.float().clamp(-1, 1) - val) / 2).pow(2).mean(dim=(1, 2, 3))
            psnr = (10 * torch.log10(1 / mse)).mean()
            used = "" if ids is None else f" codes used {ids.unique().numel()}"
            print(
                f"{args.mode} step {step} cpu {time.process_time() - start:.0f}s val psnr {psnr:.2f}{used}",
                flush=True,
            )


if __name__ == "__main__":
    main()
