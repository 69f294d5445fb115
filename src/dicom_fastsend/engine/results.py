"""What happened: per-file results, per-worker statistics, the session summary.

Small picklable records (FileResult a dataclass, the rest msgspec structs):
workers send FileResults to the coordinator, which merges everything into one
SendSummary.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import field

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


class WorkerStats(msgspec.Struct):
    worker: int
    pid: int
    files: int = 0
    bytes_sent: int = 0
    cpu_user_seconds: float = 0.0
    cpu_system_seconds: float = 0.0
    peak_rss_bytes: int = 0
    associations_opened: int = 0
    exit: str = "running"  # "finished", "interrupted", "aborted" or "died (exit code N)"
    host: str = ""  # where it ran (--cluster: the Dask worker's host)


class Cause(Enum):
    """Why a file was not sent, when that was decided before any C-STORE."""

    MISSING = "missing"  # an input that does not exist or cannot be listed: failed
    UNREADABLE = "unreadable"  # truncated, damaged, cannot be opened: failed
    NOT_DICOM = "not DICOM"  # or a DICOMDIR: skipped
    DUPLICATE = "duplicate"  # another file has its SOP Instance UID: skipped
    INTERRUPTED = "interrupted"  # not sent: the run was interrupted: skipped


class CommitmentCounts(msgspec.Struct):
    """send --commit: Storage Commitment (PS3.4 Annex J) of what the session stored."""

    requested: int = 0
    committed: int = 0
    commit_failed: int = 0
    uncommitted: int = 0
    transactions: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every instance asked about was committed."""
        return self.committed == self.requested and not self.problems


class SendSummary(msgspec.Struct):
    """What a run did, accumulated as outcomes arrive (``add``).

    Memory follows the problems, not the archive: stored files are counted
    (bytes, SOP classes, C-STORE latencies as 4-byte floats), and only the
    warned, failed and skipped files are kept, for the JSON summary.
    Files skipped as already stored are only counted (``already_stored``):
    a rerun of a finished migration of millions would list them all.
    """

    session_id: str = ""
    # Every warned, failed and skipped file (not the "already stored" ones).
    noted: list[FileResult] = field(default_factory=list)
    counts: Counter[Outcome] = field(default_factory=Counter)
    causes: Counter[Cause] = field(default_factory=Counter)  # skips and failures by cause
    already_stored: int = 0  # skipped without opening: the journal says the destination has it
    coerced: int = 0  # --coerce: instances stored with at least one element changed
    bytes_sent: int = 0
    sop_classes_sent: Counter[str] = field(default_factory=Counter)
    latencies: array[float] = field(default_factory=lambda: array("f"))  # seconds, answered
    workers: list[WorkerStats] = field(default_factory=list)
    associations_opened: int = 0
    associations_rejected: int = 0
    associations_failed: int = 0  # could not be made: refused, rejected, timed out
    associations_aborted: int = 0
    retries: int = 0  # attempts repeated after a transient failure
    association_errors: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # notable things: worker deaths, interrupts
    # Of those, what the console repeats at the end (worker deaths, failed cluster tasks).
    problems: list[str] = field(default_factory=list)
    interrupted: bool = False
    error: str = ""  # why the run could not start at all (e.g. no Dask scheduler): exit 3
    nothing_to_send: str = ""  # why the inputs held no DICOM instance at all: exit 4
    # Subdirectories not searched: without -r, or links to directories.
    unsearched: list[UnsearchedSubdirectories] = field(default_factory=list)
    cluster: dict[str, Any] | None = None  # --cluster: scheduler, tasks, where each batch ran
    commitment: CommitmentCounts | None = None  # --commit
    pauses: list[Pause] = field(default_factory=list)  # --schedule pause windows, SIGUSR1
    started: float = 0.0
    finished: float = 0.0
    # The audit report beside the log: written by this session, or one that still holds.
    audit_report: Path | None = None
    audit_unchanged_since: str = ""  # the session that wrote it, if not this one

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
