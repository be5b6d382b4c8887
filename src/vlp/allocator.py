"""Keep freed memory in the process: glibc malloc settings for CPU training.

By default glibc's ``malloc`` serves every block above a threshold (dynamic, at most 32 MiB) with its
own ``mmap`` and unmaps it when it is freed, and it hands the free top of its heap back to the kernel
(``M_TRIM_THRESHOLD``). A training step allocates and frees the same large buffers every step: weights
cast to bf16 under autocast, their gradients and the fp32 casts of those, the word-embedding gradient.
Each of them then starts on fresh pages, and the kernel faults in and zeroes every 4 KiB page on first
touch. In ``python -m vlp bench vilt`` (ViLT-B/32, batch 8, bf16, one thread) that was 28-164 thousand
page faults and 0.05-0.9 s of kernel time in a ~5 s step (either model, varying from step to step).

:func:`keep_freed_memory` sets ``M_MMAP_MAX = 0`` (every block comes from the heap) and the largest
``M_TRIM_THRESHOLD`` (the heap is not trimmed), so freed pages stay mapped and the next step reuses them
without a fault: what jemalloc or tcmalloc do, which PyTorch's CPU performance guide recommends. The
process's peak memory is unchanged, but its resident size no longer falls after a peak.

It is opt-in: ``VLP_KEEP_FREED_MEMORY=1 python -m vlp ...`` (:func:`configure_from_env`, called at
start-up). The page faults go (``benchmarks/diagnostics/vilt_step_page_faults.py``), but in ``bench vilt``
at 2 threads it did not make vlp's step faster: one run each way on the idle machine gave vlp 2455 ms
with it and 2381 ms without in bf16 (transformers 2754 and 2828 ms), within run-to-run spread
(``benchmarks/RESULTS.md``), so the default stays glibc's own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

ENV_VAR = "VLP_KEEP_FREED_MEMORY"

# mallopt(3) parameters, glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_LARGEST_INT = 2**31 - 1

_active = False


def is_active() -> bool:
    """Whether :func:`keep_freed_memory` has been applied in this process."""
    return _active


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory mapped (module docstring); False where it is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    global _active
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    no_mmap = libc.mallopt(M_MMAP_MAX, 0) == 1
    _active = libc.mallopt(M_TRIM_THRESHOLD, _LARGEST_INT) == 1 and no_mmap
    return _active


def configure_from_env() -> bool:
    """:func:`keep_freed_memory` if ``VLP_KEEP_FREED_MEMORY`` is ``1`` (default ``0``); whether it is now on."""
    value = os.environ.get(ENV_VAR, "0").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{ENV_VAR} must be 0 or 1, got {value!r}")
    return value == "1" and keep_freed_memory()
