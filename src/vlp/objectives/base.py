"""The objective contract."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from vlp.batch import Batch


@dataclass
class ObjectiveOutput:
    """A scalar loss and named figures to log (``mlm_acc`` is logged as ``train/mlm_acc`` ...)."""

    loss: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)


class Objective(nn.Module, metaclass=ABCMeta):
    """A loss family. It owns the head it trains (a part from ``vlp.models.layers.heads``) and nothing else.

    ``input_dim`` is the width the head expects, checked against the model's before training starts.
    ``view`` names the forward pass it reads when a task runs several over one batch (pre-training runs
    ``"mlm"``, masked text with each sample's own image, and ``"itm"``, clean text with the ITM pairing,
    as official ViLT does); ``None`` means the task's single pass.
    ``reads_only_labelled_text`` declares that it reads nothing of its view but the pooled ``[CLS]`` and
    the text rows with an MLM label; a task may then have the last layer compute only those rows.
    """

    input_dim: int
    view: ClassVar[str | None] = None
    reads_only_labelled_text: ClassVar[bool] = False

    @abstractmethod
    def forward(self, outputs: Any, batch: Batch) -> ObjectiveOutput: ...
