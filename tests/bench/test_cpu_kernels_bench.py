"""``python -m vlp bench cpu-kernels`` at tiny sizes: it runs, checks agreement, and prints its table."""

from __future__ import annotations

from typing import Any

import pytest

from vlp.bench.cpu_kernels import CpuKernelsConfig, measure_adamw
from vlp.cli import main


def test_bench_runs_and_ends_with_the_speedup_line(capsys: pytest.CaptureFixture[str]) -> None:
    main(
        [
            "bench",
            "cpu-kernels",
            "--shapes=[[2, 2, 9, 8]]",
            "--param_shapes=[[3, 4], [4]]",
            "--steps=2",
            "--warmup=1",
        ]
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("bf16 attention speedup of vlp's path over SDPA's default: ")
    assert float(out[-1].split(": ")[1]) > 0
    assert any(line.startswith("| [2, 2, 9, 8] | bf16 |") for line in out)
    assert any(line.startswith("| fused |") for line in out)


def test_adamw_implementations_agree_and_count_parameters() -> None:
    numel, medians = measure_adamw(CpuKernelsConfig(param_shapes=[[5, 6], [6]], steps=1, warmup=0))
    assert numel == 36 and set(medians) == {"for-loop", "foreach", "fused"}


def test_bad_shape_is_named() -> None:
    with pytest.raises(ValueError, match=r"shapes: \[2, 2, 3\]"):
        CpuKernelsConfig(shapes=[[2, 2, 3]])


@pytest.mark.filterwarnings("ignore")
def test_the_adamw_default_is_the_16px_shapes_recipes_model_and_heads(shapes_p16_task: Any) -> None:
    """The bench builds its default parameters in code; they are those of the 16-px shapes recipe
    (configs/model/vilt_shapes_p16.yaml and its MLM and ITM heads), which its docstring and RESULTS name."""
    from vlp.bench.cpu_kernels import shapes_model_param_shapes

    task = shapes_p16_task
    modules = [task.model, task.objectives["mlm"].head, task.objectives["itm"].head]
    assert shapes_model_param_shapes() == [list(p.shape) for m in modules for p in m.parameters()]
