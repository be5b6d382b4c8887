"""Whether a process another run or generator recorded is still running on this host."""

from __future__ import annotations

import os
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
