"""vlp.tasks.optim: the fused AdamW makes the same update as PyTorch's default implementation."""

from __future__ import annotations

import torch
from torch import nn

from vlp.tasks.optim import build_adamw, param_groups


def test_fused_adamw_equals_foreach() -> None:
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    fused = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    fused.load_state_dict(reference.state_dict())
    opt_fused = build_adamw(param_groups(fused, 1e-2, 0.1), 1e-2)
    opt_ref = build_adamw(param_groups(reference, 1e-2, 0.1), 1e-2, fused=False)
    assert opt_fused.defaults["fused"] and not opt_ref.defaults["fused"]
    x = torch.randn(16, 4)
    for _ in range(5):
        for model, opt in ((fused, opt_fused), (reference, opt_ref)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for (name, a), b in zip(fused.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
