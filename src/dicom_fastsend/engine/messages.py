"""Typed messages between the coordinator and whatever runs the batches.

Frozen msgspec Structs: typed and immutable, and they pickle as a class and
its fields, which matters for the one message per file (twice as fast as the
NamedTuples they were, both ways, and 10 us a class at import, not 50).
The coordinator dispatches on the type, never on the wording of a text:
texts are for people (the log, the console), enums and fields are for
decisions.
"""

from __future__ import annotations

from enum import Enum

import msgspec

from .plan import Batch
from .results import Cause, FileResult, WorkerStats

# ---------------------------------------------------------------- to an executor


class Assign(msgspec.Struct, frozen=True):
    """Send this batch, then ask again."""

    batch: Batch


class Stop(msgspec.Struct, frozen=True):
    """No more work: release the association and finish."""


# ---------------------------------------------------------------- from an executor


class Ready(msgspec.Struct, frozen=True):
    """Free for a batch."""

    executor: int


class FileDone(msgspec.Struct, frozen=True):
    """One file's outcome. ``journaled``: the executor wrote it to the inventory itself.

    ``cause`` says why, when it was not sent because of what it is (not
    DICOM, a duplicate ...) or because the run stopped.
    """

    executor: int
    result: FileResult
    journaled: bool
    cause: Cause | None = None


class Outcomes(msgspec.Struct, frozen=True):
    """Several files' outcomes in one message, in the order they were decided (one
    pickle and one pipe write for a group of files, not one per file)."""

    executor: int
    done: tuple[FileDone, ...]


class BatchDone(msgspec.Struct, frozen=True):
    executor: int
    batch_id: int


class AssociationKind(Enum):
    OPENED = "opened"
    RELEASED = "released"
    RETRY = "retry"  # a file's attempt failed; it is tried again (the detail says why)
    ABORTED = "aborted"  # an open association was lost (A-ABORT, reset, timeout)
    REJECTED = "rejected"  # A-ASSOCIATE-RJ: none could be made
    FAILED = "failed"  # could not connect, TLS refused, ...: none could be made


class AssociationEvent(msgspec.Struct, frozen=True):
    executor: int
    kind: AssociationKind
    detail: str  # for people: the peer, the window, what went wrong


class Finished(msgspec.Struct, frozen=True):
    """The executor ended normally (its last message), with its statistics.

    A Dask task whose worker was lost and that ran again sends one per
    attempt; an executor that never ran anything has none.
    """

    executor: int
    stats: WorkerStats | None


class ExecutorLost(msgspec.Struct, frozen=True):
    """The executor died (killed, crashed, its Dask task failed) holding a batch or not.

    ``may_retry`` is False when the backend already ran its work again (Dask
    reruns a task whose worker was lost, up to its allowed-failures).
    """

    executor: int
    how: str
    may_retry: bool
    stats: WorkerStats


class JournalFailed(msgspec.Struct, frozen=True):
    """The executor could not write the journal (the inventory): it stops after its file
    in flight, and so does the run. ``reason`` names the file and says why."""

    executor: int
    reason: str


class Note(msgspec.Struct, frozen=True):
    """Something for people (level: info, warning, error); no decision hangs on it.

    Warnings and errors also go to the summary's events.
    """

    level: str
    text: str


ToExecutor = Assign | Stop
FromExecutor = (
    Ready
    | FileDone
    | Outcomes
    | BatchDone
    | AssociationEvent
    | Finished
    | ExecutorLost
    | JournalFailed
    | Note
)
