"""Scheduling as pure code: what a batch is, who holds which, what a loss means.

No processes, queues, clocks or database here: the coordinator drives a
``BatchBook`` and the tests drive it with fake executors.

Policy. Sending starts while the walk goes on: the dispatcher takes the
inventory's pending files in path order (so a directory, usually a series
of one study, travels together) in batches of at most ``BATCH_FILES``
files and ``BATCH_BYTES`` bytes. Executors *pull*: whichever is free takes
the next batch, so a slow one never holds work the others could do, and
small batches keep the tail of a run short. A batch whose executor dies is
handed to another once, with only the files that have no outcome yet; a
second loss fails them with the reason. Every file is in exactly one batch
at a time.
"""

from __future__ import annotations

from typing import Final

import msgspec
from msgspec import field
from msgspec.structs import replace

from ..io.header import FileInfo
from .inventory import Pending

# Files per batch at most: enough to keep a worker busy between two requests
# (a request costs a pipe round trip and one SQL transaction), few enough
# that the last batches of a run finish together.
BATCH_FILES: Final = 256
# Files per batch at least, while there are that many: below it, the cost
# of a request is felt.
MIN_BATCH_FILES: Final = 8
# Bytes per batch at most (a larger file travels alone): about 0.1 s of
# sending on one core here, so the tail of a run with large files is short.
BATCH_BYTES: Final = 64 * 1024 * 1024


def batch_files(pending: int, executors: int) -> int:
    """How many files the next batch takes: an even share of what is pending.

    So a small run still spreads over every executor, and a large one gets
    full batches. ``pending`` counts what the walk has found so far.
    """
    share = -(-pending // max(1, executors))  # ceiling
    return max(MIN_BATCH_FILES, min(BATCH_FILES, share))


class Batch(msgspec.Struct, frozen=True):
    """A unit of work: files in send order.

    ``files`` are usually Pending (the executor reads their headers just
    before sending, so the data then comes from the page cache); with
    --cluster they are FileInfos the coordinator read (see cluster.py).
    """

    batch_id: int
    files: tuple[Pending | FileInfo, ...]
    attempt: int = 1  # 2: files handed back by an executor that died

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


class _Held(msgspec.Struct):
    batch: Batch
    reported: set[str] = field(default_factory=set)
    by_path: dict[str, Pending | FileInfo] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_path = {f.path: f for f in self.batch.files}


class BatchBook(msgspec.Struct):
    """Which executor holds which batches, and which of their files have an outcome.

    An executor may hold more than one batch: a local worker asks for its
    next batch while it sends the current one, so it never waits for the
    coordinator between two (engine/worker.py). It works through them in
    the order they were assigned.
    """

    held: dict[int, list[_Held]] = field(default_factory=dict)
    retries: list[Batch] = field(default_factory=list)  # handed back, to go out first

    def assign(self, executor: int, batch: Batch) -> None:
        self.held.setdefault(executor, []).append(_Held(batch))

    def next_retry(self) -> Batch | None:
        return self.retries.pop(0) if self.retries else None

    def file_done(self, executor: int, path: str) -> Pending | FileInfo | None:
        """Note a file's outcome; the batch's entry for it (size, mtime), if it is there."""
        for held in self.held.get(executor, ()):
            item = held.by_path.get(path)
            if item is not None:
                held.reported.add(path)
                return item
        return None

    def batch_done(self, executor: int) -> Batch | None:
        """The executor finished the oldest batch it holds."""
        holding = self.held.get(executor)
        if not holding:
            return None
        held = holding.pop(0)
        if not holding:
            del self.held[executor]
        return held.batch

    def release(self, executor: int) -> None:
        """The executor ended: it holds nothing any more (see unfinished first)."""
        self.held.pop(executor, None)

    def unfinished(self, executor: int) -> tuple[Pending | FileInfo, ...]:
        """The files of the executor's batches that have no outcome."""
        return tuple(
            f
            for held in self.held.get(executor, ())
            for f in held.batch.files
            if f.path not in held.reported
        )

    def executor_lost(
        self, executor: int, may_retry: bool = True
    ) -> tuple[Batch | None, tuple[Pending | FileInfo, ...]]:
        """(batch handed to another executor, files given up) for a lost executor.

        The unfinished files go out once more as a new attempt; files that
        were already on their second attempt, or that may not be retried (the
        backend retried them itself), are given up.
        """
        retried: list[Pending | FileInfo] = []
        given_up: list[Pending | FileInfo] = []
        first: Batch | None = None
        for held in self.held.pop(executor, ()):
            left = [f for f in held.batch.files if f.path not in held.reported]
            if held.batch.attempt > 1 or not may_retry:
                given_up.extend(left)
            else:
                retried.extend(left)
                first = first or held.batch
        if not retried or first is None:
            return None, tuple(given_up)
        retry = replace(first, files=tuple(retried), attempt=first.attempt + 1)
        self.retries.append(retry)
        return retry, tuple(given_up)

    def drop_retries(self) -> tuple[Pending | FileInfo, ...]:
        """On a stop: the handed-back files that will not be sent."""
        dropped = tuple(f for b in self.retries for f in b.files)
        self.retries.clear()
        return dropped

    @property
    def outstanding(self) -> int:
        """Files handed out and not reported yet."""
        return sum(
            len(held.batch.files) - len(held.reported)
            for holding in self.held.values()
            for held in holding
        )

    @property
    def busy(self) -> bool:
        return bool(self.held) or bool(self.retries)
