"""What happened: per-file results, per-worker statistics, the session summary.

Small picklable dataclasses: workers send FileResults to the coordinator,
which merges everything into one SendSummary.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import TYPE_CHECKING, Any

from .._record import Record
from ..io.discover import UnsearchedSubdirectories

if TYPE_CHECKING:
    import numpy
    from numpy.typing import NDArray

    from .schedule import Pause
from ..io.header import FileInfo

CoercedValue = tuple[str, str | None, str | None]

if TYPE_CHECKING:
    from ..io.coerce import Change


def coerced_values(changes: Sequence[Change]) -> tuple[CoercedValue, ...]:
    """FileResult.coerced from the changes --coerce made (plain tuples: they cross a pipe)."""
    return tuple((change.keyword, change.original, change.new) for change in changes)


# The failures list (fastsend_failures_<session>.csv, and verify's
# fastsend_missing_<session>.csv): `send --input-list` reads its path column.
FAILURE_COLUMNS = ("path", "sop_instance_uid", "status", "reason", "attempts")

# Above this many latencies the percentiles are taken with numpy (see latency_ms).
LARGE_SAMPLE = 50_000


class ExitStatus(IntEnum):
    """The exit status of `fastsend send` (and `scan`), most important first."""

    OK = 0  # every file stored (warnings included) or skipped as already stored
    FAILED = 1  # some files failed
    USAGE = 2  # a usage error (click's own code)
    NO_ASSOCIATION = 3  # nothing could start: no association, cluster or journal
    NOTHING_TO_SEND = 4  # the inputs hold no DICOM instance (e.g. a folder without -r)
    INTERRUPTED = 130  # Ctrl-C


class Outcome(Enum):
    STORED = "stored"
    WARNING = "warning"  # stored, with a warning status
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(slots=True)
class FileResult:
    path: str
    outcome: Outcome
    reason: str = ""
    status: int | None = None  # the DICOM status, when the peer answered
    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    bytes_sent: int = 0
    seconds: float = 0.0  # C-STORE round trip: first byte sent to response read
    worker: int | None = None
    attempts: int = 0
    # --coerce: (keyword, original, new) of each element changed in what was
    # sent; None for an element added (original) or removed (new).
    coerced: tuple[CoercedValue, ...] = ()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Every file's result crosses a pipe. A slots dataclass pickles its
        # state through dataclasses.fields() and the Enum by a class call;
        # plain arguments halve the time both ways (about 22 -> 13 us a
        # result, 391 -> 238 bytes).
        return _file_result, (
            self.path,
            self.outcome.value,
            self.reason,
            self.status,
            self.sop_instance_uid,
            self.sop_class_uid,
            self.bytes_sent,
            self.seconds,
            self.worker,
            self.attempts,
            self.coerced,
        )

    @classmethod
    def of(cls, info: FileInfo, outcome: Outcome, reason: str, **details: Any) -> FileResult:
        """A result for an indexed file, carrying its UIDs."""
        return cls(
            info.path,
            outcome,
            reason,
            sop_instance_uid=info.sop_instance_uid,
            sop_class_uid=info.sop_class_uid,
            **details,
        )


def _file_result(path: str, outcome: str, *rest: Any) -> FileResult:
    """Unpickles a FileResult (see FileResult.__reduce__)."""
    return FileResult(path, Outcome._value2member_map_[outcome], *rest)  # type: ignore[arg-type]


class WorkerStats(Record):
    worker: int
    pid: int
    files: int
    bytes_sent: int
    cpu_user_seconds: float
    cpu_system_seconds: float
    peak_rss_bytes: int
    associations_opened: int
    exit: str  # "finished", "interrupted", "aborted" or "died (exit code N)"
    host: str  # where it ran (--cluster: the Dask worker's host)
    __slots__ = (
        "worker",
        "pid",
        "files",
        "bytes_sent",
        "cpu_user_seconds",
        "cpu_system_seconds",
        "peak_rss_bytes",
        "associations_opened",
        "exit",
        "host",
    )
    _fields = __slots__

    def __init__(
        self,
        worker: int,
        pid: int,
        files: int = 0,
        bytes_sent: int = 0,
        cpu_user_seconds: float = 0.0,
        cpu_system_seconds: float = 0.0,
        peak_rss_bytes: int = 0,
        associations_opened: int = 0,
        exit: str = "running",
        host: str = "",
    ) -> None:
        self.worker = worker
        self.pid = pid
        self.files = files
        self.bytes_sent = bytes_sent
        self.cpu_user_seconds = cpu_user_seconds
        self.cpu_system_seconds = cpu_system_seconds
        self.peak_rss_bytes = peak_rss_bytes
        self.associations_opened = associations_opened
        self.exit = exit
        self.host = host


class Cause(Enum):
    """Why a file was not sent, when that was decided before any C-STORE."""

    MISSING = "missing"  # an input that does not exist or cannot be listed: failed
    UNREADABLE = "unreadable"  # truncated, damaged, cannot be opened: failed
    NOT_DICOM = "not DICOM"  # or a DICOMDIR: skipped
    DUPLICATE = "duplicate"  # another file has its SOP Instance UID: skipped
    INTERRUPTED = "interrupted"  # not sent: the run was interrupted: skipped


class CommitmentCounts(Record):
    """send --commit: Storage Commitment (PS3.4 Annex J) of what the session stored."""

    requested: int
    committed: int
    commit_failed: int
    uncommitted: int
    transactions: int
    problems: list[str]
    __slots__ = (
        "requested",
        "committed",
        "commit_failed",
        "uncommitted",
        "transactions",
        "problems",
    )
    _fields = __slots__

    def __init__(
        self,
        requested: int = 0,
        committed: int = 0,
        commit_failed: int = 0,
        uncommitted: int = 0,
        transactions: int = 0,
        problems: list[str] | None = None,
    ) -> None:
        self.requested = requested
        self.committed = committed
        self.commit_failed = commit_failed
        self.uncommitted = uncommitted
        self.transactions = transactions
        self.problems = list() if problems is None else problems

    @property
    def complete(self) -> bool:
        """Every instance asked about was committed."""
        return self.committed == self.requested and not self.problems


class SendSummary(Record):
    """What a run did, accumulated as outcomes arrive (``add``).

    Memory follows the problems, not the archive: stored files are counted
    (bytes, SOP classes, C-STORE latencies as 4-byte floats), and only the
    warned, failed and skipped files are kept, for the JSON summary.
    Files skipped as already stored are only counted (``already_stored``):
    a rerun of a finished migration of millions would list them all.
    """

    session_id: str
    # Every warned, failed and skipped file (not the "already stored" ones).
    noted: list[FileResult]
    counts: Counter[Outcome]
    causes: Counter[Cause]  # skips and failures by cause
    already_stored: int  # skipped without opening: the journal says the destination has it
    coerced: int  # --coerce: instances stored with at least one element changed
    bytes_sent: int
    sop_classes_sent: Counter[str]
    latencies: array[float]  # seconds, answered
    workers: list[WorkerStats]
    associations_opened: int
    associations_rejected: int
    associations_failed: int  # could not be made: refused, rejected, timed out
    associations_aborted: int
    retries: int  # attempts repeated after a transient failure
    association_errors: list[str]
    events: list[str]  # notable things: worker deaths, interrupts
    # Of those, what the console repeats at the end (worker deaths, failed cluster tasks).
    problems: list[str]
    interrupted: bool
    error: str  # why the run could not start at all (e.g. no Dask scheduler): exit 3
    nothing_to_send: str  # why the inputs held no DICOM instance at all: exit 4
    # Subdirectories not searched: without -r, or links to directories.
    unsearched: list[UnsearchedSubdirectories]
    cluster: dict[str, Any] | None  # --cluster: scheduler, tasks, where each batch ran
    commitment: CommitmentCounts | None  # --commit
    pauses: list[Pause]  # --schedule pause windows, SIGUSR1
    started: float
    finished: float
    __slots__ = (
        "session_id",
        "noted",
        "counts",
        "causes",
        "already_stored",
        "coerced",
        "bytes_sent",
        "sop_classes_sent",
        "latencies",
        "workers",
        "associations_opened",
        "associations_rejected",
        "associations_failed",
        "associations_aborted",
        "retries",
        "association_errors",
        "events",
        "problems",
        "interrupted",
        "error",
        "nothing_to_send",
        "unsearched",
        "cluster",
        "commitment",
        "pauses",
        "started",
        "finished",
    )
    _fields = __slots__

    def __init__(
        self,
        session_id: str = "",
        noted: list[FileResult] | None = None,
        counts: Counter[Outcome] | None = None,
        causes: Counter[Cause] | None = None,
        already_stored: int = 0,
        coerced: int = 0,
        bytes_sent: int = 0,
        sop_classes_sent: Counter[str] | None = None,
        latencies: array[float] | None = None,
        workers: list[WorkerStats] | None = None,
        associations_opened: int = 0,
        associations_rejected: int = 0,
        associations_failed: int = 0,
        associations_aborted: int = 0,
        retries: int = 0,
        association_errors: list[str] | None = None,
        events: list[str] | None = None,
        problems: list[str] | None = None,
        interrupted: bool = False,
        error: str = "",
        nothing_to_send: str = "",
        unsearched: list[UnsearchedSubdirectories] | None = None,
        cluster: dict[str, Any] | None = None,
        commitment: CommitmentCounts | None = None,
        pauses: list[Pause] | None = None,
        started: float = 0.0,
        finished: float = 0.0,
    ) -> None:
        self.session_id = session_id
        self.noted = list() if noted is None else noted
        self.counts = Counter() if counts is None else counts
        self.causes = Counter() if causes is None else causes
        self.already_stored = already_stored
        self.coerced = coerced
        self.bytes_sent = bytes_sent
        self.sop_classes_sent = Counter() if sop_classes_sent is None else sop_classes_sent
        self.latencies = array("f") if latencies is None else latencies
        self.workers = list() if workers is None else workers
        self.associations_opened = associations_opened
        self.associations_rejected = associations_rejected
        self.associations_failed = associations_failed
        self.associations_aborted = associations_aborted
        self.retries = retries
        self.association_errors = list() if association_errors is None else association_errors
        self.events = list() if events is None else events
        self.problems = list() if problems is None else problems
        self.interrupted = interrupted
        self.error = error
        self.nothing_to_send = nothing_to_send
        self.unsearched = list() if unsearched is None else unsearched
        self.cluster = cluster
        self.commitment = commitment
        self.pauses = list() if pauses is None else pauses
        self.started = started
        self.finished = finished

    def add(self, result: FileResult, cause: Cause | None = None) -> None:
        """Account for one file's outcome."""
        outcome = result.outcome
        self.counts[outcome] += 1
        if cause is not None:
            self.causes[cause] += 1
        if outcome is Outcome.STORED or outcome is Outcome.WARNING:
            self.bytes_sent += result.bytes_sent
            self.sop_classes_sent[result.sop_class_uid] += 1
            if result.coerced:
                self.coerced += 1
        if result.status is not None and result.seconds > 0:
            self.latencies.append(result.seconds)
        if outcome is not Outcome.STORED:
            self.noted.append(result)

    def add_already_stored(self, count: int) -> None:
        self.counts[Outcome.SKIPPED] += count
        self.already_stored += count

    def count(self, outcome: Outcome) -> int:
        return self.counts[outcome]

    @property
    def found(self) -> int:
        """Every file the run met: stored + warning + failed + skipped."""
        return sum(self.counts.values())

    @property
    def elapsed(self) -> float:
        return max(self.finished - self.started, 1e-9)

    @property
    def no_association(self) -> bool:
        """Files were waiting to be sent but no association could ever be made."""
        return self.associations_opened == 0 and self.associations_failed > 0

    @property
    def exit_code(self) -> int:
        """130 interrupted; 3 nothing could start (no association, cluster or journal);
        1 some failed; 4 nothing to send; else 0."""
        if self.interrupted:
            return ExitStatus.INTERRUPTED
        if self.no_association or self.error:
            return ExitStatus.NO_ASSOCIATION
        if self.count(Outcome.FAILED):
            return ExitStatus.FAILED
        if self.commitment is not None and not self.commitment.complete:
            return ExitStatus.FAILED  # --commit: stored, but not all of it committed
        return ExitStatus.NOTHING_TO_SEND if self.nothing_to_send else ExitStatus.OK

    def latency_ms(self) -> dict[str, float]:
        """C-STORE round-trip times of the answered stores, in milliseconds.

        Past LARGE_SAMPLE, sorts ``latencies`` in place.
        """
        count = len(self.latencies)
        if not count:
            return {"count": 0, "mean": 0.0, "p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
        times: Sequence[float] | NDArray[numpy.float32]
        if count > LARGE_SAMPLE:
            # The 4-byte values sorted where they are (their order means
            # nothing), not a list of Python floats (about 60 bytes each with
            # the list) nor a sorted copy: at the very end of the run, where
            # either set the coordinator's peak memory, growing with the files
            # sent (60 MB, then 4 MB at a million). numpy costs an import, so
            # only for runs long enough not to notice it.
            import numpy

            ordered = numpy.frombuffer(self.latencies, dtype=numpy.float32)
            ordered.sort()
            total = float(numpy.sum(ordered, dtype=numpy.float64))
            times = ordered
        else:
            times = sorted(self.latencies)
            total = math.fsum(times)

        def percentile(q: float) -> float:
            # nearest-rank on the sorted sample
            return float(times[min(count - 1, max(0, round(q * count) - 1))]) * 1000

        return {
            "count": count,
            "mean": total * 1000 / count,
            "p50": percentile(0.50),
            "p95": percentile(0.95),
            "p99": percentile(0.99),
            "max": float(times[-1]) * 1000,
        }
