"""DDP and FSDP2 on two CPU processes (gloo, launched by Lightning) against one process.

``distributed_run.py`` holds the setup: a tiny ViLT pre-training task (MLM + ITM, AdamW and the
task's schedule, dropout off), five fixed global batches of 8, rank ``r`` of 2 given rows
``[4r, 4r+4)`` of each explicitly (no ``DistributedSampler``). Every sample carries exactly one MLM
label, so each rank and each micro-batch holds the same number of MLM targets: the mean of per-rank
mean losses (what DDP's and FSDP2's gradient averaging optimises) is then the global-batch mean. With a
variable number of masked tokens per rank it would not be, and the runs would legitimately differ.

The 2-process runs are subprocesses (one for DDP, one for FSDP2 that also covers resume, activation
checkpointing and bf16), so the pytest process never joins a process group; the single-process
references run here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import distributed_run as run
import pytest
import torch
import two_process_launch
from safetensors.torch import load_file
from two_process_launch import Launch

from vlp.models.layers.transformer import Block, TransformerEncoder
from vlp.zoo import consolidate_checkpoint, save_consolidated

pytestmark = pytest.mark.distributed

SCRIPT = Path(__file__).with_name("distributed_run.py")
LOSS_TOL = {"rtol": 1e-5, "atol": 1e-5}  # fp32, different reduction order across processes
WEIGHT_TOL = {"rtol": 1e-4, "atol": 2e-5}


@pytest.fixture(scope="module")
def launches(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Launch]]:
    """Both 2-process runs start together: their start-up (imports, gloo) overlaps."""
    started = {}
    for mode in ("ddp", "fsdp"):
        workdir = tmp_path_factory.mktemp(mode)
        started[mode] = Launch(SCRIPT, mode, workdir, extra=["--workdir", str(workdir)], timeout=600)
    yield started
    for launch in started.values():
        launch.stop()


@pytest.fixture(scope="module")
def ddp(launches: dict[str, Launch]) -> dict[str, Any]:
    return launches["ddp"].result()


@pytest.fixture(scope="module")
def fsdp_dir(launches: dict[str, Launch]) -> Path:
    return launches["fsdp"].workdir


@pytest.fixture(scope="module")
def fsdp(launches: dict[str, Launch]) -> dict[str, Any]:
    return launches["fsdp"].result()


@pytest.fixture(scope="module")
def single() -> dict[str, Any]:
    return run.run_single()


def assert_same_run(result: dict[str, Any], reference: dict[str, Any]) -> None:
    two_process_launch.assert_same_run(result, reference, run.STEPS, LOSS_TOL, WEIGHT_TOL)


def test_unsynchronised_ranks_would_fail_these_comparisons(single: dict[str, Any]) -> None:
    """Ranks training on their own halves without averaging gradients leave the tolerance at step 2."""
    halves = [run.run_single(rows=(0, 4)), run.run_single(rows=(4, 8))]
    unsynced = [(a + b) / 2 for a, b in zip(halves[0]["losses"], halves[1]["losses"])]
    torch.testing.assert_close(unsynced[0], single["losses"][0], **LOSS_TOL)  # same start
    for step in range(1, run.STEPS):
        assert abs(unsynced[step] - single["losses"][step]) > 10 * LOSS_TOL["atol"], step


def test_ddp_two_processes_match_one_process(ddp: dict[str, Any], single: dict[str, Any]) -> None:
    """Rank 1's weights start from another seed: DDP's broadcast must make rank 0's everyone's."""
    assert_same_run(ddp["fp32"], single)


def test_fsdp2_two_processes_match_one_process(fsdp: dict[str, Any], single: dict[str, Any]) -> None:
    """Same as DDP, through ModelParallelStrategy + fully_shard (and vlp's rank-0 broadcast)."""
    assert_same_run(fsdp["fp32"], single)


def test_fsdp2_shards_parameters_and_the_optimiser_holds_the_shards(fsdp: dict[str, Any]) -> None:
    shards = fsdp["shards"]
    assert shards["all_dtensor"]
    # configure_optimizers ran after configure_model: AdamW holds the sharded DTensor parameters
    # themselves (fully_shard replaces each parameter, so an earlier optimiser would hold stale ones).
    assert shards["optimizer_all_dtensor"]
    assert shards["optimizer_holds_module_params"]
    total, local = shards["total_numel"], shards["local_numel_per_rank"]
    assert len(local) == 2
    assert sum(local) == total
    for numel in local:
        assert abs(numel - total / 2) < 0.01 * total


def test_activation_checkpointing_switch_recomputes_blocks_with_the_same_numbers(
    fsdp: dict[str, Any], single: dict[str, Any]
) -> None:
    task = run.make_task(activation_checkpointing=True)
    encoders = [m for m in task.modules() if isinstance(m, TransformerEncoder)]
    assert encoders and all(e.activation_checkpointing for e in encoders)
    calls = []
    for block in (m for m in task.modules() if isinstance(m, Block)):
        block.register_forward_pre_hook(lambda *_: calls.append(1))
    task.compute_losses(run.make_batches(1)[0], "train").backward()
    assert len(calls) == 2 * 2 * 2  # 2 views x 2 blocks, each entered in forward and again in backward

    torch.testing.assert_close(run.run_single(activation_checkpointing=True)["losses"], single["losses"])
    assert_same_run(fsdp["activation_checkpointing"], single)


def test_gradient_accumulation_over_two_halves_matches_the_full_batch(single: dict[str, Any]) -> None:
    """``accumulate_grad_batches=2`` over rows [0, 4) and [4, 8): equal MLM counts in each half."""
    assert_same_run(run.run_single(micro_batches=2), single)


def test_bf16_mixed_runs_on_cpu_close_to_fp32(fsdp: dict[str, Any], single: dict[str, Any]) -> None:
    for result in (run.run_single(precision="bf16-mixed"), fsdp["bf16"]):
        differences = [abs(a - b) for a, b in zip(result["losses"], single["losses"])]
        assert max(differences) < 1e-2  # losses are about 5.3
        assert max(differences) > 10 * LOSS_TOL["atol"]  # bf16 really computed (not silently fp32)
    # FSDP2's policy computes in bf16 but keeps the sharded master weights (and AdamW state) float32
    assert fsdp["bf16"]["param_dtypes"] == ["torch.float32"]


def test_fsdp2_distributed_checkpoint_resumes_exactly(fsdp: dict[str, Any], fsdp_dir: Path) -> None:
    checkpoint = fsdp_dir / "checkpoints" / f"step={run.RESUME_AT}.ckpt"
    assert checkpoint.is_dir()  # DCP: one shard file per rank, Lightning's metadata beside them
    assert sorted(p.name for p in checkpoint.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert (checkpoint / "meta.pt").is_file()
    resumed, uninterrupted = fsdp["resumed"], fsdp["fp32"]
    torch.testing.assert_close(resumed["losses"], uninterrupted["losses"][run.RESUME_AT :], rtol=0, atol=1e-6)
    for name, value in uninterrupted["state"].items():
        torch.testing.assert_close(resumed["state"][name], value, rtol=0, atol=1e-6, msg=name)


def test_consolidated_checkpoint_loads_strictly_and_reproduces_outputs(
    fsdp: dict[str, Any], fsdp_dir: Path, tmp_path: Path
) -> None:
    checkpoint = fsdp_dir / "checkpoints" / f"step={run.STEPS}.ckpt"
    path = save_consolidated(checkpoint, tmp_path / "zoo" / "vilt.safetensors")
    state = load_file(str(path))
    fresh = run.make_task(seed=123)  # not sharded, other initial weights
    assert sorted(state) == sorted(fresh.state_dict())
    fresh.load_state_dict(state)  # strict
    for name, value in fsdp["fp32"]["state"].items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=0, msg=name)
    outputs = run.evaluate(fresh, run.make_batches()[0])
    for name, value in fsdp["fp32"]["eval"].items():  # the sharded model's outputs at the same step
        torch.testing.assert_close(outputs[name], value, rtol=1e-5, atol=1e-6, msg=name)

    assembly = consolidate_checkpoint(checkpoint, prefix="model.")
    torch.save(assembly, tmp_path / "vilt.pt")
    fresh.model.load_state_dict(torch.load(tmp_path / "vilt.pt", weights_only=True))  # strict
    assert not any(name.startswith("objectives.") for name in assembly)


def test_consolidation_refuses_a_directory_that_is_not_a_dcp_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"\.metadata"):
        consolidate_checkpoint(tmp_path)


