"""What the E2E-VLP tasks share: the views they may run, frozen unused parts, FSDP2 method registration.

An E2E-VLP task runs some of four views of a batch (:class:`~vlp.models.e2e_vlp.model.E2EVLP`):

* ``"mlm"`` / ``"itm"``: encoder passes over ``[text; image]``, read by MLM and ITM;
* ``"detection"``: the object queries decoded against an encoder pass (:meth:`E2EVLP.detect`);
* ``"caption"``: caption tokens decoded, teacher-forced, against an image-only encoder pass.

Parts that no active view reaches (the pooler without ITM, the object queries without detection, the
caption head without captioning, objectives of weight 0) are frozen (``requires_grad=False``) when the
task is built, and logged: DDP (``find_unused_parameters=False``) stops on parameters that get no
gradient, and nothing would train them anyway. They are still saved and loaded.

Under FSDP2 the decoder and the object queries are reached through :meth:`E2EVLP.detect`,
``decode_captions`` and ``generate_captions``, not ``forward``; FSDP2 gathers a module's parameters in
its forward hooks only, so :meth:`E2ETask.configure_model` registers those methods with
``register_fsdp_forward_method`` (the root's own parameters: queries, caption head, modality types), and
every decoder layer is a ``fully_shard`` unit of its own (:data:`vlp.tasks.sharding.SHARD_UNITS`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any, ClassVar

from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from vlp.tasks.base import ObjectiveTask, check_views

log = logging.getLogger(__name__)

FSDP_METHODS = ("embed_images", "detect", "decode_captions", "generate_captions")
"""E2EVLP methods called from outside ``forward``.

``embed_images`` runs first in a step, so FSDP2 initialises the model as the root before its embedder
(the embedder's own ``forward`` first would make it a root of its own)."""


@contextlib.contextmanager
def fsdp_gathered(module: nn.Module) -> Iterator[None]:
    """Under FSDP2, keep every unit of ``module`` unsharded for the duration (one all-gather each).

    For work outside a unit's own ``forward``: decoding runs as many decoder steps as its longest
    caption needs, a number each process finds on its own (gathered once up front, the steps issue no
    collective, so the processes need not agree on it); a head called directly reads its gathered
    weights. Without FSDP2 this does nothing.

    ``module`` must be an FSDP2 root (a model or objective of the task): afterwards its units reshard
    after forward again, and the root itself does not (FSDP2's own setting for a root).
    """
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in module.modules() if isinstance(m, FSDPModule)]
    if not units:
        yield
        return
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            if unit is not module:
                unit.set_reshard_after_forward(True, recurse=False)


class E2ETask(ObjectiveTask):
    """An :class:`~vlp.tasks.base.ObjectiveTask` over an :class:`~vlp.models.e2e_vlp.model.E2EVLP`.

    Subclasses set :attr:`VIEWS` (the views they can run) and may extend :meth:`views_used`.
    """

    VIEWS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_views(self.objectives, self.VIEWS, f"{type(self).__name__} runs {list(self.VIEWS)}")
        for method in FSDP_METHODS:
            if not callable(getattr(self.model, method, None)):
                raise ValueError(f"model: {type(self.model).__name__} has no {method}(); an E2EVLP is needed")
        needs_decoder = self.views_used() & {"detection", "caption"}
        if needs_decoder and getattr(self.model, "decoder", None) is None:
            raise ValueError(f"model.decoder is None, but the views {sorted(needs_decoder)} decode")
        self.frozen = self.freeze_unused()

    def views_used(self) -> set[str]:
        """The views the active objectives read."""
        return {objective.view for objective in self.active_objectives.values()}

    def uses_text(self) -> bool:
        """Whether any view embeds text (encoder text or caption tokens)."""
        return bool(self.views_used() & {"mlm", "itm", "caption"})

    def unused_modules(self) -> dict[str, nn.Module | nn.Parameter | None]:
        """Name → module (or parameter) for the parts no active view reaches (``None`` entries are
        absent parts)."""
        views = self.views_used()
        unused: dict[str, nn.Module | nn.Parameter | None] = {}
        if "itm" not in views:
            unused["model.pooler"] = self.model.pooler
        if "detection" not in views:
            unused["model.query_embed"] = self.model.query_embed
            unused["model.reference_boxes"] = getattr(self.model, "reference_boxes", None)
            unused["model.anchor_pos"] = getattr(self.model, "anchor_pos", None)
        if "caption" not in views:
            unused["model.caption_head"] = self.model.caption_head
        if not views & {"detection", "caption"}:
            unused["model.decoder"] = self.model.decoder
        if not self.uses_text():
            unused["model.text_embedder"] = self.model.text_embedder
        for name, objective in self.objectives.items():
            if self.loss_weights[name] == 0:
                unused[f"objectives.{name}"] = objective
        return unused

    def freeze_unused(self) -> list[str]:
        """Freeze :meth:`unused_modules` (see the module docstring); the names frozen. A parameter
        shared with a used part (a caption head tied to the word embeddings) stays trainable."""
        prefixes = [name for name, module in self.unused_modules().items() if module is not None]
        names: dict[int, list[str]] = {}
        params: dict[int, nn.Parameter] = {}
        for name, param in self.named_parameters(remove_duplicate=False):
            names.setdefault(id(param), []).append(name)
            params[id(param)] = param
        frozen: set[str] = set()
        for key, aliases in names.items():
            owners = [next((p for p in prefixes if a == p or a.startswith(p + ".")), None) for a in aliases]
            if all(owner is not None for owner in owners):
                params[key].requires_grad_(False)
                frozen.update(owners)
        if frozen and rank_zero_only.rank == 0:
            log.info(
                "vlp: %s freezes what no active objective reaches: %s", type(self).__name__, sorted(frozen)
            )
        return sorted(frozen)

    def configure_model(self) -> None:
        """FSDP2 (see :meth:`ObjectiveTask.configure_model`), then the decoding methods registered."""
        super().configure_model()
        from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method

        if isinstance(self.model, FSDPModule) and not getattr(self.model, "_vlp_methods_registered", False):
            for method in FSDP_METHODS:
                register_fsdp_forward_method(self.model, method)
            self.model._vlp_methods_registered = True
