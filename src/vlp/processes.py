"""Whether a process another run or generator recorded is still running on this host, and the fork server
that worker processes start from."""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.context import BaseContext
from pathlib import Path


def pid_alive(pid: int, marker: str = "") -> bool:
    """Process ``pid`` on this host exists, has not exited (an exited process not yet reaped counts as
    gone) and, where /proc tells, its command line holds ``marker`` (e.g. a run folder: a reused pid runs
    something else; ``""`` accepts any)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    try:
        if proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False  # exited, not yet reaped (an orphan in a container whose init does not reap)
        text = proc.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return proc.parent.joinpath("self").exists() is False  # no /proc here: the pid exists
    except OSError:
        return False
    return not text or marker in text  # empty for a moment while a process starts: counted as alive


WORKER_PRELOAD = ["__main__", "vlp.datamodules.shards"]
"""Modules the fork server imports once (its default, the main module, and the loader's parts, which
import torch and Lightning), so each worker forks with them loaded instead of importing them anew."""


def worker_context() -> BaseContext | None:
    """``forkserver`` where the platform has it (Linux, macOS), else the platform's default (``spawn``):
    workers that do not inherit the memory of the process that starts them (the loaders' module
    docstring says why). Every worker pool of vlp uses it: a process has one fork server, and its first
    user decides what the server preloads, so a pool started without :data:`WORKER_PRELOAD` would have
    every later loader worker import torch anew."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_PRELOAD)  # no effect once this process's server runs
    return context
