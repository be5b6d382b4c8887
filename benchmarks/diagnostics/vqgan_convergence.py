"""How fast the shapes VQGAN's conv stack learns, with and without its quantizer (issue 6).

Trains the encoder/decoder of ``configs/vqgan/shapes_vqgan.yaml`` (ch 8, ch_mult 1-2-4-8, one block per
level, f = 8) on the first 896 training images of ``data/shapes64`` (sorted shards, no shuffle) and
reports PSNR on the next 128 every 100 steps: ``vq`` through the EMA quantizer (512 codes, restarts at
0.1), ``ae`` as a plain autoencoder (quant_conv straight into post_quant_conv), to tell whether the
quantizer or the conv stack limits early progress. Batch 16, Adam(0.5, 0.9), L1 (+ 0.25 commitment).

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/vqgan_convergence.py {vq,ae} [--lr 1e-3] [--norm-groups 8]
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

from vlp.models.vqgan import VQGAN


def load_images(pattern: str, count: int) -> torch.Tensor:
    images = []
    for url in sorted(glob.glob(pattern)):
        for sample in wds.WebDataset(url, shardshuffle=False):
            array = np.asarray(Image.open(io.BytesIO(sample["png"])).convert("RGB"))
            images.append(torch.from_numpy(array.copy()).permute(2, 0, 1))
            if len(images) == count:
                return torch.stack(images).float() / 127.5 - 1
    raise ValueError(f"{pattern}: fewer than {count} images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["vq", "ae"])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--norm-groups", type=int, default=8)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--data", default="data/shapes64/train/*.tar")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    images = load_images(args.data, 1024)
    train, val = images[:-128], images[-128:]
    model = VQGAN(
        resolution=64, ch=8, ch_mult=(1, 2, 4, 8), num_res_blocks=1, attn_resolutions=(8,), z_channels=64,
        num_codes=512, code_dim=32, norm_groups=args.norm_groups, ema=True, dead_code_threshold=0.1,
    )  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.5, 0.9))

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if args.mode == "ae":
            return model.decode(model.quant_conv(model.encoder(x))), x.new_zeros(())
        out = model(x)
        return out.reconstruction, 0.25 * F.mse_loss(out.z_e, out.codes.detach())

    start = time.process_time()
    for step in range(1, args.steps + 1):
        x = train[torch.randint(0, len(train), (16,))]
        reconstruction, commitment = forward(x)
        loss = F.l1_loss(reconstruction, x) + commitment
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            model.eval()
            with torch.no_grad():
                reconstruction = forward(val)[0].clamp(-1, 1)
            model.train()
            mse = ((reconstruction - val) / 2).pow(2).mean(dim=(1, 2, 3))
            psnr = (10 * torch.log10(1 / mse)).mean()
            print(
                f"{args.mode} step {step} cpu {time.process_time() - start:.0f}s val psnr {psnr:.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
