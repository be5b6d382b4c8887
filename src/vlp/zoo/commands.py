"""``python -m vlp zoo <command>``: the registry commands (:mod:`vlp.zoo.entry_commands`) and
``convert-vilt --from {hf,official,vlp} --to {vlp,hf,official} SRC DST``, ViLT between layouts:

- ``hf``: a local Hugging Face model folder (``config.json`` + weights; written as ``model.safetensors``).
- ``official``: official ViLT's Lightning ``.ckpt`` (or any file holding that state dict); written as
  ``{"state_dict": ...}`` with ``torch.save``, or as a plain state dict for ``.safetensors``.
- ``vlp``: a vlp task's weights (``model.*``, ``objectives.<head>.head.*``): a run folder (its
  ``checkpoints/last.ckpt``), one of a run's checkpoints, a folder ``vlp.zoo.save_pretrained`` wrote, a
  consolidated file; written as ``.safetensors`` or with ``torch.save``.

Every size of a Hugging Face ``config.json`` is read from the weights' shapes, and the attention head count
from the source: an HF folder's ``config.json``, a vlp run's or pretrained folder's ``config.yaml``
(``encoder.init_args.num_heads``), an official checkpoint's ``hyper_parameters.config.num_heads``.
``--num-heads`` gives it where the source does not (a lone state-dict file) and must agree where it does;
with neither, ``--to hf`` stops before writing anything. A model the target layout cannot represent (a
``pre_norm`` patch embedder, another visual embedder, an MLM decoder not tied to the word embeddings for
Hugging Face, a width the heads do not divide) is refused before anything is written, naming the part
(:func:`vlp.zoo.vilt_convert.export_problems`). ``DST`` must not exist: nothing is overwritten.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlp.checkpoints import read_state_dict, torch_load
from vlp.errors import UserError
from vlp.zoo import entry_commands
from vlp.zoo.files import read_hf_folder, write_hf_folder, write_state_dict
from vlp.zoo.keys import KeyMappingError
from vlp.zoo.vilt import ViLTWeights, hf_architecture, hf_to_vlp, official_to_vlp, vlp_to_hf, vlp_to_official

if TYPE_CHECKING:
    from transformers import ViltConfig

LAYOUTS = ("hf", "official", "vlp")
HF_EPS = 1e-12  # HF's single LayerNorm eps where a source has several (its own conversion of official ViLT)


@dataclass
class Source:
    """What ``SRC`` holds: the weights, the configs it comes with, and its attention head count."""

    weights: ViLTWeights
    hf_config: ViltConfig | None = None
    model_config: dict[str, Any] | None = None
    head_configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    num_heads: int | None = None
    heads_from: str = ""


def _official_num_heads(path: Path) -> tuple[int | None, str]:
    """``hyper_parameters.config.num_heads`` of an official ViLT ``.ckpt`` (its training config)."""
    if path.suffix == ".safetensors":
        return None, ""
    loaded = torch_load(path)
    hparams = loaded.get("hyper_parameters") if isinstance(loaded, Mapping) else None
    config = hparams.get("config") if isinstance(hparams, Mapping) else None
    value = config.get("num_heads") if isinstance(config, Mapping) else None
    return (value, f"{path}: hyper_parameters.config.num_heads") if isinstance(value, int) else (None, "")


def _read(layout: str, src: Path, need_heads: bool) -> Source:
    """The weights in vlp's layout, with the source's configs and head count (``need_heads``: look into
    an official checkpoint's hyper-parameters, a second read of the file)."""
    if layout == "hf":
        if not src.is_dir():
            return Source(hf_to_vlp(read_state_dict(src), source=str(src)))
        state, config = read_hf_folder(src)
        weights = hf_to_vlp(state, source=str(src))
        return Source(weights, config, num_heads=config.num_attention_heads, heads_from=f"{src}/config.json")
    if layout == "official":
        weights = official_to_vlp(read_state_dict(src), source=str(src))
        return Source(weights, None, None, {}, *(_official_num_heads(src) if need_heads else (None, "")))
    from vlp.zoo.task_weights import read_task_weights

    task = read_task_weights(src)
    weights = ViLTWeights.from_task_state_dict(task.state, source=str(src))
    encoder = (task.model_config or {}).get("init_args", {}).get("encoder") or {}
    num_heads = (encoder.get("init_args") or {}).get("num_heads")
    where = f"{task.run_dir or src}: model.init_args.encoder.init_args.num_heads" if num_heads else ""
    return Source(weights, None, task.model_config, task.head_configs, num_heads, where)


def _head_count(source: Source, given: int | None, src: Path) -> int:
    """The attention head count for ``config.json``: the source's, ``--num-heads`` where it has none."""
    if given is not None and source.num_heads is not None and given != source.num_heads:
        raise UserError(f"--num-heads {given} disagrees with {source.heads_from} = {source.num_heads}")
    count = given if given is not None else source.num_heads
    if count is None:
        raise UserError(
            f"--to hf: {src} does not say how many attention heads the model has (no config.json, "
            "config.yaml or official hyper-parameters with it) and no tensor shape tells; give --num-heads N "
            "(ViLT-B/32: 12). Nothing was written."
        )
    return count


def _init(config: Mapping[str, Any] | None, part: str) -> dict[str, Any]:
    value = ((config or {}).get("init_args") or {}).get(part) or {}
    return dict(value.get("init_args") or {}) if isinstance(value, Mapping) else {}


def _hf_config(source: Source, num_heads: int, eps: float | None, max_image_length: int | None) -> ViltConfig:
    """``config.json`` for these weights: sizes from the shapes; head count, LayerNorm eps, dropout and
    patch sampling from the source's config where it has one, the options otherwise."""
    from vlp.zoo.vilt_build import config_from_weights

    if source.hf_config is not None:
        config = source.hf_config
        config.num_attention_heads = num_heads
        config.layer_norm_eps = eps if eps is not None else config.layer_norm_eps
        config.max_image_length = (
            max_image_length if max_image_length is not None else config.max_image_length
        )
        return config
    text, visual, encoder = (
        _init(source.model_config, p) for p in ("text_embedder", "visual_embedder", "encoder")
    )
    if eps is None:
        stated = {"text_embedder": text.get("norm_eps"), "encoder": encoder.get("norm_eps")}
        if "mlm" in source.weights.heads:
            stated["mlm head"] = (source.head_configs.get("mlm", {}).get("init_args") or {}).get("norm_eps")
        values = sorted({value for value in stated.values() if value is not None})
        eps = values[0] if len(values) == 1 else HF_EPS
        if len(values) > 1:
            print(f"note: the model's LayerNorm eps differ ({stated}); Hugging Face has one, writing {eps:g}")
    if max_image_length is None:  # HF samples patches in eval mode too whenever max_image_length > 0
        max_image_length = visual.get("max_image_len", -1) if visual.get("sample_at_eval") else -1
    config = config_from_weights(source.weights, num_heads, eps, max_image_length)
    config.hidden_dropout_prob = encoder.get("drop", config.hidden_dropout_prob)
    config.attention_probs_dropout_prob = encoder.get("attn_drop", config.attention_probs_dropout_prob)
    return config


def _refuse_existing(dst: Path) -> None:
    if dst.exists():
        raise FileExistsError(f"{dst} already exists; give a new path (nothing is overwritten)")


def convert_vilt(args: Sequence[str]) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m vlp zoo convert-vilt",
        description="Convert ViLT weights between the official, Hugging Face and vlp layouts.",
        allow_abbrev=False,
    )
    parser.add_argument("--from", dest="source", choices=LAYOUTS, required=True)
    parser.add_argument("--to", dest="target", choices=LAYOUTS, required=True)
    parser.add_argument(
        "src", type=Path, help="source (hf: a model folder or its weights file; vlp: also a run folder)"
    )
    parser.add_argument("dst", type=Path, help="destination file (hf: a folder); must not exist")
    parser.add_argument("--heads", default=None, help="keep only these heads, comma-separated (e.g. mlm)")
    parser.add_argument(
        "--num-heads", type=int, default=None, help="attention heads, for --to hf when SRC does not say"
    )
    parser.add_argument(
        "--layer-norm-eps",
        type=float,
        default=None,
        help=f"for --to hf (default: the source's, else {HF_EPS:g})",
    )
    parser.add_argument(
        "--max-image-length",
        type=int,
        default=None,
        help="for --to hf (default: the source's sampling, else -1)",
    )
    cfg = parser.parse_args(list(args))
    _refuse_existing(cfg.dst)
    source = _read(cfg.source, cfg.src, need_heads=cfg.target == "hf" and cfg.num_heads is None)
    weights = source.weights
    if cfg.heads is not None:
        weights = source.weights = weights.only(*[name for name in cfg.heads.split(",") if name])
    if cfg.target == "hf":
        try:
            hf_architecture(weights)
        except KeyMappingError as error:
            raise UserError(
                f"--to hf: Hugging Face's ViLT classes carry one head each and none for ITM; {cfg.src} has "
                f"heads {sorted(weights.heads)}: keep one with --heads NAME, or none with --heads ''"
            ) from error
        num_heads = _head_count(source, cfg.num_heads, cfg.src)
    else:
        num_heads = cfg.num_heads if cfg.num_heads is not None else source.num_heads
    if cfg.target != "vlp":
        from vlp.zoo.vilt_convert import check_exportable

        check_exportable(weights, cfg.target, str(cfg.src), source.model_config, num_heads)
    if cfg.target == "hf":
        state = vlp_to_hf(weights, target=str(cfg.dst))
        config = _hf_config(source, num_heads, cfg.layer_norm_eps, cfg.max_image_length)
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


