"""A copy of an ERNIEViLGTask checkpoint with its VQGAN weights replaced by a VQGANTask checkpoint's
(e.g. an end-to-end run's generator with the original, untrained decoder), for ``python -m vlp predict --ckpt_path``.

    python benchmarks/diagnostics/ernie_vilg_swap_vqgan.py ERNIE_CKPT VQGAN_CKPT OUT
"""

import sys

import torch

if len(sys.argv) != 4:
    sys.exit(__doc__)
ernie_path, vqgan_path, out = sys.argv[1:4]
ernie = torch.load(ernie_path, map_location="cpu", weights_only=False)
vqgan = torch.load(vqgan_path, map_location="cpu", weights_only=False)["state_dict"]
keys = [k for k in ernie["state_dict"] if k.startswith("vqgan.")]
for k in keys:
    source = "model." + k[len("vqgan.") :]
    if source not in vqgan:
        raise KeyError(f"{vqgan_path}: no {source} for {ernie_path}'s {k}")
    ernie["state_dict"][k] = vqgan[source].clone()
torch.save(ernie, out)
print(f"{out}: {len(keys)} VQGAN tensors replaced from {vqgan_path}")
