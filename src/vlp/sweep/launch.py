"""Starting runs: one stage (:func:`run_stage`), trials' chains of stages (:func:`run_chains`: a run that
several trials share runs once, and each trial goes on once it is done), and the two launchers that run
chains: a local queue of processes (:func:`launch_local`) and SLURM job arrays through submitit
(:func:`launch_submitit`: one task per trial, or per group of trials that share runs).

A stage runs ``python -m vlp fit <argv>`` (``predict`` for a predict stage) as a child process, its output
appended to ``<run>/fit.log``:

- with ``checkpoints/last.ckpt`` in the run folder, resumed from it (``--ckpt_path last``); with a SLURM
  auto-requeue checkpoint (``hpc_ckpt_N.ckpt``), left to Lightning, which resumes from it by itself;
- else, if an earlier attempt left files there, they are moved (never deleted) into ``attempt_<n>/`` and
  the run starts afresh. A predict stage always starts afresh (it has nothing to resume).

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
from vlp.sweep.status import STATUS_FILE, Status, now, read_status, run_time, write_status

LOG_FILE = "fit.log"
ATTEMPT_PREFIX = "attempt_"
KEPT = (STATUS_FILE,)


@dataclass(frozen=True)
class StageJob:
    """What a worker needs to run one stage: its label (``arm/seed_0/stage``), absolute folder, the
    options of its command, and the command (``fit`` or ``predict``)."""

    label: str
    run_dir: str
    argv: tuple[str, ...]
    command: str = "fit"


@dataclass(frozen=True)
class ChainJob:
    """A trial's stages, in order, and the environment its processes get (threads, GPU)."""

    trial: str
    stages: tuple[StageJob, ...]
    env: dict[str, str] = field(default_factory=dict)


def fit_command(argv: Sequence[str], command: str = "fit") -> list[str]:
    return [sys.executable, "-m", "vlp", command, *argv]


def resume_args(run_dir: Path, command: str = "fit") -> list[str]:
    """``--ckpt_path last`` when the run has a current checkpoint; nothing when SLURM's auto-requeue left
    one (Lightning resumes it) or there is none. A fresh start moves an earlier attempt's files aside, as
    every ``predict`` does."""
    if command != "fit":
        move_aside(run_dir)
        return []
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
    command = fit_command([*stage.argv, *resume_args(run_dir, stage.command)], stage.command)
    process = start_logged(command, run_dir / LOG_FILE, {**os.environ, **env})
    begin = time.monotonic()
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
    earlier = earlier_seconds(previous)
    status.run_seconds = None if earlier is None else earlier + time.monotonic() - begin
    status.state = "failed" if code != 0 else "done" if completed(run_dir) else "queued"
    write_status(run_dir, status)
    return status


def earlier_seconds(previous: Status) -> float | None:
    """The wall time of a run's earlier attempts (:func:`~vlp.sweep.status.run_time`); ``None`` when
    unknown."""
    return 0.0 if previous.attempts == 0 else run_time(previous)


class Chains:
    """The progress of trials' chains whose stages may be shared (one run folder in several chains): each
    run starts once, and a trial continues once its stage's run is done, whichever chain ran it."""

    def __init__(self, chains: Sequence[ChainJob]) -> None:
        self.chains = list(chains)
        self.position = {chain.trial: 0 for chain in self.chains}
        self.states: dict[str, list[str]] = {chain.trial: [] for chain in self.chains}
        self.ended: dict[str, str] = {}  # run folder -> the state its run here ended in
        self.running: set[str] = set()

    def waiting_on(self, chain: ChainJob) -> StageJob | None:
        """The trial's first stage that is not done (past done ones, recorded ``done``), or ``None`` once
        the chain has ended (all done, or a stage ended otherwise: its state recorded)."""
        states = self.states[chain.trial]
        while self.position[chain.trial] < len(chain.stages):
            stage = chain.stages[self.position[chain.trial]]
            state = self.ended.get(stage.run_dir)
            if state is None and stage.run_dir not in self.running:
                status = read_status(Path(stage.run_dir))
                state = "done" if status is not None and status.state == "done" else None
            if state is None:
                return stage
            states.append(state)
            self.position[chain.trial] = (
                len(chain.stages) if state != "done" else self.position[chain.trial] + 1
            )
        return None

    def next_run(self) -> tuple[ChainJob, StageJob] | None:
        """The first stage (trials in order) that waits to start, not running for another trial."""
        for chain in self.chains:
            stage = self.waiting_on(chain)
            if stage is not None and stage.run_dir not in self.running:
                return chain, stage
        return None

    def start(self, stage: StageJob) -> None:
        self.running.add(stage.run_dir)

    def end(self, stage: StageJob, state: str) -> None:
        self.running.discard(stage.run_dir)
        self.ended[stage.run_dir] = state

    def results(self) -> dict[str, list[str]]:
        """``{trial: the states of its stages reached}``: ``done`` for each done one, then the state of
        the first that is not (none when it never started)."""
        for chain in self.chains:
            self.waiting_on(chain)
        return {chain.trial: self.states[chain.trial] for chain in self.chains}


