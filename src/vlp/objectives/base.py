"""The objective contract."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from vlp.datamodules.schema import Batch


@dataclass
class ObjectiveOutput:
    """A scalar loss and named figures to log (``mlm_acc`` is logged as ``train/mlm_acc`` ...)."""

    loss: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)


class Objective(nn.Module, metaclass=ABCMeta):
    """A loss family. It owns the head it trains (a part from ``vlp.models.heads``) and nothing else.

    ``input_dim`` is the width the head expects, checked against the model's before training starts.
    """

    input_dim: int

    @abstractmethod
    def forward(self, outputs: Any, batch: Batch) -> ObjectiveOutput: ...
