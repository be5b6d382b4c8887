"""What every bench report's header says about the machine."""

from __future__ import annotations

import pytest
import torch

from vlp.bench.command import cpu_features


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "said"),
    [
        (True, True, "bf16 units: AVX-512 bf16 + AMX"),
        (True, False, "bf16 units: AVX-512 bf16"),
        (False, False, "bf16 units: none (bf16 is emulated in fp32 units)"),
    ],
)
def test_cpu_features_name_the_bf16_units(
    monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool, said: str
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert cpu_features() == f"ATen vector ISA AVX512, {said}"
