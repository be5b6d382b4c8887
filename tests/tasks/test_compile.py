"""The tasks' ``compile`` argument: bad settings refused with their key before training, blocks compiled in
place (same parameter names, same numbers as eager), a recipe trained through the CLI with it on, and
compiled training under DDP and FSDP2 on two processes equal to one process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import CONFIGS, run_recipe
from vlp.models.layers.transformer import Block
from vlp.tasks.compile import CompileConfig, check_backend, compile_config

EAGER_BACKEND = CompileConfig(
    backend="aot_eager"
)  # traced and partitioned as inductor's input, no C++ compile


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Any:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_unknown_backend_or_mode_is_refused_naming_the_key() -> None:
    with pytest.raises(
        ValueError, match=r"compile\.backend='nope' is not a torch\.compile backend; choose one of"
    ):
        compile_config(CompileConfig(backend="nope"))
    with pytest.raises(
        ValueError, match=r"compile\.mode='max-autotune' is an inductor mode, but compile\.backend"
    ):
        compile_config(CompileConfig(backend="eager", mode="max-autotune"))
    with pytest.raises(
        ValueError, match=r"compile\.mode='fastest' is not an inductor mode; choose one of default"
    ):
        compile_config(CompileConfig(mode="fastest"))
    with pytest.raises(ValueError, match=r"compile: unknown fields \['backnd'\]"):
        compile_config({"backnd": "eager"})
    assert compile_config(False) is None and compile_config(True) == CompileConfig()
    assert compile_config({"backend": "eager", "dynamic": None}) == CompileConfig("eager", dynamic=None)


def test_a_backend_that_cannot_compile_here_fails_with_the_key_and_the_reason() -> None:
    """Inductor with no working C++ compiler: the probe compile fails before any training step."""
    broken = torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False})
    with broken, pytest.raises(RuntimeError) as caught:
        check_backend(CompileConfig(), torch.device("cpu"))
    message = str(caught.value)
    assert message.startswith("compile.backend='inductor' cannot compile on cpu here: ")
    assert "No working C++ compiler" in message and "compile=false" in message


def compiled_blocks(task: torch.nn.Module) -> list[bool]:
    return [block._compiled_call_impl is not None for block in task.modules() if isinstance(block, Block)]


def test_configure_model_compiles_each_block_in_place_with_eager_numbers() -> None:
    """Three optimiser steps of a tiny pre-training task, compiled (aot_eager) and eager: same losses and
    weights, same parameter names; the MLM view's last block (selected rows) compiles too."""
    from test_pretrain import fixed_batch, make_task

    results = []
    for compile in (EAGER_BACKEND, False):
        torch.manual_seed(0)
        task = make_task(compile=compile)
        names = list(task.state_dict())
        task.configure_model()
        task.configure_model()  # again (as trainer.test after fit): blocks stay compiled once
        assert compiled_blocks(task) == [compile is not False] * 2
        assert list(task.state_dict()) == names
        optimizer = torch.optim.AdamW(task.parameters(), lr=3e-3)
        losses = []
        for _ in range(3):
            optimizer.zero_grad()
            loss = task.compute_losses(fixed_batch(), "train")
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        results.append((losses, task.state_dict()))
    (compiled_losses, compiled_state), (eager_losses, eager_state) = results
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-6)
    for name, value in eager_state.items():
        torch.testing.assert_close(compiled_state[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # the blocks really were compiled


def test_recipe_trains_with_compile_on_through_the_cli(tiny_shapes: Path, tmp_path: Path) -> None:
    """``--model.init_args.compile.backend=eager`` on the ViLT pre-training recipe: two steps train, the
    run's config keeps the setting and its checkpoint loads with ``weights_only=True``."""
    run_recipe(
        "fit",
        CONFIGS / "vilt/shapes_pretrain.yaml",
        tiny_shapes,
        tmp_path,
        "--model.init_args.compile.backend=eager",
        "--trainer.enable_checkpointing=true",
    )
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    checkpoint = next(tmp_path.rglob("*.ckpt"))
    hparams = torch.load(checkpoint, weights_only=True)["hyper_parameters"]
    assert hparams["compile"] == {"backend": "eager", "mode": None, "dynamic": True, "fullgraph": True}


# ------------------------------------------------------------------------- two processes, compiled

SCRIPT = Path(__file__).with_name("compile_distributed_run.py")
LOSS_TOL = {"rtol": 1e-5, "atol": 1e-5}  # fp32, different reduction order across processes
# Two processes sum gradients in another order than one: float noise, which AdamW's normalised steps carry
# into weights that near-zero gradients move (as in test_e2e_distributed.py)
WEIGHT_TOL = {"rtol": 1e-4, "atol": 5e-4}


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    from two_process_launch import two_process_results

    return two_process_results(SCRIPT, tmp_path_factory, "compile", together=False)  # each uses both cores


@pytest.fixture(scope="module")
def one_process() -> dict[str, Any]:
    import compile_distributed_run as compiled

    torch.set_num_threads(1)
    return compiled.run_all(1, lambda: "auto")


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("kind", ["vilt", "e2e_captioning", "ernie_vilg"])
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_compiled_training_on_two_processes_is_one_process(
    kind: str, strategy: str, two_processes: dict[str, Any], one_process: dict[str, Any]
) -> None:
    """Losses, weights and (E2E-VLP captioning, ERNIE-ViLG) the validation over both processes."""
    import distributed_run as run
    from two_process_launch import assert_same_run

    result, reference = two_processes[strategy][kind], one_process[kind]
    if kind != "vilt":  # (ViLT's five batches differ: its loss does not fall in five steps)
        assert reference["losses"][-1] < reference["losses"][0]
    assert_same_run(result, reference, run.STEPS, LOSS_TOL, WEIGHT_TOL)
    if "metrics" in reference:
        assert result["metrics"] == pytest.approx(reference["metrics"], abs=1e-5)
        assert result["predictions"] == reference["predictions"]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.filterwarnings("ignore")
def test_compiled_fsdp2_with_activation_checkpointing_or_bf16(
    two_processes: dict[str, Any], one_process: dict[str, Any]
) -> None:
    """Activation checkpointing recomputes compiled blocks with the same numbers; bf16-mixed stays close to
    fp32 (FSDP2's bf16 parameters against fp32: losses about 5.3)."""
    import distributed_run as run
    from two_process_launch import assert_same_run

    fsdp, reference = two_processes["fsdp"], one_process["vilt"]
    assert_same_run(fsdp["vilt_activation_checkpointing"], reference, run.STEPS, LOSS_TOL, WEIGHT_TOL)
    differences = [abs(a - b) for a, b in zip(fsdp["vilt_bf16"]["losses"], reference["losses"], strict=True)]
    assert 10 * LOSS_TOL["atol"] < max(differences) < 1e-2
