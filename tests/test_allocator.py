"""vlp.allocator: with glibc's malloc told to keep freed memory, a re-allocated buffer costs no page faults."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from vlp.allocator import ENV_VAR, configure_from_env

# A child process, so this test process's malloc is left alone. It allocates a 9 MiB tensor (a [3072, 768]
# fp32 weight) and frees it, reading glibc's mallinfo2 while it is held and after: whether malloc served it
# from a mapping of its own (unmapped on free) or from the heap, and whether the heap keeps it after the free.
# Page-fault counts, which these settings exist to cut, depend on the heap's layout and the kernel:
# benchmarks/diagnostics/vilt_step_page_faults.py measures them.
CHILD = """
import ctypes, json, torch
from vlp.allocator import configure_from_env
active = configure_from_env()

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
before = libc.mallinfo2()
held = torch.empty(2359296).fill_(1.0)
during = libc.mallinfo2()
del held
after = libc.mallinfo2()
print(json.dumps({
    "active": active,
    "mmapped": during.hblkhd - before.hblkhd,  # bytes malloc mapped for it on its own
    "heap_trimmed": during.arena - after.arena,  # bytes the heap gave back when it was freed
}))
"""

LIBC, LIBC_VERSION = platform.libc_ver()
glibc_only = pytest.mark.skipif(
    platform.system() != "Linux"
    or LIBC != "glibc"
    or tuple(int(p) for p in LIBC_VERSION.split(".")[:2]) < (2, 33),  # mallinfo2
    reason="glibc (2.33 or newer) malloc settings",
)


def _child(setting: str | None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(ENV_VAR, None)
    if setting is not None:
        env[ENV_VAR] = setting
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc_only
def test_kept_memory_stays_in_the_heap_after_it_is_freed() -> None:
    kept = _child("1")
    assert kept["active"]
    assert kept["mmapped"] == 0  # M_MMAP_MAX 0: the block comes from the heap, not a mapping of its own
    assert kept["heap_trimmed"] == 0  # no trim: its pages stay mapped for the next step to reuse
    assert not _child("0")["active"]  # glibc's own behaviour (its thresholds are dynamic) is not asserted


def test_it_is_off_unless_asked_for() -> None:
    assert not _child(None)["active"]


def test_bad_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "yes")
    with pytest.raises(ValueError, match=ENV_VAR):
        configure_from_env()
