"""The DataLoader that runs a :class:`~vlp.datamodules.stream.ShardStream`, knows where it is and
resumes there.

Each batch carries its ``position = (epoch, worker, index)``. :class:`StreamLoader` records the
position of every batch the training loop actually consumed (Lightning prefetches one ahead, so the
loader's own iterator count would be wrong), saves it through Lightning's stateful-loader hooks and,
on resume, has each worker read past its consumed samples in the tar files *before decoding* and
rotates the workers so that the DataLoader's round-robin continues with the worker that was next.

Evaluation loaders (``repeat``) read epoch 0 on every pass: the same batches every time, in every run
with that seed, and after a resume.

Workers start from a fork server (:func:`vlp.processes.worker_context`), not as forks of the training
process. The loaders start new workers at every epoch and every validation; a fork of the training
process would share its whole heap (gigabytes, after some steps) copy-on-write, and as training keeps
rewriting those pages, each live worker ends up holding a private copy of all of it. Two ERNIE-ViLG trainings side by
side on 24 GiB ran out of memory that way after 55 minutes. A fork server's worker is not the training
process's child, so PyTorch's own check (is my parent alive?) cannot see that process die when it is
killed outright (SIGKILL, the out-of-memory killer); :func:`exit_with` makes each worker watch it.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from vlp.batch import Batch
from vlp.datamodules.stream import ShardStream
from vlp.processes import pid_alive, worker_context

log = logging.getLogger(__name__)


WATCH_INTERVAL_S = 2.0


def exit_with(training_pid: int, worker_id: int = 0) -> None:
    """A loader worker's init: a daemon thread that ends the worker once the training process (by pid)
    is gone, checked every :data:`WATCH_INTERVAL_S` seconds (module docstring)."""

    def watch() -> None:
        while pid_alive(training_pid):
            time.sleep(WATCH_INTERVAL_S)
        os._exit(0)

    threading.Thread(target=watch, name="vlp-training-watch", daemon=True).start()


class StreamLoader(DataLoader):
    """A DataLoader over a :class:`ShardStream` that knows where it is and can resume there.

    Every ``iter()`` starts the next epoch, unless a state was just loaded: then it continues that
    epoch after the consumed batches, or, when the saved epoch had run out (Lightning's prefetch saw
    its end before the checkpoint, so Lightning too resumes in the next epoch), starts the next one.
    With ``equalise_ranks`` (several ranks, no resampling) each epoch is cut to the batches the
    smallest rank has, so that no rank waits forever in a collective; the samples left out are logged.
    :meth:`consumed` must be told about each batch the training loop used;
    :class:`~vlp.datamodules.shards.ShardDataModule` does it in ``on_before_batch_transfer``.
    With ``repeat`` (evaluation) every ``iter()`` reads epoch 0 from its start, and a loaded state is
    ignored: every pass yields the same batches.
    """

    def __init__(
        self, dataset: ShardStream, num_workers: int = 0, equalise_ranks: bool = False, repeat: bool = False
    ) -> None:
        super().__init__(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            persistent_workers=False,
            pin_memory=False,
            multiprocessing_context=worker_context() if num_workers > 0 else None,
            worker_init_fn=functools.partial(exit_with, os.getpid()) if num_workers > 0 else None,
            # DataLoader draws its workers' base seed at every iter(); a private generator keeps that
            # draw off the global RNG, which a resumed run restores and must then see untouched.
            generator=torch.Generator().manual_seed(0),
        )
        self.stream = dataset
        self.equalise_ranks = equalise_ranks
        self.repeat = repeat
        self.epoch = -1
        self._consumed: dict[int, int] = {}
        self._next_worker = 0
        self._finished = False
        self._resume: dict[str, Any] | None = None
        self._warned: set[int] = set()  # epochs whose left-out batches were logged

    @property
    def _workers(self) -> int:
        return max(1, self.num_workers)

    def __len__(self) -> int:
        raise TypeError("a StreamLoader has no length")  # makes Lightning treat it as an iterable

    def __iter__(self) -> Iterator[Batch]:
        state, self._resume = self._resume, None
        if self.repeat:
            self.epoch = 0
            self._consumed = {}
            self._next_worker = 0
        elif state is not None and not state.get("finished", False):
            self.epoch = int(state["epoch"])
            self._consumed = {int(k): int(v) for k, v in state["consumed"].items()}
            self._next_worker = int(state["next_worker"])
        else:
            self.epoch = self.epoch + 1 if state is None else int(state["epoch"]) + 1
            self._consumed = {}
            self._next_worker = 0
        self._finished = False
        self.stream.epoch = self.epoch
        self.stream.skip_batches = dict(self._consumed)
        self.stream.rotation = self._next_worker
        already = sum(self._consumed.values())
        iterator = super().__iter__()
        if not self.equalise_ranks:
            return self._until_exhausted(iterator)
        common = self.stream.common_batches(self.epoch, self._workers)
        own = self.stream.rank_batches(self.epoch, self.stream.rank, self._workers)
        if own > common and not already and self.epoch not in self._warned:
            self._warned.add(self.epoch)
            log.warning(
                "vlp: epoch %d: rank %d has %d batches, the smallest rank %d; the last %d are left out so "
                "that every rank runs the same number of steps (balance the shards to avoid this)",
                self.epoch,
                self.stream.rank,
                own,
                common,
                own - common,
            )
        return self._until_exhausted(_take(iterator, max(0, common - already)))

    def _until_exhausted(self, iterator: Iterator[Batch]) -> Iterator[Batch]:
        """Yield the epoch's batches, then note that it ran out (the state saves it)."""
        yield from iterator
        self._finished = True

    def consumed(self, batch: Batch) -> None:
        """Record that the training loop used ``batch`` (from the current epoch)."""
        if batch.position is None:
            return
        epoch, worker, index = batch.position
        if epoch != self.epoch:
            return
        self._consumed[worker] = max(self._consumed.get(worker, 0), index + 1)
        self._next_worker = (worker + 1) % self._workers

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "consumed": dict(self._consumed),
            "next_worker": self._next_worker,
            "num_workers": self._workers,
            "finished": self._finished,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.repeat:
            return
        if int(state["num_workers"]) != self._workers:
            raise ValueError(
                f"the checkpoint's data position was saved with {state['num_workers']} loader worker(s) per "
                f"rank, this run reads the split with {self._workers}: resume with "
                f"data.num_workers={state['num_workers']} (and the same shards and number of processes)"
            )
        self._resume = dict(state)


def _take(iterator: Iterator[Batch], count: int) -> Iterator[Batch]:
    for _ in range(count):
        batch = next(iterator, None)
        if batch is None:
            return
        yield batch