COMMANDS = {
    "list": entry_commands.list_entries,
    "info": entry_commands.info,
    "fetch": entry_commands.fetch_entry,
    "verify": entry_commands.verify_entry,
    "inspect": entry_commands.inspect_file,
    "convert": entry_commands.convert_entry_command,
    "export": entry_commands.export_run,
    "convert-vilt": convert_vilt,
}
SUMMARIES = {
    "list": "the published checkpoints vlp loads by name (--family vilt|vqgan|detr|timm)",
    "info": "one entry: sources, sha256, converter, preprocessing, licence, figure, local copy",
    "fetch": "download (or find locally) an entry's file, verified against its sha256",
    "verify": "check a local file against an entry's sha256",
    "inspect": "a checkpoint's structure and keys, read safely",
    "convert": "an entry's weights in vlp's keys, as a .safetensors file for init_from",
    "export": "a run as a folder vlp.zoo.load rebuilds without the recipe (safetensors + config + card)",
    "convert-vilt": "ViLT weights between the official, Hugging Face and vlp layouts",
}


def main(args: Sequence[str]) -> None:
    """Run the zoo command named by ``args[0]`` with the remaining arguments; help for none or ``--help``."""
    from vlp.tool_commands import run_tool, tool_help

    help_text = tool_help(
        "python -m vlp zoo <command> [options]",
        "Published weights into vlp and back.",
        "commands",
        SUMMARIES,
        "`python -m vlp zoo <command> --help` lists a command's options.",
    )
    run_tool(args, help_text, "zoo command", COMMANDS)
