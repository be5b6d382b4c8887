"""``status.json`` of a run folder, and what to do with a run on the next ``sweep run``.

::

    {"state": "queued" | "running" | "done" | "failed", "exit_code": int | null, "job_id": str | null,
     "host": str | null, "pid": int | null, "started": ISO-8601 | null, "finished": ISO-8601 | null,
     "attempts": int, "run_seconds": float | null}

``started`` and ``finished`` are the last attempt's; ``run_seconds`` sums every attempt's wall time (null
when an attempt was not timed).

``queued``: waiting to start, or stopped cleanly before its end (a stop request or preemption: it saved
``last.ckpt`` and exited with status 0); ``running``: its process (``pid`` on ``host``, or SLURM job
``job_id``) runs it; ``done``: training reached its end; ``failed``: the process exited with an error.
A ``running`` (or queued, with a job) run whose process or job is gone is *dead*: the next ``sweep run``
restarts it, from its ``checkpoints/last.ckpt`` when there is one.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from vlp.processes import pid_alive
from vlp.sweep.callback import write_json

STATUS_FILE = "status.json"
State = Literal["queued", "running", "done", "failed"]
FINISHED_JOB_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                       "PREEMPTED", "BOOT_FAIL", "DEADLINE", "FINISHED", "INTERRUPTED")  # fmt: skip


@dataclass
class Status:
    state: State = "queued"
    exit_code: int | None = None
    job_id: str | None = None
    host: str | None = None
    pid: int | None = None
    started: str | None = None
    finished: str | None = None
    attempts: int = 0
    run_seconds: float | None = None


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def read_status(run_dir: Path) -> Status | None:
    path = run_dir / STATUS_FILE
    if not path.is_file():
        return None
    return status_from(json.loads(path.read_text()))


def status_from(data: dict[str, Any]) -> Status:
    """A :class:`Status` from ``status.json``'s object (keys it does not know are left out)."""
    return Status(**{key: data.get(key) for key in Status.__dataclass_fields__ if key in data})


def run_time(status: Status) -> float | None:
    """The wall time of the run's attempts in seconds: ``run_seconds``; for the one attempt of a status
    written before ``run_seconds`` was, its ``started`` to ``finished``; ``None`` when unknown."""
    if isinstance(status.run_seconds, (int, float)):
        return float(status.run_seconds)
    started, finished = status.started, status.finished
    if status.attempts != 1 or not isinstance(started, str) or not isinstance(finished, str):
        return None
    try:
        return (dt.datetime.fromisoformat(finished) - dt.datetime.fromisoformat(started)).total_seconds()
    except ValueError:
        return None


def write_status(run_dir: Path, status: Status) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / STATUS_FILE, asdict(status))


def job_finished(job_id: str, folder: Path) -> bool:
    """A SLURM job that SLURM reports finished, or no longer knows."""
    import submitit

    state = submitit.SlurmJob(folder=folder, job_id=job_id).state.upper()
    return state.split()[0] in FINISHED_JOB_STATES or state == "UNKNOWN"


def is_dead(status: Status, run_dir: Path, cluster: str | None, job_folder: Path) -> bool:
    """A run marked running (or queued under a job) whose process or job no longer exists.

    ``cluster``: ``None`` for the local launcher, else submitit's (``slurm`` or ``local``). A run's own
    process on this host is looked up by its pid; a job not yet started by its id (a SLURM job through
    SLURM, a local job by its process). A run on another host without a SLURM job cannot be looked up and
    counts as alive.
    """
    if status.state not in ("running", "queued"):
        return False
    if status.state == "running" and status.host == socket.gethostname() and status.pid is not None:
        return not pid_alive(status.pid, str(run_dir.resolve()))
    if status.job_id is not None and cluster == "slurm":
        return job_finished(status.job_id, job_folder)
    if status.job_id is not None and cluster == "local" and status.job_id.isdigit():
        return not pid_alive(int(status.job_id), str(job_folder.resolve()))
    return status.state == "running" and status.host == socket.gethostname()