# ------------------------------------------------------------------------------ fine-tuning tasks


@pytest.fixture(scope="module")
def single_finetune() -> dict[str, Any]:
    return run.run_finetune(1, lambda: "auto")


@pytest.mark.parametrize("kind", ["vqa", "nlvr2"])
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_finetuning_two_processes_match_one_process(
    kind: str, strategy: str, ddp: dict[str, Any], fsdp: dict[str, Any], single_finetune: dict[str, Any]
) -> None:
    result = {"ddp": ddp, "fsdp": fsdp}[strategy]["finetune"][kind]
    assert_same_run(result, single_finetune[kind])


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_retrieval_trains_and_evaluates_all_pairs_across_processes(
    strategy: str, ddp: dict[str, Any], fsdp: dict[str, Any]
) -> None:
    """Each rank kept different (and differently many) evaluation batches; the recall logged is that of
    one process scoring every text against every image with the trained weights."""
    import finetune_parts as parts

    from vlp.metrics.retrieval import retrieval_recall
    from vlp.tasks.retrieval import gather_eval_pool

    result = {"ddp": ddp, "fsdp": fsdp}[strategy]["finetune"]["retrieval"]
    assert len(result["losses"]) == run.STEPS and all(0 < loss < 2 for loss in result["losses"])
    task = run.make_finetune_task("retrieval", seed=123)
    task.load_state_dict(result["state"])  # strict
    task.eval()
    batches = parts.retrieval_eval_batches()
    pool = gather_eval_pool(
        [
            {k: getattr(b, k) for k in ("pixels", "pixel_mask", "text_ids", "text_mask", "text_image_index")}
            for b in batches
        ]
    )
    scores = task.score_all(pool)
    expected = retrieval_recall(scores, pool["text_image_index"])
    assert result["metrics"] == pytest.approx({f"val/{k}": v.item() for k, v in expected.items()}, abs=1e-6)
