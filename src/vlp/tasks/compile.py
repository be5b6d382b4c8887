"""``torch.compile`` per transformer block (regional compilation), the ``compile`` argument of every task.

Each block (:data:`COMPILE_UNITS`: the encoder's :class:`~vlp.models.layers.transformer.Block`, whatever
its attention, ERNIE-ViLG's sparse one included, and the decoder's
:class:`~vlp.models.layers.decoder.DecoderLayer`) is compiled in place, as ``nn.Module.compile`` does: the
module stays where it is, with its parameter names, hooks and state-dict keys, so FSDP2's
``fully_shard`` units (:mod:`vlp.tasks.sharding`: the same blocks) and activation checkpointing (the
encoder's ``checkpoint(block, ...)``, which then recomputes a compiled block) keep working. The blocks of a
task share their compiled code (:func:`compile_blocks`): a deep model compiles one graph per kind of block
and call (training, evaluation, MLM's last layer with selected rows, ...), not one per layer. Embedders,
heads and losses stay eager.

Why a task argument rather than a trainer callback: it composes as the task's other execution setting,
``activation_checkpointing``, does: a recipe overlay or ``--model.init_args.compile...`` merges into the
task's ``init_args``, where a callback would have to join ``trainer.callbacks``, a list the recipes set and
a later config file replaces whole; the run's config and hyper-parameters keep it with the model it
applies to; and the task's own ``configure_model`` places it: after the model is built, before FSDP2
shards the blocks and before the strategy wraps the task for DDP (a callback's ``setup`` runs earlier,
for any module, blocks or none).

A recipe turns it on with ``compile: true`` under the task's ``init_args`` (or a mapping of
:class:`CompileConfig` fields); ``--model.init_args.compile=true`` does the same on the command line.
The backend is checked when the task is built (its name) and again in ``configure_model``, before the
first step, by compiling a small function on the run's device, so a backend that cannot compile here
(inductor without a working C++ compiler, say) fails with the key and the reason instead of in the
middle of the first training step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from types import MethodType
from typing import Any

import torch
from torch import nn

from vlp.models.layers.decoder import DecoderLayer
from vlp.models.layers.transformer import Block
from vlp.tasks.sharding import outermost_submodules

COMPILE_UNITS: tuple[type[nn.Module], ...] = (Block, DecoderLayer)
RECOMPILE_LIMIT = 64
"""Graphs the blocks of one :func:`compile_blocks` call may compile (kinds of block x kinds of call)."""


@dataclass(frozen=True)
class CompileConfig:
    """How each block is compiled (``torch.compile``'s arguments of the same names).

    Args:
        backend: a ``torch.compile`` backend: ``inductor`` (generated kernels, the fast one), or
            ``aot_eager`` / ``eager`` (traced but run by PyTorch's own kernels: no C++ compiler needed,
            for checking that a model traces).
        mode: inductor's mode (``default``, ``reduce-overhead``, ``max-autotune``, ...); ``None`` is
            ``default``. Only with ``backend: inductor``.
        dynamic: ``True`` compiles every block for symbolic sizes once, so batches of another size,
            text length or image grid reuse it; ``False`` specialises on each shape met (recompiles);
            ``None`` lets ``torch.compile`` decide (static first, symbolic after a size changes).
        fullgraph: each block must trace as one graph: a graph break is an error, not a silent split.
    """

    backend: str = "inductor"
    mode: str | None = None
    dynamic: bool | None = True
    fullgraph: bool = True


def compile_config(
    value: bool | CompileConfig | Mapping[str, Any] | None, key: str = "compile"
) -> CompileConfig | None:
    """The task argument as a checked :class:`CompileConfig` (``None`` when off); a mapping of its fields
    (as a checkpoint's hyper-parameters keep it) is read too. ``key`` names the setting in messages."""
    if value is None or value is False:
        return None
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {f.name for f in fields(CompileConfig)})
        if unknown:
            raise ValueError(
                f"{key}: unknown fields {unknown}; CompileConfig has backend, mode, dynamic, fullgraph"
            )
        value = CompileConfig(**value)
    config = CompileConfig() if value is True else value
    if not isinstance(config, CompileConfig):
        raise TypeError(f"{key} must be true, false or a CompileConfig, got {type(value).__name__}")
    check_names(config, key)
    return config


def check_names(config: CompileConfig, key: str = "compile") -> None:
    """Refuse an unknown backend, or a mode the backend does not have, naming ``key``."""
    known = torch._dynamo.list_backends(exclude_tags=())
    if config.backend not in known:
        listed = ", ".join(torch._dynamo.list_backends())
        raise ValueError(
            f"{key}.backend={config.backend!r} is not a torch.compile backend; choose one of {listed}"
        )
    if config.mode is None:
        return
    if config.backend != "inductor":
        raise ValueError(
            f"{key}.mode={config.mode!r} is an inductor mode, but {key}.backend={config.backend!r}"
        )
    modes = list(torch._inductor.list_mode_options())
    if config.mode not in modes:
        raise ValueError(
            f"{key}.mode={config.mode!r} is not an inductor mode; choose one of {', '.join(modes)}"
        )


def _probe(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x @ x.transpose(0, 1) + 1.0).sum(-1)


def check_backend(config: CompileConfig, device: torch.device, key: str = "compile") -> None:
    """Compile and run a small function with ``config`` on ``device``; a failure (no C++ compiler for
    inductor, no Triton on a GPU, ...) is raised as one ``RuntimeError`` naming ``key`` and the reason."""
    compiled = torch.compile(
        _probe, backend=config.backend, mode=config.mode, dynamic=config.dynamic, fullgraph=True
    )
    try:
        compiled(torch.ones(4, 4, device=device))
    except Exception as error:
        reason = next(
            (line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__
        )
        raise RuntimeError(
            f"{key}.backend={config.backend!r} cannot compile on {device.type} here: "
            f"{type(error).__name__}: {reason}. Fix the toolchain, choose another backend "
            f"({key}.backend=aot_eager runs without a C++ compiler), or set {key}=false"
        ) from error


def compile_blocks(
    module: nn.Module, config: CompileConfig, units: tuple[type[nn.Module], ...] = COMPILE_UNITS
) -> int:
    """Compile every block of ``module`` in place; blocks compiled already are left as they are
    (``configure_model`` may run again). Returns how many blocks are compiled.

    What ``nn.Module.compile`` does (``torch.compile`` of the module's ``_call_impl``, called instead of it),
    with one compiled function for all the blocks of this call: its graphs serve every block (the module
    is an input), in a recompilation region of its own (``isolate_recompiles``) with room for
    :data:`RECOMPILE_LIMIT` graphs. ``Module.compile`` per block would share one region of 8 with every
    other in-place compiled module of the process, which the kinds of call of one model exceed
    (ERNIE-ViLG: three patterns x two directions x training and evaluation).
    """
    blocks = outermost_submodules(module, units)
    pending = [block for block in blocks if block._compiled_call_impl is None]
    if pending:
        compiled = torch.compile(
            nn.Module._call_impl, **asdict(config), isolate_recompiles=True, recompile_limit=RECOMPILE_LIMIT
        )
        for block in pending:
            block._compiled_call_impl = MethodType(compiled, block)
    return len(blocks)
