"""``python -m vlp zoo convert-vilt --from {hf,official,vlp} --to {vlp,hf,official} SRC DST``.

- ``hf``: a local Hugging Face model folder (``config.json`` + weights; written as ``model.safetensors``).
- ``official``: official ViLT's Lightning ``.ckpt`` (or any file holding that state dict); written as
  ``{"state_dict": ...}`` with ``torch.save``, or as a plain state dict for ``.safetensors``.
- ``vlp``: a vlp task's state dict (``model.*``, ``objectives.<head>.head.*``): a run's ``.ckpt``, a
  consolidated file; written as ``.safetensors`` or with ``torch.save``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from vlp.checkpoints import read_state_dict
from vlp.zoo.files import read_hf_folder, write_hf_folder, write_state_dict
from vlp.zoo.vilt import ViLTWeights, hf_architecture, hf_to_vlp, official_to_vlp, vlp_to_hf, vlp_to_official

if TYPE_CHECKING:
    from transformers import ViltConfig

LAYOUTS = ("hf", "official", "vlp")


def _read(layout: str, src: Path) -> tuple[ViLTWeights, ViltConfig | None]:
    """The weights in vlp's layout and the source's ``ViltConfig`` (HF folders only)."""
    if layout == "hf":
        state, config = read_hf_folder(src) if src.is_dir() else (read_state_dict(src), None)
        return hf_to_vlp(state, source=str(src)), config
    if layout == "official":
        return official_to_vlp(read_state_dict(src), source=str(src)), None
    return ViLTWeights.from_task_state_dict(read_state_dict(src), source=str(src)), None


def convert_vilt(args: Sequence[str]) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m vlp zoo convert-vilt",
        description="Convert ViLT weights between the official, Hugging Face and vlp layouts.",
        allow_abbrev=False,
    )
    parser.add_argument("--from", dest="source", choices=LAYOUTS, required=True)
    parser.add_argument("--to", dest="target", choices=LAYOUTS, required=True)
    parser.add_argument("src", type=Path, help="source file (hf: a model folder or its weights file)")
    parser.add_argument("dst", type=Path, help="destination file (hf: a folder)")
    parser.add_argument("--heads", default=None, help="keep only these heads, comma-separated (e.g. mlm)")
    parser.add_argument(
        "--num-heads", type=int, default=12, help="attention heads, for --to hf without an HF source config"
    )
    parser.add_argument("--layer-norm-eps", type=float, default=1e-12, help="for --to hf, as above")
    parser.add_argument("--max-image-length", type=int, default=-1, help="for --to hf, as above")
    cfg = parser.parse_args(list(args))
    weights, config = _read(cfg.source, cfg.src)
    if cfg.heads is not None:
        weights = weights.only(*[name for name in cfg.heads.split(",") if name])
    if cfg.target == "hf":
        from vlp.zoo.vilt_build import config_from_weights

        state = vlp_to_hf(weights, target=str(cfg.dst))
        if config is None:
            config = config_from_weights(weights, cfg.num_heads, cfg.layer_norm_eps, cfg.max_image_length)
        config.architectures = [hf_architecture(weights)]
        out = write_hf_folder(state, config, cfg.dst)
    elif cfg.target == "official":
        out = write_state_dict(vlp_to_official(weights, target=str(cfg.dst)), cfg.dst, lightning=True)
    else:
        out = write_state_dict(weights.task_state_dict(), cfg.dst)
    heads = ", ".join(sorted(weights.heads)) or "none"
    print(
        f"{cfg.src} ({cfg.source}) -> {out} ({cfg.target}): {len(weights.model)} model tensors, heads: {heads}"
    )
    return out


COMMANDS = {"convert-vilt": convert_vilt}
SUMMARIES = {"convert-vilt": "ViLT weights between the official, Hugging Face and vlp layouts"}


def main(args: Sequence[str]) -> None:
    """Run the zoo command named by ``args[0]`` with the remaining arguments; help for none or ``--help``."""
    from vlp.cli import run_tool, tool_help

    help_text = tool_help(
        "python -m vlp zoo <command> [options]",
        "Published weights into vlp and back.",
        "commands",
        SUMMARIES,
        "`python -m vlp zoo <command> --help` lists a command's options.",
    )
    run_tool(args, help_text, "zoo command", COMMANDS)
