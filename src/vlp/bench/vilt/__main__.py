"""``python -m vlp.bench.vilt --memory_worker ...``: the memory subprocess (:mod:`vlp.bench.vilt.memory`)."""

from __future__ import annotations

import sys

from vlp.bench.vilt.memory import worker_main

if __name__ == "__main__":
    worker_main(sys.argv[1:])
