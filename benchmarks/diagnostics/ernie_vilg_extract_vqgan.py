"""The VQGAN inside an ERNIEViLGTask checkpoint (decoder trained end to end) as a VQGANTask-style .ckpt
that VQGAN.from_checkpoint and ernie_vilg_generation_controls.py read.

    python benchmarks/diagnostics/ernie_vilg_extract_vqgan.py ERNIE_CKPT ORIGINAL_VQGAN_CKPT OUT

The architecture config comes from the original VQGANTask checkpoint, the weights from the ERNIE-ViLG one.
"""

import sys

import torch

from vlp.models.vqgan.model import CONFIG_KEY

if len(sys.argv) != 4:
    sys.exit(__doc__)
ernie, original, out = sys.argv[1:4]
state = torch.load(ernie, map_location="cpu", weights_only=False)["state_dict"]
config = torch.load(original, map_location="cpu", weights_only=True)[CONFIG_KEY]
vq = {"model." + k[len("vqgan.") :]: v for k, v in state.items() if k.startswith("vqgan.")}
torch.save({CONFIG_KEY: config, "state_dict": vq}, out)
print(f"{out}: {len(vq)} VQGAN tensors from {ernie}")
