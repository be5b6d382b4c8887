"""Word-patch alignment (ViLT): an optimal-transport distance between word and patch states.

For each image-text pair the cost of moving a word state onto a patch state is their cosine distance;
the transport plan is approximated by IPOT (the inexact proximal point method of Xie et al., 2019, which
UNITER and ViLT use) with uniform masses over the real words and patches. The loss lowers the distance
of matching pairs and raises that of mismatched ones. Unlike ITM's pooled comparison, it gives every
word and patch state a direct gradient towards the states of what it describes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vlp.batch import Batch
from vlp.models.outputs import FusionOutput
from vlp.objectives.base import Objective, ObjectiveOutput


def cosine_cost(text: Tensor, image: Tensor) -> Tensor:
    """``1 - cos`` between every text and image state: ``[B, L, D] x [B, N, D] -> [B, L, N]``."""
    return 1.0 - F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).transpose(1, 2)


@torch.no_grad()
def ipot_plan(
    cost: Tensor,
    text_valid: Tensor,
    image_valid: Tensor,
    beta: float = 0.5,
    iterations: int = 50,
    inner: int = 1,
) -> Tensor:
    """IPOT transport plan ``[B, L, N]`` between uniform masses on the valid text and image positions.

    Each outer iteration takes a proximal step (kernel ``exp(-cost / beta)`` times the current plan) and
    rescales it towards the two marginals with ``inner`` Sinkhorn updates. Rows and columns of invalid
    positions carry no mass. No gradient flows through the plan (the distance is ``<cost, plan>``).
    """
    dtype = cost.dtype
    joint = (text_valid[:, :, None] & image_valid[:, None, :]).to(dtype)
    text_count = text_valid.sum(1, keepdim=True).clamp(min=1).to(dtype)  # [B, 1]
    image_count = image_valid.sum(1, keepdim=True).clamp(min=1).to(dtype)
    kernel = torch.exp(-cost / beta) * joint
    plan = joint.clone()
    text_scale = text_valid.to(dtype) / text_count  # [B, L]
    image_scale = torch.zeros_like(image_valid, dtype=dtype)
    for _ in range(iterations):
        proximal = kernel * plan
        for _ in range(inner):
            column_mass = (proximal * text_scale[:, :, None]).sum(1)  # [B, N]
            image_scale = _safe_reciprocal(image_count * column_mass, image_valid)
            row_mass = (proximal * image_scale[:, None, :]).sum(2)  # [B, L]
            text_scale = _safe_reciprocal(text_count * row_mass, text_valid)
        plan = text_scale[:, :, None] * proximal * image_scale[:, None, :]
    return plan * joint


def _safe_reciprocal(value: Tensor, valid: Tensor) -> Tensor:
    """``1 / value`` where ``valid``, 0 elsewhere (padding carries no mass)."""
    return torch.where(
        valid, 1.0 / torch.where(valid, value, torch.ones_like(value)), torch.zeros_like(value)
    )


def alignment_positions(outputs: FusionOutput) -> tuple[Tensor, Tensor]:
    """Which text and image states take part: words (not [CLS] or the closing [SEP]) and image tokens
    that cover the image (not the embedder's summary tokens)."""
    text_valid = outputs.text_mask.clone()
    last = text_valid.sum(1) - 1
    text_valid[torch.arange(len(last), device=last.device), last] = False
    text_valid[:, 0] = False
    image_valid = outputs.image_mask.clone()
    image_valid[:, : outputs.visual.num_prefix] = False
    return text_valid, image_valid


class WPAObjective(Objective):
    """ViLT's word-patch alignment on the ITM pass: ``(sum d(matching) - sum d(mismatched)) / B``.

    Computed in fp32 with autocast off (the IPOT iterations divide by small masses). Official ViLT
    weighs it 0.1 relative to ITM; set that in the task's ``loss_weights``.
    """

    view = "itm"

    def __init__(self, beta: float = 0.5, iterations: int = 50, inner: int = 1) -> None:
        super().__init__()
        if beta <= 0 or iterations < 1 or inner < 1:
            raise ValueError(
                f"WPA needs beta > 0 and at least one iteration, got {beta}, {iterations}, {inner}"
            )
        self.beta = beta
        self.iterations = iterations
        self.inner = inner

    def forward(self, outputs: FusionOutput, batch: Batch) -> ObjectiveOutput:
        if batch.itm_labels is None:
            raise ValueError("WPAObjective needs batch.itm_labels; enable ITM pairs in the data module")
        text_valid, image_valid = alignment_positions(outputs)
        with torch.autocast(device_type=outputs.text_states.device.type, enabled=False):
            cost = cosine_cost(outputs.text_states.float(), outputs.image_states.float())
            plan = ipot_plan(cost.detach(), text_valid, image_valid, self.beta, self.iterations, self.inner)
            distance = (cost * plan).sum((1, 2))  # [B]
        sign = batch.itm_labels.to(distance.dtype) * 2 - 1  # +1 matching, -1 mismatched
        loss = (sign * distance).sum() / len(distance)
        matching = batch.itm_labels == 1
        logs = {
            "wpa_distance_matching": distance[matching].mean().detach()
            if matching.any()
            else distance.new_zeros(()),
            "wpa_distance_mismatched": distance[~matching].mean().detach()
            if (~matching).any()
            else distance.new_zeros(()),
        }
        return ObjectiveOutput(loss, logs)
