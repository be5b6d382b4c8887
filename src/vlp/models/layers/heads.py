"""Prediction heads. Heads are model parts; the losses that use them live in ``vlp.objectives``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vlp.models.layers.transformer import init_weights
from vlp.models.outputs import DetectionPredictions


class Pooler(nn.Module):
    """BERT pooler: dense + tanh over the first token."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.activation = nn.Tanh()
        self.apply(init_weights)

    def forward(self, states: Tensor) -> Tensor:
        return self.activation(self.dense(states[:, 0]))


class MLMHead(nn.Module):
    """BERT's MLM head: dense + GELU + LayerNorm, then a projection onto the vocabulary.

    It is applied to the gathered labelled positions only (``[M, D]``), never the whole sequence:
    over a 30k vocabulary that is most of a small model's compute.
    """

    def __init__(self, dim: int, vocab_size: int = 30522, norm_eps: float = 1e-12) -> None:
        super().__init__()
        self.input_dim = dim
        self.dense = nn.Linear(dim, dim)
        self.activation = nn.GELU()
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.decoder = nn.Linear(dim, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.apply(init_weights)

    def forward(self, states: Tensor) -> Tensor:
        return self.decoder(self.norm(self.activation(self.dense(states)))) + self.bias


class ITMHead(nn.Module):
    """Image-text matching: a linear 2-way classifier over the pooled state."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.input_dim = dim
        self.fc = nn.Linear(dim, 2)
        self.apply(init_weights)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.fc(pooled)


class ClassifierHead(nn.Module):
    """ViLT's answer classifier: dense to twice the width, LayerNorm, GELU, dense to the classes.

    VQA uses it over the pooled state (``input_dim = dim``); NLVR2 over the two images' pooled
    states concatenated (``input_dim = 2 * dim``). Layer indices ``0, 1, 3`` match the official
    ``vqa_classifier`` / ``nlvr2_classifier`` and transformers' ``classifier`` keys.
    """

    def __init__(self, input_dim: int, num_classes: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        self.input_dim = input_dim
        hidden = hidden_dim if hidden_dim is not None else 2 * input_dim
        self.classifier = nn.Sequential(
            nn.Linear(input_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, num_classes)
        )
        self.apply(init_weights)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.classifier(pooled)


class DetectionHead(nn.Module):
    """DETR's prediction heads over decoder query states, plus E2E-VLP's attribute classifier.

    A linear classifier over ``num_classes + 1`` outputs (the last is "no object"), an optional linear
    multi-label attribute classifier, and DETR's 3-layer ReLU MLP regressing ``cxcywh`` boxes through a
    sigmoid. It accepts any leading shape, so all decoder layers (``[L, B, Q, D]``) go through in one call.
    """

    def __init__(self, dim: int, num_classes: int, num_attributes: int = 0, box_layers: int = 3) -> None:
        super().__init__()
        if dim < 1 or num_classes < 1 or num_attributes < 0 or box_layers < 1:
            raise ValueError(
                "DetectionHead needs dim >= 1, num_classes >= 1, num_attributes >= 0 and box_layers >= 1, "
                f"got dim={dim}, num_classes={num_classes}, num_attributes={num_attributes}, "
                f"box_layers={box_layers}"
            )
        self.input_dim = dim
        self.num_classes = num_classes
        self.num_attributes = num_attributes
        self.class_embed = nn.Linear(dim, num_classes + 1)
        self.attribute_embed = nn.Linear(dim, num_attributes) if num_attributes else None
        layers: list[nn.Module] = []
        for _ in range(box_layers - 1):
            layers += [nn.Linear(dim, dim), nn.ReLU()]
        self.bbox_embed = nn.Sequential(*layers, nn.Linear(dim, 4))
        self.apply(init_weights)

    def forward(self, states: Tensor) -> DetectionPredictions:
        return DetectionPredictions(
            logits=self.class_embed(states),
            boxes=self.bbox_embed(states).sigmoid(),
            attribute_logits=self.attribute_embed(states) if self.attribute_embed is not None else None,
        )


class RankHead(nn.Module):
    """Retrieval score: a linear map of the pooled state to one number (official ViLT's ``rank_output``).

    Fine-tuning initialises it from a pre-trained :class:`ITMHead`'s "match" row (``fc.weight[1]``,
    ``fc.bias[1]``), so its first scores are the ITM match logits.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.input_dim = dim
        self.fc = nn.Linear(dim, 1)
        self.apply(init_weights)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.fc(pooled).squeeze(-1)
