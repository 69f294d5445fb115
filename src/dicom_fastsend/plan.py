"""Scheduling as pure code: group by study, cut batches, hand them out.

No processes, queues or clocks here; the coordinator drives a ``Dispatcher``
and the tests drive it with fake workers.

Policy: studies go out largest first (longest-processing-time first, the
classic greedy for balancing), and workers *pull* the next batch when they
finish one, so the least loaded worker always takes the next piece. A study
larger than one worker's fair share of the archive is cut into several
batches so one huge study cannot leave the other workers idle at the end.
Every file is in exactly one batch; the dispatcher records which worker holds
which batch so a dead worker's unfinished files can be handed to another.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .header import FileInfo

# With several workers, no batch is larger than this fraction of one worker's
# fair share, so that the last batches to finish are small (see make_batches).
SLICES_PER_WORKER = 4


@dataclass(frozen=True, slots=True)
class Study:
    study_instance_uid: str
    files: tuple[FileInfo, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True, slots=True)
class Batch:
    """A unit of work: files of one study (or a slice of one), in send order."""

    batch_id: int
    study_instance_uid: str
    files: tuple[FileInfo, ...]
    attempt: int = 1  # 2 and more: files handed back by a worker that died

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def group_by_study(infos: Iterable[FileInfo]) -> list[Study]:
    """Studies in a stable order, files inside each sorted by path.

    Files without a Study Instance UID form one group under "" so they are
    still sent (and still balanced).
    """
    groups: dict[str, list[FileInfo]] = defaultdict(list)
    for info in infos:
        groups[info.study_instance_uid].append(info)
    return [
        Study(uid, tuple(sorted(files, key=lambda f: f.path)))
        for uid, files in sorted(groups.items())
    ]


def make_batches(studies: Sequence[Study], workers: int) -> list[Batch]:
    """Batches largest first; a study above a slice of the fair share is cut.

    The fair share is the archive's bytes divided by the number of workers; a
    study larger than a quarter of it (SLICES_PER_WORKER) is cut into slices
    as even as the file sizes allow, keeping the files' order. A quarter,
    not the whole share: with 10 equal studies and 8 workers, whole studies
    leave two workers with two studies each at the end (1.6x the mean load);
    quarter slices give every worker the same.
    """
    if workers < 1:
        raise ValueError("at least one worker is needed")
    total = sum(s.size for s in studies)
    fair_share = total / (workers * SLICES_PER_WORKER) if workers > 1 else float("inf")
    pieces: list[tuple[str, tuple[FileInfo, ...]]] = []
    for study in studies:
        if study.size <= fair_share or len(study.files) < 2:
            pieces.append((study.study_instance_uid, study.files))
            continue
        slices = min(len(study.files), math.ceil(study.size / fair_share))
        target = study.size / slices
        current: list[FileInfo] = []
        current_size = 0
        for info in study.files:
            current.append(info)
            current_size += info.size
            if current_size >= target:
                pieces.append((study.study_instance_uid, tuple(current)))
                current, current_size = [], 0
        if current:
            pieces.append((study.study_instance_uid, tuple(current)))
    # Largest first; ties broken by study UID and first path for a stable plan.
    pieces.sort(key=lambda p: (-sum(f.size for f in p[1]), p[0], p[1][0].path))
    return [Batch(index, uid, files) for index, (uid, files) in enumerate(pieces)]


@dataclass
class Dispatcher:
    """Hands out batches on request and remembers who holds what."""

    pending: deque[Batch] = field(default_factory=deque)
    held: dict[int, Batch] = field(default_factory=dict)  # worker id -> batch
    done_paths: dict[int, set[str]] = field(default_factory=dict)  # worker id -> finished paths
    stopped: bool = False
    _next_id: int = 0

    @classmethod
    def of(cls, batches: Iterable[Batch]) -> Dispatcher:
        dispatcher = cls(deque(batches))
        dispatcher._next_id = max((b.batch_id for b in dispatcher.pending), default=-1) + 1
        return dispatcher

    def next_for(self, worker: int) -> Batch | None:
        """The next batch for a worker that asks, or None when there is no more."""
        if worker in self.held:
            raise ValueError(
                f"worker {worker} asked for work while holding batch {self.held[worker].batch_id}"
            )
        if self.stopped or not self.pending:
            return None
        batch = self.pending.popleft()
        self.held[worker] = batch
        self.done_paths[worker] = set()
        return batch

    def file_done(self, worker: int, path: str) -> None:
        self.done_paths.setdefault(worker, set()).add(path)

    def batch_done(self, worker: int) -> Batch:
        batch = self.held.pop(worker)
        self.done_paths.pop(worker, None)
        return batch

    def unfinished(self, worker: int) -> tuple[FileInfo, ...]:
        """Files of the batch a worker holds that it has not reported on."""
        batch = self.held.get(worker)
        if batch is None:
            return ()
        done = self.done_paths.get(worker, set())
        return tuple(f for f in batch.files if f.path not in done)

    def worker_lost(
        self, worker: int, max_attempts: int = 2
    ) -> tuple[Batch | None, tuple[FileInfo, ...]]:
        """A worker died: requeue its unfinished files once, at the front.

        Returns (the requeued batch or None, files given up on). Files that
        already came back from a dead worker once are given up on rather than
        passed around forever (a file that kills workers must not kill them all).
        """
        batch = self.held.pop(worker, None)
        unfinished = tuple(
            f
            for f in (batch.files if batch else ())
            if f.path not in self.done_paths.get(worker, set())
        )
        self.done_paths.pop(worker, None)
        if batch is None or not unfinished:
            return None, ()
        if batch.attempt >= max_attempts or self.stopped:
            return None, unfinished
        retry = Batch(self._next_id, batch.study_instance_uid, unfinished, batch.attempt + 1)
        self._next_id += 1
        self.pending.appendleft(retry)
        return retry, ()

    def stop(self) -> tuple[FileInfo, ...]:
        """Stop dispatching; returns the files that will not be sent."""
        self.stopped = True
        left = tuple(f for batch in self.pending for f in batch.files)
        self.pending.clear()
        return left

    @property
    def idle(self) -> bool:
        return not self.pending and not self.held


def pack_tasks(batches: Sequence[Batch], count: int) -> list[tuple[Batch, ...]]:
    """Group batches into at most ``count`` tasks of about equal bytes (--cluster).

    A cluster task keeps one association across the batches it holds, so a
    task is several studies, not one. Greedy: each batch, largest first, goes
    to the task with the fewest bytes so far; the tasks come back largest
    first, each with its batches in their original order.
    """
    if count < 1:
        raise ValueError("at least one task is needed")
    bins: list[list[Batch]] = [[] for _ in range(min(count, len(batches)))]
    sizes = [0] * len(bins)
    for batch in sorted(batches, key=lambda b: (-b.size, b.batch_id)):
        lightest = min(range(len(bins)), key=lambda i: (sizes[i], i))
        bins[lightest].append(batch)
        sizes[lightest] += batch.size
    tasks = [tuple(sorted(b, key=lambda batch: batch.batch_id)) for b in bins if b]
    tasks.sort(key=lambda task: (-sum(b.size for b in task), task[0].batch_id))
    return tasks
