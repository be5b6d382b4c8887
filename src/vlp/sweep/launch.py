"""Starting runs: one stage (:func:`run_stage`), one trial's chain of stages (:func:`run_chain`), and the two
launchers that run chains: a local queue of processes (:func:`launch_local`) and SLURM job arrays through
submitit (:func:`launch_submitit`).

A stage runs ``python -m vlp fit <argv>`` as a child process, its output appended to ``<run>/fit.log``:

- with ``checkpoints/last.ckpt`` in the run folder, resumed from it (``--ckpt_path last``); with a SLURM
  auto-requeue checkpoint (``hpc_ckpt_N.ckpt``), left to Lightning, which resumes from it by itself;
- else, if an earlier attempt left files there, they are moved (never deleted) into ``attempt_<n>/`` and
  the run starts afresh.

Its ``status.json`` says ``running`` while it runs, then ``done`` (exit status 0 and ``metrics.json``
``complete``), ``queued`` (exit status 0 before the end: a stop request saved ``last.ckpt``) or ``failed``.
A chain stops at its first stage that is not done.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from vlp.runs import last_checkpoint
from vlp.sweep.callback import read_metrics
from vlp.sweep.spec import Launcher
from vlp.sweep.status import STATUS_FILE, Status, now, read_status, write_status

LOG_FILE = "fit.log"
ATTEMPT_PREFIX = "attempt_"
KEPT = (STATUS_FILE,)


@dataclass(frozen=True)
class StageJob:
    """What a worker needs to run one stage: its label (``arm/seed_0/stage``), absolute folder and the
    options of ``fit``."""

    label: str
    run_dir: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class ChainJob:
    """A trial's stages, in order, and the environment its processes get (threads, GPU)."""

    trial: str
    stages: tuple[StageJob, ...]
    env: dict[str, str] = field(default_factory=dict)


def fit_command(argv: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "vlp", "fit", *argv]


def resume_args(run_dir: Path) -> list[str]:
    """``--ckpt_path last`` when the run has a current checkpoint; nothing when SLURM's auto-requeue left
    one (Lightning resumes it) or there is none. A fresh start moves an earlier attempt's files aside."""
    if any(run_dir.glob("hpc_ckpt_*.ckpt")):
        return []
    if last_checkpoint(run_dir) is not None:
        return ["--ckpt_path", "last"]
    move_aside(run_dir)
    return []


def move_aside(run_dir: Path) -> Path | None:
    """Move what an earlier attempt left in ``run_dir`` (all but ``status.json`` and older attempts) into
    ``run_dir/attempt_<n>/``; the folder it made, or ``None`` when there was nothing."""
    left = [p for p in run_dir.iterdir() if p.name not in KEPT and not p.name.startswith(ATTEMPT_PREFIX)]
    if not left:
        return None
    n = 1 + sum(1 for p in run_dir.iterdir() if p.name.startswith(ATTEMPT_PREFIX))
    target = run_dir / f"{ATTEMPT_PREFIX}{n}"
    target.mkdir()
    for path in left:
        path.rename(target / path.name)
    return target


def completed(run_dir: Path) -> bool:
    record = read_metrics(run_dir)
    return record is not None and bool(record.get("complete"))


def start_logged(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``command`` with its output appended to ``log``, after a line naming the command."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as stream:
        stream.write(f"\n$ {' '.join(command)}\n".encode())
        stream.flush()
        return subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=env)


