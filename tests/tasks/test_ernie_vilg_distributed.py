"""ERNIEViLGTask under DDP and FSDP2 on two CPU processes against one process.

Two-stage (text→image + image→text LM) and end-to-end (plus the pixel L1 through the frozen VQGAN
decoder) train five steps (``ernie_vilg_distributed_run.py``); losses and final weights (the VQGAN's
included, built from a rank-dependent seed) must be one process's. Under FSDP2 the model and objectives
are sharded and the frozen VQGAN is broadcast and kept whole. Caption decoding in validation (gathered from
both processes) must give one process's captions and metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import distributed_run as run
import ernie_vilg_distributed_run as ev
import pytest
import torch
from two_process_launch import assert_same_run, two_process_results

# two 2-process launches and a one-process reference: about 2 minutes on this shared 2-core machine
pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.filterwarnings("ignore")]

SCRIPT = Path(__file__).with_name("ernie_vilg_distributed_run.py")
LOSS_TOL = {"rtol": 1e-5, "atol": 1e-5}
WEIGHT_TOL = {"rtol": 1e-4, "atol": 1e-4}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return two_process_results(SCRIPT, tmp_path_factory, "ernie", together=False)  # each uses both cores


@pytest.fixture(scope="module")
def single() -> dict[str, Any]:
    torch.set_num_threads(1)
    return ev.run_all(1, lambda: "auto")


@pytest.mark.parametrize("kind", ev.KINDS)
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_train_as_one(
    kind: str, strategy: str, results: dict[str, Any], single: dict[str, Any]
) -> None:
    result, reference = results[strategy][kind], single[kind]
    assert reference["losses"][-1] < reference["losses"][0]
    assert any(name.startswith("vqgan.") for name in reference["state"])
    assert_same_run(result, reference, run.STEPS, LOSS_TOL, WEIGHT_TOL)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_caption_validation_over_two_processes_is_one_process(strategy: str, results: dict[str, Any]) -> None:
    result = results[strategy]["two_stage"]
    task = ev.make_task("two_stage", seed=123)
    task.load_state_dict(result["state"])  # strict
    expected = run.validate_alone(task, run.RankRows([], ev.val_batches()))
    for name in ("val/bleu_4", "val/cider", "val/rouge_l", "val/t2i_loss", "val/i2t_loss"):
        assert result["metrics"][name] == pytest.approx(expected[name], abs=1e-5), name
    assert len(task.predictions) == ev.VAL_BATCHES * run.GLOBAL_BATCH
    assert result["predictions"] == task.predictions
