"""What the ERNIE-ViLG tasks share: a frozen VQGAN that turns a batch's images into the model's code ids.

:func:`load_vqgan` reads the VQGAN a task is given; :class:`VQGANCodesTask` checks it against the
:class:`~vlp.models.ernie_vilg.model.ERNIEViLG` (codebook size and code grid), keeps it in eval mode,
encodes ``batch.pixels`` into ``batch.image_codes`` and, under FSDP2, keeps it whole on every process
(rank 0's copy broadcast) while the model and objectives are sharded.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn

from vlp.batch import Batch
from vlp.models.ernie_vilg.model import ERNIEViLG
from vlp.tasks.base import ObjectiveTask


def load_vqgan(vqgan: nn.Module | None, vqgan_checkpoint: str | None) -> nn.Module:
    """The task's VQGAN: ``vqgan`` as given, or read from ``vqgan_checkpoint`` (exactly one of them).

    ``vqgan_checkpoint`` is a ``VQGANTask`` checkpoint file, a zoo name (``zoo:vqgan:imagenet-f16-16384``:
    taming's checkpoint fetched, verified and converted; ``VLP_OFFLINE=1`` reads a local copy only) or a
    folder :func:`vlp.zoo.save_pretrained` wrote (``python -m vlp zoo export`` of a VQGAN run).
    """
    from vlp.models.vqgan.model import VQGAN
    from vlp.zoo.pipeline import is_zoo_name

    if (vqgan is None) == (vqgan_checkpoint is None):
        raise ValueError("ERNIEViLGTask needs exactly one of vqgan (a module) and vqgan_checkpoint (a path)")
    if vqgan is not None:
        return vqgan
    path = Path(vqgan_checkpoint)
    if is_zoo_name(vqgan_checkpoint) or path.is_dir():
        import vlp.zoo

        loaded = vlp.zoo.load(vqgan_checkpoint)
        if not isinstance(loaded, VQGAN):
            raise ValueError(
                f"vqgan_checkpoint {vqgan_checkpoint} holds a {type(loaded).__name__}, not a VQGAN"
            )
        return loaded
    if not path.is_file():
        raise FileNotFoundError(
            f"vqgan_checkpoint {path} not found: train the VQGAN first (configs/vqgan/, a VQGANTask .ckpt) "
            "or point model.init_args.vqgan_checkpoint at its checkpoint, a zoo name (zoo:vqgan:<tag>) "
            "or a folder vlp.zoo.save_pretrained wrote"
        )
    return VQGAN.from_checkpoint(path)


class VQGANCodesTask(ObjectiveTask):
    """An :class:`~vlp.tasks.base.ObjectiveTask` over an ERNIE-ViLG model that reads images as the codes
    of ``self.vqgan`` (module docstring).

    A subclass sets ``self.vqgan`` in its ``__init__`` (after :meth:`check_vqgan_grid`) and implements
    :meth:`check_text_fields`; :attr:`WHOLE_PREFIXES` names the parameters FSDP2 leaves unsharded.
    """

    model: ERNIEViLG
    vqgan: nn.Module
    WHOLE_PREFIXES: ClassVar[tuple[str, ...]] = ("vqgan.",)

    def check_vqgan_grid(self, vqgan: nn.Module) -> None:
        """Refuse a VQGAN whose codebook size or code grid is not the model's."""
        if vqgan.num_codes != self.model.num_codes or tuple(vqgan.grid) != tuple(self.model.grid):
            raise ValueError(
                f"the VQGAN has {vqgan.num_codes} codes on a {tuple(vqgan.grid)} grid, the model "
                f"num_codes={self.model.num_codes} and grid={tuple(self.model.grid)}: set model.init_args to match"
            )

    def train(self, mode: bool = True) -> VQGANCodesTask:
        """The VQGAN stays in eval mode (its EMA codebook must not move; no dropout in the decoder)."""
        super().train(mode)
        self.vqgan.eval()
        return self

    @torch.no_grad()
    def encode_images(self, pixels: Tensor) -> Tensor:
        """Pixels ``[B, 3, H, W]`` in [-1, 1] → code ids ``[B, h*w]`` (frozen VQGAN)."""
        _, ids = self.vqgan.encode(pixels)
        if tuple(ids.shape[1:]) != tuple(self.model.grid):
            raise ValueError(
                f"images of {tuple(pixels.shape[-2:])} px give a {tuple(ids.shape[1:])} code grid, the model's "
                f"is {tuple(self.model.grid)}: set the data module's image_size to match"
            )
        return ids.flatten(1)

    @abstractmethod
    def check_text_fields(self, batch: Batch) -> None:
        """Refuse a batch without the text fields the task reads, saying which collator gives them."""

    def with_codes(self, batch: Batch) -> Batch:
        """``batch`` with ``image_codes`` (its own when it carries them, else its pixels encoded)."""
        self.check_text_fields(batch)
        if batch.image_codes is not None:
            return batch
        if batch.pixels is None:
            raise ValueError(f"{type(self).__name__} needs batch.pixels or batch.image_codes")
        return replace(batch, image_codes=self.encode_images(batch.pixels))

    def configure_model(self) -> None:
        """FSDP2 as :meth:`ObjectiveTask.configure_model` for the model and objectives; the frozen VQGAN is
        not sharded: rank 0's copy is broadcast and every process keeps it whole, so a VQGAN with trainable
        parameters is refused. Parameters under :attr:`WHOLE_PREFIXES` are not checked for sharding. With
        ``compile``, the blocks are compiled first (:meth:`ObjectiveTask.compile_model`)."""
        from vlp.tasks.sharding import apply_fsdp2, broadcast_from_first_rank, check_sharded, fsdp2_mesh

        self.compile_model()
        mesh = fsdp2_mesh(self)
        if mesh is None:
            return
        if any(p.requires_grad for p in self.vqgan.parameters()):
            raise ValueError(
                "train_decoder=True is not supported under FSDP2 (the VQGAN is kept whole, outside the "
                "sharded model): train end to end with a frozen decoder or under DDP"
            )
        broadcast_from_first_rank(self.vqgan, mesh)
        bf16 = str(self.trainer.precision).startswith("bf16")
        apply_fsdp2([self.model, *self.objectives.values()], mesh, bf16=bf16)
        sharded = [
            (name, p) for name, p in self.named_parameters() if not name.startswith(self.WHOLE_PREFIXES)
        ]
        check_sharded(sharded, "the model and objectives")