def run_stage(
    stage: StageJob,
    env: dict[str, str],
    job_id: str | None = None,
    started: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> Status:
    """Run one stage to its end; its final status. ``started`` is called with the child process."""
    run_dir = Path(stage.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = read_status(run_dir) or Status()
    command = fit_command([*stage.argv, *resume_args(run_dir)])
    process = start_logged(command, run_dir / LOG_FILE, {**os.environ, **env})
    status = Status(
        state="running",
        job_id=job_id,
        host=socket.gethostname(),
        pid=process.pid,
        started=now(),
        attempts=previous.attempts + 1,
    )
    write_status(run_dir, status)
    if started is not None:
        started(process)
    code = process.wait()
    status.exit_code = code
    status.finished = now()
    status.state = "failed" if code != 0 else "done" if completed(run_dir) else "queued"
    write_status(run_dir, status)
    return status


def run_chain(
    chain: ChainJob,
    job_id: str | None = None,
    report: Callable[[str], None] = print,
    started: Callable[[subprocess.Popen[bytes]], None] | None = None,
    stop: threading.Event | None = None,
) -> list[str]:
    """Run a trial's stages in order (done ones skipped); the final state of each stage reached. Once
    ``stop`` is set no further stage starts."""
    states = []
    for stage in chain.stages:
        status = read_status(Path(stage.run_dir))
        if status is not None and status.state == "done":
            states.append("done")
            continue
        if stop is not None and stop.is_set():
            break
        report(f"start  {stage.label}")
        begin = time.monotonic()
        status = run_stage(stage, chain.env, job_id, started)
        elapsed = time.monotonic() - begin
        report(
            f"{status.state:<6s} {stage.label} (exit {status.exit_code}, {elapsed:.0f} s, attempt {status.attempts})"
        )
        states.append(status.state)
        if status.state != "done":
            break
    return states


# ------------------------------------------------------------------------------------------------ local


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def local_slots(launcher: Launcher, parallel: int | None) -> list[dict[str, str]]:
    """One environment per concurrent process: its own GPU on a GPU machine (``CUDA_VISIBLE_DEVICES``),
    else its share of the CPU cores as torch / OpenMP threads."""
    gpus = gpu_count()
    count = parallel or launcher.parallel or max(gpus, 1)
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": str(slot % gpus)} for slot in range(count)]
    threads = launcher.threads or max(1, cpu_count() // count)
    return [{"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} for _ in range(count)]


def launch_local(
    chains: Sequence[ChainJob],
    launcher: Launcher,
    parallel: int | None = None,
    report: Callable[[str], None] = print,
) -> dict[str, list[str]]:
    """Run ``chains`` on a queue of concurrent processes; ``{trial: stage states}`` once all ended.

    SIGTERM or SIGINT to the sweep stops it cleanly: its running fits get SIGTERM (each saves
    ``last.ckpt`` and exits, recorded ``queued``), no further run starts, and the sweep returns once they
    have ended; the same command resumes them."""
    slots = local_slots(launcher, parallel)
    free = list(range(len(slots)))
    lock = threading.Lock()
    stop = threading.Event()
    children: list[subprocess.Popen[bytes]] = []
    report(
        f"local: {len(chains)} trials, {len(slots)} at a time ({', '.join(f'{k}={v}' for k, v in slots[0].items())})"
    )

    def started(process: subprocess.Popen[bytes]) -> None:
        with lock:
            children.append(process)
        if stop.is_set():  # started as the stop came
            process.send_signal(signal.SIGTERM)

    def stop_runs(signum: int, frame: FrameType | None) -> None:
        report(f"stop   signal {signum}: the running fits save and stop; re-run the sweep to resume")
        stop.set()
        with lock:
            running = [p for p in children if p.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)

    def work(chain: ChainJob) -> list[str]:
        if stop.is_set():
            return []
        with lock:
            slot = free.pop(0)
        try:
            job = ChainJob(chain.trial, chain.stages, {**chain.env, **slots[slot]})
            return run_chain(job, report=report, started=started, stop=stop)
        finally:
            with lock:
                free.append(slot)

    handlers = on_stop_signals(stop_runs)
    try:
        with ThreadPoolExecutor(max_workers=len(slots)) as pool:
            results = list(pool.map(work, chains))
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    return {chain.trial: states for chain, states in zip(chains, results)}


def on_stop_signals(handler: Callable[[int, FrameType | None], None]) -> dict[int, Any]:
    """Install ``handler`` for SIGTERM and SIGINT (main thread only); the handlers it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGINT)}


# ---------------------------------------------------------------------------------------------- submitit


def _log_signal(signum: int, frame: FrameType | None) -> None:
    print(f"vlp sweep: signal {signal.Signals(signum).name} (Lightning's auto-requeue handles it in the run)")


def submitit_chain(chain: ChainJob) -> list[str]:
    """A submitit job: the trial's chain. SIGUSR1 (SLURM's warning before the time limit) is Lightning's
    to handle in the run's process; this process only logs it instead of dying of it."""
    import submitit

    signal.signal(signal.SIGUSR1, _log_signal)
    return run_chain(chain, job_id=str(submitit.JobEnvironment().job_id))


def make_executor(launcher: Launcher, folder: Path) -> Any:
    """submitit's executor for ``launcher``: its parameters, and SLURM's warning signal as SIGUSR1 (what
    Lightning's auto-requeue listens to) instead of submitit's USR2, so one side handles preemption."""
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster=launcher.cluster)
    parameters: dict[str, Any] = {
        "name": "vlp_sweep",
        "timeout_min": launcher.time_min,
        "cpus_per_task": launcher.cpus_per_task,
        "mem_gb": launcher.mem_gb,
        "slurm_partition": launcher.partition,
        "slurm_array_parallelism": launcher.array_parallelism,
        "slurm_signal_delay_s": launcher.signal_delay_s,
        "slurm_setup": launcher.setup or None,
        "slurm_additional_parameters": {
            "signal": f"USR1@{launcher.signal_delay_s}",
            **launcher.additional_parameters,
        },
    }
    if launcher.gpus_per_task:
        parameters["slurm_gpus_per_task"] = launcher.gpus_per_task
        parameters["gpus_per_node"] = launcher.gpus_per_task
    executor.update_parameters(**{key: value for key, value in parameters.items() if value is not None})
    return executor


def submitit_env(launcher: Launcher) -> dict[str, str]:
    """Threads per run: the task's CPUs (``cpus_per_task``), or ``threads``; nothing set otherwise."""
    threads = launcher.threads or launcher.cpus_per_task
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}


def launch_submitit(
    chains: Sequence[ChainJob],
    launcher: Launcher,
    folder: Path,
    queued: Callable[[ChainJob, str], None],
    report: Callable[[str], None] = print,
) -> dict[str, list[str]] | None:
    """Submit ``chains`` as one job array; ``queued(chain, job_id)`` records each submission. With
    ``wait`` (default for ``cluster: local``), block until every job ends: ``{trial: stage states}``."""
    executor = make_executor(launcher, folder)
    env = submitit_env(launcher)
    chains = [ChainJob(c.trial, c.stages, {**c.env, **env}) for c in chains]
    jobs = executor.map_array(submitit_chain, chains)
    for chain, job in zip(chains, jobs):
        queued(chain, str(job.job_id))
    report(
        f"{launcher.cluster}: submitted {len(jobs)} trials as jobs {', '.join(str(j.job_id) for j in jobs)}"
    )
    wait = launcher.wait if launcher.wait is not None else launcher.cluster == "local"
    if not wait:
        return None
    results = {}
    for chain, job in zip(chains, jobs):
        try:
            results[chain.trial] = job.result()
        except Exception as error:  # a job that died: its stages' status says where it stopped
            report(f"job {job.job_id} ({chain.trial}) ended without a result: {str(error).splitlines()[0]}")
            results[chain.trial] = ["failed"]
    return results
