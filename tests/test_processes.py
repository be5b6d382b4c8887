"""pid_alive: a running process is alive, an exited one is not (reaped or not), and a marker must match."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from vlp.processes import pid_alive


def test_this_process_is_alive_and_the_marker_is_checked() -> None:
    assert pid_alive(os.getpid())
    assert pid_alive(os.getpid(), "python")
    assert not pid_alive(os.getpid(), "a marker no command line holds 7f3a")


def test_an_exited_child_is_gone_before_and_after_it_is_reaped() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    for _ in range(200):  # until it has exited (a zombie: not reaped yet)
        if not pid_alive(child.pid):
            break
        time.sleep(0.05)
    assert not pid_alive(child.pid)
    child.wait()
    assert not pid_alive(child.pid)
