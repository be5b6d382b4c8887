"""``init_from``: start a task from another run's weights (a pre-training checkpoint, typically).

Keys are matched by name: the task's state dict keys (``model.…``, ``objectives.<name>.…``) against the
checkpoint's. A key in both is loaded; a key only in the task is newly initialised (a fine-tuning
head); a key only in the checkpoint is dropped (e.g. the MLM head). The same key with another shape is
an error naming it, unless the task adapts the checkpoint explicitly first
(:meth:`~vlp.tasks.base.ObjectiveTask.adapt_init_state`: NLVR2 grows the modality-type table, retrieval
derives its rank head from the ITM head), which the report lists too. Loading is strict over the
complete state dict, so nothing is silently left out.

Readable: a Lightning ``.ckpt`` (its ``state_dict``), a ``torch.save``'d state dict (both through
``torch.load(..., weights_only=True)``), a ``.safetensors`` file, a sharded (FSDP2 / DCP) checkpoint
directory, or a model-zoo name ``zoo:<family>:<tag>`` (``python -m vlp zoo list``): fetched and verified
against its sha256, converted to vlp's keys, and the conversion's own report logged first. The path names one checkpoint exactly: a pattern (``runs/x/*/last.ckpt``) is refused, since
picking among its matches by recency silently starts from whichever run happened to write last.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn

from vlp.checkpoints import torch_load
from vlp.errors import UserError
from vlp.zoo.converted import loaded_and_adapted_lines

log = logging.getLogger(__name__)

REPO_CONFIGS = Path(__file__).resolve().parents[3] / "configs"


@dataclass
class InitReport:
    """What ``init_from`` did, key by key (task keys; ``dropped`` are checkpoint keys)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)  # task key -> how it was made from the checkpoint
    new: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One block for the log: counts per module for the loaded keys, every other key by name."""
        lines = loaded_and_adapted_lines(f"vlp: init_from {self.source}", self.loaded, self.adapted)
        lines.append(f"  new     {len(self.new):4d} (initialised by the task, not in the checkpoint)")
        lines += [f"    {key}" for key in self.new]
        lines.append(f"  dropped {len(self.dropped):4d} (in the checkpoint, not used by the task)")
        lines += [f"    {key}" for key in self.dropped]
        return "\n".join(lines)


def producing_recipes(
    path: Path, config_dirs: tuple[Path, ...] = (Path("configs"), REPO_CONFIGS)
) -> list[str]:
    """Recipes whose ``trainer.default_root_dir`` holds ``path``: the runs that would write it."""
    target = Path(path).resolve()
    found: list[str] = []
    seen: set[Path] = set()
    for directory in config_dirs:
        if not directory.is_dir() or directory.resolve() in seen:
            continue
        seen.add(directory.resolve())
        for recipe in sorted(directory.rglob("*.yaml")):
            try:
                config = yaml.safe_load(recipe.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):
                continue
            trainer = config.get("trainer") if isinstance(config, dict) else None
            root = trainer.get("default_root_dir") if isinstance(trainer, dict) else None
            if isinstance(root, str) and Path(root).resolve() in target.parents:
                found.append(str(recipe))
    return found


def resolve_checkpoint(path: str) -> Path:
    """``path`` itself; a clear error when it is a pattern or missing."""
    if glob.has_magic(path):
        raise UserError(
            f"init_from: {path} is a pattern; name one checkpoint exactly (e.g. runs/<name>/checkpoints/"
            "last.ckpt): vlp never picks a checkpoint by how recently it was written"
        )
    if Path(path).exists():
        return Path(path)
    recipes = producing_recipes(Path(path))
    hint = (
        "it is written by " + " or ".join(f"`python -m vlp fit --config {r}`" for r in recipes)
        if recipes
        else "point init_from at an existing checkpoint (a run's last.ckpt, a .safetensors state dict)"
    )
    raise FileNotFoundError(f"init_from: checkpoint {path} not found; {hint}")


def read_checkpoint(path: Path) -> dict[str, Tensor]:
    """The weights stored at ``path`` (see the module docstring for the formats)."""
    if path.is_dir():
        from vlp.zoo.consolidate import consolidate_checkpoint

        return consolidate_checkpoint(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    loaded = torch_load(path)
    state = loaded.get("state_dict", loaded) if isinstance(loaded, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(
            f"init_from: {path} holds neither a Lightning checkpoint nor a state dict of tensors"
        )
    return dict(state)


def read_init_source(init_from: str) -> tuple[dict[str, Tensor], str]:
    """The weights ``init_from`` names and how to name them in the report: a checkpoint path, or a
    zoo entry (fetched, verified and converted to a task's keys; its conversion report is logged)."""
    from vlp.zoo.pipeline import convert_entry, entry_of, is_zoo_name

    if is_zoo_name(init_from):
        converted = convert_entry(entry_of(init_from))
        if rank_zero_only.rank == 0:
            log.info(converted.report.summary())
        return converted.state, init_from
    path = resolve_checkpoint(init_from)
    return read_checkpoint(path), str(path)


def resample_positions(module: nn.Module, state: dict[str, Tensor]) -> dict[str, str]:
    """Resample, in place, every ViT position table (``*visual_embedder.pos_embed``) of ``state`` whose
    grid differs from ``module``'s (a recipe at another image size than the checkpoint's); return the
    report's ``adapted`` lines. Same width is required: a width mismatch stays an error."""
    from vlp.zoo.timm_weights import interpolate_positions, position_grid

    own = module.state_dict()
    adapted = {}
    for key, table in state.items():
        if not key.endswith("visual_embedder.pos_embed") or key not in own or own[key].shape == table.shape:
            continue
        if table.dim() != 3 or own[key].dim() != 3 or table.shape[-1] != own[key].shape[-1]:
            continue
        old, new = position_grid(table, key), position_grid(own[key], key)
        state[key] = interpolate_positions(table, new)
        adapted[key] = f"positions resampled from a {old}x{old} to a {new}x{new} grid (bicubic, [CLS] kept)"
    return adapted


def load_matching(
    module: nn.Module, state: dict[str, Tensor], source: str, adapted: dict[str, str] | None = None
) -> InitReport:
    """Load every key of ``state`` that ``module`` has, strictly over ``module``'s complete state dict;
    a shape mismatch is an error naming the key. ``adapted`` notes keys the caller made for the task."""
    own = module.state_dict()
    mismatched = [
        f"{key}: checkpoint {tuple(state[key].shape)}, task {tuple(own[key].shape)}"
        for key in state
        if key in own and state[key].shape != own[key].shape
    ]
    if mismatched:
        raise ValueError(f"init_from {source}: shapes differ for " + "; ".join(mismatched))
    adapted = dict(adapted or {})
    shared = [key for key in own if key in state]
    module.load_state_dict({**own, **{key: state[key] for key in shared}})  # strict: every key given
    return InitReport(
        source=source,
        loaded=[key for key in shared if key not in adapted],
        adapted={key: how for key, how in adapted.items() if key in own},
        new=[key for key in own if key not in state],
        dropped=sorted(key for key in state if key not in own),
    )


def log_report(report: InitReport) -> None:
    """Log the report once (rank 0)."""
    if rank_zero_only.rank == 0:
        log.info(report.summary())
