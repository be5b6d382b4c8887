"""``python -m vlp bench zoo-load``: the time from a folder on disk to a model ready for inference.

A ViLT-B/32 with random weights (12 layers of width 768, 12 heads, 32-px patches of 384-px images, BERT's
vocabulary; the sizes are options) is written once into a temporary folder in two forms holding the same
tensors: a vlp pretrained folder (:func:`vlp.zoo.save_pretrained`: ``model.safetensors`` + ``config.yaml``)
and a Hugging Face folder (``config.json`` + ``model.safetensors``, transformers' ``ViltModel``). Each repeat
then times, in this process, one after the other with the order alternating:

- **vlp**: ``vlp.zoo.load(folder)``: the config built with jsonargparse on the meta device, the weights read
  with safetensors and taken as they are, eval mode;
- **transformers**: ``ViltModel.from_pretrained(folder)``, eval mode as it returns it.

The first ``warmup`` repeats are not timed (imports, first reads into the page cache: both sides then read
their files from memory). Before timing, both loaded models run the same batch and their pooled outputs must
agree (the same weights, the same computation), else the run stops. The table gives the median, the fastest
and every timed repeat; the last line printed is ``load time ratio vlp / transformers: R`` (below 1: vlp's
load is faster). ``--json`` also writes every figure as JSON.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlp.bench.command import command_line, cpu_name, parse_options, publish

SIDES = ("vlp", "transformers")
AGREEMENT = 1e-4  # fp32 pooled outputs of one forward: the two code paths sum in different orders


@dataclass
class ZooLoadConfig:
    """What to load. The defaults are ViLT-B/32's sizes.

    Args:
        hidden_size, num_layers, num_heads, intermediate_size: the encoder.
        vocab_size, max_text_len: the text embeddings.
        image_size, patch_size: the patch grid (``image_size // patch_size`` per side).
        repeats: timed loads per side; warmup: untimed loads per side before them.
        threads: torch threads (``None``: torch's default).
    """

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    vocab_size: int = 30522
    max_text_len: int = 40
    image_size: int = 384
    patch_size: int = 32
    repeats: int = 7
    warmup: int = 1
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {self.repeats}, {self.warmup}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} does not split into {self.num_heads} heads")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )


def vilt_config(config: ZooLoadConfig) -> Any:
    """transformers' ``ViltConfig`` of these sizes, all patches (no sampling), ``ViltModel``."""
    from transformers import ViltConfig

    return ViltConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_text_len,
        image_size=config.image_size,
        patch_size=config.patch_size,
        max_image_length=-1,
        architectures=["ViltModel"],
    )


def write_folders(config: ZooLoadConfig, work: Path) -> tuple[Path, Path]:
    """A random ViLT of these sizes written as a vlp pretrained folder and as a Hugging Face folder."""
    from vlp.zoo.files import write_hf_folder
    from vlp.zoo.pretrained import save_pretrained
    from vlp.zoo.vilt import ViLTWeights, vlp_to_hf
    from vlp.zoo.vilt_build import vilt_from_config
    from vlp.zoo.vilt_convert import vilt_model_config

    hf_config = vilt_config(config)
    torch.manual_seed(0)
    model = vilt_from_config(hf_config)
    vlp_dir = save_pretrained((model, vilt_model_config(hf_config)), work / "vlp")
    hf_dir = write_hf_folder(vlp_to_hf(ViLTWeights(model.state_dict())), hf_config, work / "hf")
    return vlp_dir, hf_dir


def loaders(vlp_dir: Path, hf_dir: Path) -> dict[str, Callable[[], nn.Module]]:
    from transformers import ViltModel
    from transformers.utils import logging as transformers_logging

    from vlp.zoo.pretrained import load

    transformers_logging.disable_progress_bar()  # its per-load bar of the weights, on stderr
    return {"vlp": lambda: load(vlp_dir), "transformers": lambda: ViltModel.from_pretrained(hf_dir).eval()}


@torch.no_grad()
def agreement(config: ZooLoadConfig, vlp_model: nn.Module, hf_model: nn.Module) -> float:
    """Max abs difference of the pooled outputs of one batch (2 captions of full length, 2 whole images)."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, config.vocab_size, (2, config.max_text_len), generator=generator)
    mask = torch.ones_like(ids)
    pixels = torch.randn(2, 3, config.image_size, config.image_size, generator=generator)
    pixel_mask = torch.ones(2, config.image_size, config.image_size, dtype=torch.long)
    ours = vlp_model(ids, mask.bool(), pixels, pixel_mask.bool()).pooled
    theirs = hf_model(input_ids=ids, attention_mask=mask, pixel_values=pixels, pixel_mask=pixel_mask)
    return (ours - theirs.pooler_output).abs().max().item()


def measure(config: ZooLoadConfig, vlp_dir: Path, hf_dir: Path) -> tuple[dict[str, list[float]], float]:
    """Seconds of each timed load per side (warm-up excluded, order alternating) and the check's difference."""
    load = loaders(vlp_dir, hf_dir)
    models = {side: load[side]() for side in SIDES}
    difference = agreement(config, models["vlp"], models["transformers"])
    if not difference <= AGREEMENT:
        raise RuntimeError(
            f"bench zoo-load: the two loaded models differ by {difference:.2e} on the same batch "
            f"(> {AGREEMENT:g}): they do not hold the same weights"
        )
    del models
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    for repeat in range(config.warmup + config.repeats):
        order = SIDES if repeat % 2 == 0 else SIDES[::-1]
        for side in order:
            start = time.perf_counter()
            model = load[side]()
            elapsed = time.perf_counter() - start
            del model
            if repeat >= config.warmup:
                times[side].append(elapsed)
    return times, difference


def record(
    config: ZooLoadConfig,
    times: dict[str, list[float]],
    difference: float,
    files: dict[str, int],
    command: str,
) -> dict[str, Any]:
    """Every figure of the run, as written by ``--json``."""
    import transformers

    medians = {side: statistics.median(values) for side, values in times.items()}
    return {
        "command": command,
        "config": asdict(config),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "file_bytes": files,
        "seconds": times,
        "median_seconds": medians,
        "ratio_vlp_over_transformers": medians["vlp"] / medians["transformers"],
        "max_abs_difference": difference,
    }


def markdown(config: ZooLoadConfig, result: dict[str, Any]) -> str:
    """A section for benchmarks/RESULTS.md; its last line is the ratio of the medians."""
    lines = [
        f"`{result['command']}`",
        "",
        f"ViLT of width {config.hidden_size}, {config.num_layers} layers, {config.num_heads} heads, MLP "
        f"{config.intermediate_size}, vocabulary {config.vocab_size}, {config.patch_size}-px patches of "
        f"{config.image_size}-px images; random weights written once as a vlp pretrained folder and a Hugging "
        f"Face folder ({result['file_bytes']['vlp'] / 1e6:.1f} MB / {result['file_bytes']['transformers'] / 1e6:.1f}"
        f" MB of safetensors); time to a model in eval mode, in one process, median of {config.repeats} repeats "
        f"after {config.warmup} warm-up, the order alternating; pooled outputs agree to "
        f"{result['max_abs_difference']:.1e}; torch {result['torch']}, transformers {result['transformers']}, "
        f"threads {result['threads']}, {result['cpu']}.",
        "",
        "| loader | median s | fastest s | each repeat (s) |",
        "|---|---|---|---|",
    ]
    names = {"vlp": "`vlp.zoo.load(folder)`", "transformers": "`ViltModel.from_pretrained(folder)`"}
    for side in SIDES:
        values = result["seconds"][side]
        each = ", ".join(f"{v:.3f}" for v in values)
        lines.append(f"| {names[side]} | {result['median_seconds'][side]:.3f} | {min(values):.3f} | {each} |")
    lines += ["", f"load time ratio vlp / transformers: {result['ratio_vlp_over_transformers']:.2f}"]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    """Write the folders, check both loads agree, time them, print the table (and write the JSON)."""
    extra = {"--json": {"type": str | None, "default": None, "help": "also write every figure here as JSON"}}
    config, args = parse_options("zoo-load", ZooLoadConfig, __doc__, argv, extra=extra, set_threads=True)
    work = Path(tempfile.mkdtemp(prefix="vlp-zoo-load-"))
    try:
        vlp_dir, hf_dir = write_folders(config, work)
        files = {
            "vlp": (vlp_dir / "model.safetensors").stat().st_size,
            "transformers": (hf_dir / "model.safetensors").stat().st_size,
        }
        times, difference = measure(config, vlp_dir, hf_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = record(config, times, difference, files, command_line("zoo-load", list(argv)))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    publish(markdown(config, result), args.out)