def run_chains(
    chains: Sequence[ChainJob],
    slots: Sequence[dict[str, str]],
    job_id: str | None = None,
    report: Callable[[str], None] = print,
    started: Callable[[subprocess.Popen[bytes]], None] | None = None,
    stop: threading.Event | None = None,
) -> dict[str, list[str]]:
    """Run the trials' stages in order, ``len(slots)`` processes at a time (each with its slot's
    environment added to its chain's); a run that several chains hold runs once, and each chain stops at
    its first stage that does not end ``done``. Once ``stop`` is set no further run starts. ``{trial: the
    states of its stages reached}``."""
    progress = Chains(chains)
    changed = threading.Condition()

    def claim() -> tuple[ChainJob, StageJob] | None:
        with changed:
            while stop is None or not stop.is_set():
                found = progress.next_run()
                if found is not None:
                    progress.start(found[1])
                    return found
                if not progress.running:
                    return None
                changed.wait()
            return None

    def work(slot: dict[str, str]) -> None:
        while (found := claim()) is not None:
            chain, stage = found
            state = "failed"
            try:
                report(f"start  {stage.label}")
                begin = time.monotonic()
                status = run_stage(stage, {**chain.env, **slot}, job_id, started)
                state = status.state
                elapsed = time.monotonic() - begin
                report(
                    f"{status.state:<6s} {stage.label} (exit {status.exit_code}, {elapsed:.0f} s, attempt {status.attempts})"
                )
            finally:
                with changed:
                    progress.end(stage, state)
                    changed.notify_all()

    with ThreadPoolExecutor(max_workers=len(slots)) as pool:  # the caller's thread stays free for signals
        list(pool.map(work, slots))
    return progress.results()


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

    handlers = on_stop_signals(stop_runs)
    try:
        return run_chains(chains, slots, report=report, started=started, stop=stop)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def on_stop_signals(handler: Callable[[int, FrameType | None], None]) -> dict[int, Any]:
    """Install ``handler`` for SIGTERM and SIGINT (main thread only); the handlers it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGINT)}


# ---------------------------------------------------------------------------------------------- submitit


def _log_signal(signum: int, frame: FrameType | None) -> None:
    print(f"vlp sweep: signal {signal.Signals(signum).name} (Lightning's auto-requeue handles it in the run)")


def submitit_group(chains: tuple[ChainJob, ...]) -> dict[str, list[str]]:
    """A submitit job: the chains of trials that share runs, one run at a time (each shared run once).
    SIGUSR1 (SLURM's warning before the time limit) is Lightning's to handle in the run's process; this
    process only logs it instead of dying of it."""
    import submitit

    signal.signal(signal.SIGUSR1, _log_signal)
    return run_chains(chains, [{}], job_id=str(submitit.JobEnvironment().job_id))


def sharing_groups(chains: Sequence[ChainJob]) -> list[tuple[ChainJob, ...]]:
    """``chains`` grouped so that chains holding a common run folder are in one group (transitively),
    in the order of their first chain, each group's chains in order."""
    group_of: dict[str, int] = {}  # run folder -> group
    members: list[list[ChainJob]] = []
    for chain in chains:
        joined = sorted({group_of[s.run_dir] for s in chain.stages if s.run_dir in group_of})
        if not joined:
            members.append([])
            joined = [len(members) - 1]
        target = joined[0]
        for other in joined[1:]:
            members[target] += members[other]
            members[other] = []
        members[target].append(chain)
        for member in members[target]:
            for stage in member.stages:
                group_of[stage.run_dir] = target
    order = {chain.trial: index for index, chain in enumerate(chains)}
    groups = [sorted(group, key=lambda c: order[c.trial]) for group in members if group]
    return [tuple(group) for group in sorted(groups, key=lambda g: order[g[0].trial])]


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
    """Submit ``chains`` as one job array, a task per group of trials that share runs (a trial alone
    without); ``queued(chain, job_id)`` records each submission. With ``wait`` (default for ``cluster:
    local``), block until every job ends: ``{trial: stage states}``."""
    executor = make_executor(launcher, folder)
    env = submitit_env(launcher)
    groups = sharing_groups([ChainJob(c.trial, c.stages, {**c.env, **env}) for c in chains])
    jobs = executor.map_array(submitit_group, groups)
    for group, job in zip(groups, jobs):
        for chain in group:
            queued(chain, str(job.job_id))
    report(
        f"{launcher.cluster}: submitted {len(chains)} trials as {len(jobs)} jobs {', '.join(str(j.job_id) for j in jobs)}"
    )
    wait = launcher.wait if launcher.wait is not None else launcher.cluster == "local"
    if not wait:
        return None
    results: dict[str, list[str]] = {}
    for group, job in zip(groups, jobs):
        try:
            results.update(job.result())
        except Exception as error:  # a job that died: its stages' status says where it stopped
            trials = ", ".join(chain.trial for chain in group)
            report(f"job {job.job_id} ({trials}) ended without a result: {str(error).splitlines()[0]}")
            results.update({chain.trial: ["failed"] for chain in group})
    return results
