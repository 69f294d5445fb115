"""A worker: pulls batches, keeps one association, stores files.

It talks to the coordinator over its own pipe (``multiprocessing.Pipe``) in
typed messages (messages.py): ``Ready`` asks for a batch; the coordinator
answers ``Assign(batch)`` or ``Stop()``. A batch holds pending files: the
worker reads their headers and claims their SOP Instance UIDs in the
inventory just before sending them (admission, prepare.py), so several
workers read a cold archive in parallel and each file's data then comes from
the page cache. The presentation contexts follow the (SOP class, transfer
syntax) pairs met so far: a batch with a new pair re-plans them, and the
association is opened again with the new set.

Each file's FileResult is written to the inventory and then goes back with
a blocking send. Without --max-ops, that happens once the next file's
C-STORE-RQ is on the wire, while the peer stores it, so the bookkeeping
costs nothing in the round trip; a worker killed at any moment has reported
everything but the file in flight and the one answered just before it (the
files in flight, with --max-ops).

Signals: SIGINT is ignored (the coordinator decides what Ctrl-C means),
SIGUSR1 asks for a graceful stop after the file in flight, SIGUSR2 aborts the
association at once.

Nobody to report to (the coordinator was killed: the pipe is broken), or no
journal to record in (it cannot be written, e.g. a full disk): the worker
stops after its file in flight, as after a Ctrl-C, since what it sent next
would be recorded nowhere. Its outcomes still go wherever they can: the
journal when the coordinator is gone, the coordinator when the journal is.
"""

from __future__ import annotations

import fcntl
import os
import resource
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from ..config import PeerConfig
from ..errors import FastsendError
from ..io.header import FileInfo, read_header_and_content
from ..io.transport import ConnectError, TLSError, TransportError
from ..protocol.contexts import NoAcceptableContext, association_for, plan_associations
from ..protocol.dimse import StatusCategory, status_category, status_text
from ..protocol.pdu import PresentationContextRQ
from .inventory import Inventory, JournalError
from .messages import (
    Assign,
    AssociationEvent,
    AssociationKind,
    BatchDone,
    FileDone,
    Finished,
    FromExecutor,
    JournalFailed,
    Outcomes,
    Ready,
)
from .plan import Batch
from .prepare import admit
from .results import Cause, FileResult, Outcome, WorkerStats, coerced_values
from .scu import (
    AssociationAbortedError,
    AssociationError,
    AssociationRejectedError,
    Response,
    StoreClient,
)

if TYPE_CHECKING:
    from ..io.coerce import Coercion

INTERRUPTED_REASON = "not sent: the run was interrupted"
# Outcomes are journaled and reported in groups: one transaction and one
# message for up to REPORT_EVERY files, or for what REPORT_SECONDS brought.
# This is the crash window: after a kill -9 a rerun sends again at most the
# outcomes queued (REPORT_EVERY) and the file in flight, per worker (README,
# "Resume, retries, failures").
REPORT_EVERY = 32
REPORT_SECONDS = 0.25
# Headers of the next batch read during each wait for a C-STORE-RSP (see
# Worker._look_ahead): two keep ahead of a next batch up to twice as large.
LOOK_AHEAD = 2
# Files that could not go because no association could be made share one message,
# which the console prints once instead of once per file.
NO_ASSOCIATION_PREFIX = "not sent, no association: "


class Channel(Protocol):
    """How a worker talks to its coordinator: a Pipe end, or a cluster task's stand-in."""

    def send(self, obj: Any) -> None: ...

    def recv(self) -> Any: ...


class AbortRequested(BaseException):
    """Raised by the SIGUSR2 handler to leave a blocking send or receive at once."""


class WorkerConfig(msgspec.Struct, frozen=True):
    worker: int
    peer: PeerConfig
    max_rate: float = 0.0  # bytes per second across all workers; 0 = unlimited
    rate_lock_path: str | None = None  # the flock file that guards the shared budget
    retries: int = 3
    retry_delay: float = 0.5  # seconds before the first retry; doubles each time
    transcode: bool = False
    max_ops: int = 1  # Asynchronous Operations Window to propose (PS3.7 D.3.3.3)
    journal_path: Path | None = None  # the inventory; None: the coordinator keeps it
    destination: str = ""
    session_id: str = ""
    resume: bool = True  # a duplicate of what earlier sessions stored is skipped
    coerce: Coercion | None = None  # --coerce: the rules (io/coerce.py)
    # A forked worker asks for its next batch while it sends one (see run).
    # Off under --schedule: a pause or a new rate must take effect when the
    # batch in hand is done, not after one more already in the pipe.
    prefetch: bool = True


class RateLimiter:
    """One byte budget shared by all workers (``--max-rate``).

    A shared "next free moment" on the system-wide monotonic clock: each file
    reserves ``size / rate`` seconds after it, so the workers together never
    average more than the rate, whatever their number. The update is guarded
    by flock(2) on a lock file, not a multiprocessing lock: the kernel drops a
    flock when its holder dies, so a worker killed mid-update cannot leave the
    others waiting forever.
    """

    def __init__(self, shared: Any, lock_path: str | None, bytes_per_second: float) -> None:
        self._shared = shared  # a multiprocessing RawValue("d")
        self._rate = bytes_per_second
        self._lock = os.open(lock_path, os.O_RDWR) if lock_path and shared is not None else None

    def close(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    @property
    def limited(self) -> bool:
        return self._lock is not None and self._rate > 0

    def acquire(self, size: int) -> None:
        if self._lock is None or self._rate <= 0:
            return
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            now = time.monotonic()
            start = max(now, self._shared.value)
            self._shared.value = start + size / self._rate
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
        if start > now:
            time.sleep(start - now)


def describe_association_error(exc: Exception, peer: PeerConfig) -> str:
    """The error, plus what the user can do about it."""
    if isinstance(exc, AssociationRejectedError):
        hints = []
        if peer.user is not None:
            # Acceptors reject bad credentials with various sources and reasons
            # (PS3.7 D.3.3.7 does not fix one), so say it whenever we sent some.
            hints.append(f"Check the user name {peer.user.username!r} and its password.")
        if exc.reject.transient:
            hints.append("The rejection is transient: try again later.")
        else:
            hints.append(
                f"Check that the destination knows called AE title {peer.called_ae_title!r} "
                f"and calling AE title {peer.calling_ae_title!r}."
            )
        return f"{exc}. " + " ".join(hints)
    if isinstance(exc, ConnectError):
        return f"{exc}. Check the host and port, and that the destination is running."
    return str(exc)


def result_from_response(info: FileInfo, response: Response, seconds: float) -> FileResult:
    category = status_category(response.status)
    timing = {"status": response.status, "seconds": seconds}
    if category is StatusCategory.SUCCESS:  # the common case: no text to build
        return FileResult.of(info, Outcome.STORED, "", bytes_sent=info.size, **timing)
    detail = status_text(response.status)
    if response.error_comment:
        detail += f" ({response.error_comment})"
    if response.offending_element:
        detail += " offending element " + ", ".join(
            f"({t >> 16:04x},{t & 0xFFFF:04x})" for t in response.offending_element
        )
    if category is StatusCategory.WARNING:
        reason = f"stored with warning {detail}"
        return FileResult.of(info, Outcome.WARNING, reason, bytes_sent=info.size, **timing)
    return FileResult.of(info, Outcome.FAILED, detail, **timing)


def is_retryable_status(status: int) -> bool:
    """A7xx, Refused: Out of Resources, may pass (PS3.7 C.5.x); other failures will not."""
    return 0xA700 <= status <= 0xA7FF


def backoff(attempt: int, base: float) -> float:
    """Seconds to wait before attempt ``attempt + 1``: base, 2 base, 4 base ... capped at 30."""
    return float(min(30.0, base * 2 ** (attempt - 1)))


class Worker:
    """The sending loop of one worker; usable in-process by tests."""

    def __init__(self, config: WorkerConfig, conn: Channel, limiter: RateLimiter) -> None:
        self.config = config
        self.conn = conn
        self.limiter = limiter
        self.client = StoreClient(config.peer, config.transcode, config.max_ops, config.coerce)
        # --max-ops: C-STOREs sent and not yet answered, by Message ID.
        self.outstanding: dict[int, tuple[FileInfo, float]] = {}
        self._retry_later: list[FileInfo] = []
        # (SOP class, transfer syntax) pairs met so far, and the associations
        # planned for them (at most 128 presentation contexts each).
        self.pairs: set[tuple[str, str]] = set()
        self.plans: list[tuple[PresentationContextRQ, ...]] = []
        self.plan_index: int | None = None  # which planned association is open
        self.stopping = False
        # The coordinator is gone (its end of the pipe is closed): nobody reads us.
        self.orphaned = False
        # A forked worker's parent is the coordinator: when it dies the worker
        # is re-parented, and a getppid() per file notices that at once
        # (the pipe says so only at the next report, up to REPORT_EVERY files on).
        local = isinstance(conn, Connection)
        self._parent = os.getppid() if local else None
        # Only a forked worker's pipe wants outcomes grouped here: a Dask
        # task's channel gathers them itself and publishes them on a timer
        # (cluster.py), and it must see each one at once to notice that its
        # task was abandoned.
        self._report_every = REPORT_EVERY if local else 1
        self.in_flight: FileInfo | None = None
        # The file send_batch sends after the current one: its data set is
        # read while the current one's response is awaited (_prefetch_next).
        self._next_file: FileInfo | None = None
        # Outcomes not reported yet (see _report_due), and when the first came.
        self._unreported: list[tuple[FileInfo, FileResult]] = []
        self._oldest = 0.0
        # The bytes of the batch's small files, read whole with their headers.
        self._contents: dict[str, bytes] = {}
        # Look-ahead (see _look_ahead): the next message from the coordinator,
        # taken from the pipe early; the paths of its batch whose headers are
        # still to read (None: no next batch seen yet); the headers read.
        self._pipe = conn if isinstance(conn, Connection) and config.prefetch else None
        self._early: object = None
        self._ahead: list[str] | None = None
        self._heads: dict[str, tuple[FileInfo, bytes | None]] = {}
        self.stats = WorkerStats(config.worker, os.getpid(), host=socket.gethostname())
        self.journal: Inventory | None = None
        if config.journal_path is not None:
            # Checkpoints are the coordinator's (see inventory.py).
            self.journal = Inventory(
                config.journal_path,
                config.destination,
                config.session_id,
                checkpoint=False,
                rules=config.coerce.digest if config.coerce else "",
            )

    # ------------------------------------------------------------ messages

    def _report(self, info: FileInfo, result: FileResult) -> None:
        """Queue an outcome after those before it, and report them all when it is time."""
        self._queue(info, result)
        self._report_due()

    def _report_later(self, info: FileInfo, result: FileResult) -> None:
        """Queue an outcome; it goes out once the next C-STORE-RQ is on the wire (see store)."""
        self._queue(info, result)

    def _queue(self, info: FileInfo, result: FileResult) -> None:
        if not self._unreported:
            self._oldest = time.monotonic()
        self._unreported.append((info, result))

    def _report_due(self) -> None:
        """Report the queued outcomes when REPORT_EVERY of them or REPORT_SECONDS have passed."""
        if self._unreported and (
            len(self._unreported) >= self._report_every
            or time.monotonic() - self._oldest >= REPORT_SECONDS
        ):
            self._report_queued()

    def _look_ahead(self) -> None:
        """Read LOOK_AHEAD headers of the next batch while the peer stores a file.

        A forked worker asks for its next batch while it sends the current
        one (see run), so the next Assign is usually in the pipe already:
        taken early, its files' headers are read during the waits for the
        C-STORE-RSPs, and its admission then only claims them. Without this
        the association idled while each batch's headers were read (20,000
        small files at -P 1: 2.67 s, with it 2.43 s). A header that cannot be
        read is left to admit, which reads it again and reports why; the
        claim, and the check at send time that a file is the version read
        (StoreClient.begin_store), come as before.
        """
        if self._pipe is None or self.stopping:
            return
        if self._ahead is None:
            if self._early is not None or not self._pipe.poll():
                return
            try:
                self._early = self._pipe.recv()
            except (EOFError, ConnectionResetError):
                self.orphaned = self.stopping = True  # the coordinator is gone
                return
            batch = self._early.batch if isinstance(self._early, Assign) else None
            self._ahead = (
                []
                if batch is None
                else [item.path for item in reversed(batch.files) if not isinstance(item, FileInfo)]
            )
        for _ in range(min(LOOK_AHEAD, len(self._ahead))):
            path = self._ahead.pop()
            try:
                self._heads[path] = read_header_and_content(path)
            except Exception:  # noqa: BLE001 - whatever it is, admit meets it again
                # A C-STORE-RSP is outstanding here: no error of a file of the
                # next batch may end this one; admission reads it again and
                # reports why it cannot be sent, as it does without look-ahead.
                pass

    def _while_the_peer_stores(self) -> None:
        """The reads done after a C-STORE-RQ has gone, out of the round trip: the next
        batch's headers (_look_ahead) and the next file's data set (_prefetch_next)."""
        self._look_ahead()
        self._prefetch_next()

    def _prefetch_next(self) -> None:
        """Read the next file's data set while the peer stores this one.

        Without it, reading a 0.5 MB data set (open, fstat, a copy from the
        page cache) sat between a C-STORE-RSP and the next C-STORE-RQ, in the
        round trip that sets the rate at -P 1. A file read whole with its
        header needs nothing more; StoreClient.prefetch keeps nothing when a
        check fails, and begin_store then reads and reports as before.
        """
        upcoming = self._next_file
        if upcoming is not None and not self.stopping and upcoming.path not in self._contents:
            self.client.prefetch(upcoming)

    def _idle(self) -> Callable[[], None] | None:
        """What to do while a response is slow: report the queued outcomes, if any."""
        return self._report_queued if self._unreported else None

    def _report_queued(self) -> None:
        """Journal the queued outcomes in one transaction, then tell the coordinator in one
        message: a kill between the two loses nothing."""
        # Taken first: a second Ctrl-C landing in between leaves these files
        # unreported (the coordinator counts them interrupted, and a rerun
        # sends them again), never reported twice.
        queued, self._unreported = self._unreported, []
        if not queued:
            return
        journaled = False
        if self.journal is not None:
            try:
                self.journal.record_many((r, i.size, i.mtime) for i, r in queued)
                journaled = True
            except JournalError as exc:
                self._journal_failed(exc)  # the coordinator records them, if it can
        worker = self.config.worker
        done: list[FileDone] = []
        for _, result in queued:
            result.worker = worker
            if result.outcome in (Outcome.STORED, Outcome.WARNING):
                self.stats.files += 1
                self.stats.bytes_sent += result.bytes_sent
            cause = Cause.INTERRUPTED if result.reason == INTERRUPTED_REASON else None
            done.append(FileDone(worker, result, journaled, cause))
        self._send(Outcomes(worker, tuple(done)))

    def _send(self, message: FromExecutor) -> None:
        """To the coordinator; once it is gone, to nobody, and stop after the file in flight.

        A broken pipe means the coordinator died (kill -9, a crash): this
        worker's outcomes are in the journal, but nobody would hand it more
        work, nor account for what it sent next.
        """
        if self.orphaned:
            return
        try:
            self.conn.send(message)
        except (BrokenPipeError, ConnectionResetError):
            self.orphaned = self.stopping = True

    def _journal_failed(self, exc: JournalError) -> None:
        """The journal cannot be written: send nothing more (README: a migration does not
        go on without its journal); the coordinator stops the run."""
        if self.journal is not None:
            self.journal.close()
            self.journal = None
        self.stopping = True
        self._send(JournalFailed(self.config.worker, str(exc)))

    def _admit(self, batch: Batch) -> list[FileInfo]:
        """Read the batch's headers and claim its instances; report what will not be sent."""
        decided: list[tuple[FileResult, FileInfo | None, Cause]] = []
        try:
            infos = admit(
                batch.files,
                self.journal,
                self.config.resume,
                lambda result, info, cause: decided.append((result, info, cause)),
                self._contents,
                self._heads,
            )
        except JournalError as exc:
            # The claims were not written: none of the batch is sent.
            self._heads.clear()
            self._journal_failed(exc)
            decided_paths = {result.path for result, _, _ in decided}
            for item in batch.files:
                if item.path not in decided_paths:
                    unsent = FileResult(item.path, Outcome.SKIPPED, INTERRUPTED_REASON)
                    decided.append((unsent, None, Cause.INTERRUPTED))
            infos = []
        if decided:
            rows = [(r, *_size_and_mtime(r.path, i)) for r, i, _ in decided]
            journaled = False
            if self.journal is not None:
                try:
                    self.journal.record_many(rows)  # one transaction for the batch's decisions
                    journaled = True
                except JournalError as exc:
                    self._journal_failed(exc)
            worker = self.config.worker
            done: list[FileDone] = []
            for result, _, cause in decided:
                result.worker = worker
                done.append(FileDone(worker, result, journaled, cause))
            self._send(Outcomes(worker, tuple(done)))
        return infos

    def _association(self, kind: AssociationKind, message: str) -> None:
        self._send(AssociationEvent(self.config.worker, kind, message))

    # ------------------------------------------------------------ main loop

    def run(self) -> None:
        try:
            try:
                if self._parent is not None and self.config.prefetch:
                    # A forked worker asks for one batch more than it sends:
                    # the next one waits in the pipe, so the worker never
                    # idles for a round trip to the coordinator between two.
                    self._send(Ready(self.config.worker))
                while not self.stopping:
                    self._send(Ready(self.config.worker))
                    message, self._early, self._ahead = self._early, None, None
                    try:
                        if message is None and not self.orphaned:
                            message = self.conn.recv()
                    except (EOFError, ConnectionResetError):
                        self.orphaned = self.stopping = True  # the coordinator is gone
                        break
                    if not isinstance(message, Assign):
                        break
                    self.send_batch(message.batch)
                    self._contents.clear()
                    self._report_queued()
                    self._send(BatchDone(self.config.worker, message.batch.batch_id))
                self.client.release()
                if self.plan_index is not None:
                    self._association(AssociationKind.RELEASED, self.client.name)
                self.stats.exit = "interrupted" if self.stopping else "finished"
            except AbortRequested:
                _block_abort_signal()
                self.client.abort()
                self._report_queued()
                self._association(
                    AssociationKind.ABORTED, f"{self.client.name}: aborted (second Ctrl-C)"
                )
                in_flight = [info for info, _ in self.outstanding.values()]
                if self.in_flight is not None:
                    in_flight.append(self.in_flight)
                for info in in_flight:
                    self._report(
                        info,
                        _unsent(
                            info,
                            "association aborted (second Ctrl-C) while this file was in flight;"
                            " the destination may or may not have stored it",
                            1,
                        ),
                    )
                self.stats.exit = "aborted"
        finally:
            # Nothing may interrupt the last reports to the coordinator.
            _block_abort_signal()
            self._report_queued()
            self._finish_stats()
            if self.journal is not None:
                self.journal.close()
            self._send(Finished(self.config.worker, self.stats))

    def _finish_stats(self) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.stats.cpu_user_seconds = usage.ru_utime
        self.stats.cpu_system_seconds = usage.ru_stime
        self.stats.peak_rss_bytes = usage.ru_maxrss * 1024  # Linux reports KiB

    def send_batch(self, batch: Batch) -> None:
        infos = self._admit(batch)
        self._heads.clear()  # (read ahead for files the batch no longer holds)
        if self.stopping:
            for info in infos:
                self._report(info, _unsent(info, INTERRUPTED_REASON, 0))
            return
        self._plan_for(infos)
        # The planned association of each SOP class (the first that carries
        # it, as association_for says), found once per class for the batch:
        # the plans hold until the next one.
        carrying: dict[str, int] = {}
        for index, contexts in enumerate(self.plans):
            for context in contexts:
                carrying.setdefault(context.abstract_syntax, index)

        # Files whose SOP class lives in the open association go first, so a
        # batch switches associations as rarely as possible.
        def order(info: FileInfo) -> tuple[int, int]:
            index = carrying[info.sop_class_uid]
            return (0 if index == self.plan_index else 1, index)

        files = sorted(infos, key=order)
        # Planned associations that could not be opened even after retries:
        # the rest of the batch's files for them fail at once with that reason.
        unavailable: dict[int, str] = {}
        for position, info in enumerate(files):
            self._next_file = files[position + 1] if position + 1 < len(files) else None
            if self._parent is not None and os.getppid() != self._parent:
                self.orphaned = self.stopping = True  # nobody would account for what we send
            if self.stopping:
                self._drain(unavailable)
                for rest in files[position:]:
                    self._report(rest, _unsent(rest, INTERRUPTED_REASON, 0))
                return
            index = carrying[info.sop_class_uid]
            if self.outstanding and self.plan_index != index:
                self._drain(unavailable)  # its responses come on the open association
            if index in unavailable:
                self._report(info, _unsent(info, NO_ASSOCIATION_PREFIX + unavailable[index], 0))
            elif self.client.window > 1 and self.client.is_open and self.plan_index == index:
                self._pipeline(info, index, unavailable)
            else:
                self.in_flight = info
                result = self.send_file(info, index, unavailable)
                self.in_flight = None
                self._report_later(info, result)
        self._next_file = None
        self._drain(unavailable)

    def _plan_for(self, infos: list[FileInfo]) -> None:
        """Plan the associations again when a batch brings a pair not proposed yet.

        The open association is released first (after its outstanding
        responses): its contexts were negotiated without the new pair.
        """
        new = {(i.sop_class_uid, i.transfer_syntax_uid) for i in infos} - self.pairs
        if not new:
            return
        self.pairs |= new
        if self.outstanding:
            self._drain({})
        if self.client.is_open:
            self.client.release()
            self._association(AssociationKind.RELEASED, self.client.name)
        self.plan_index = None
        self.plans = plan_associations(self.pairs, transcode=self.config.transcode)

    # ------------------------------------------------------------ --max-ops pipeline

    def _pipeline(self, info: FileInfo, index: int, unavailable: dict[int, str]) -> None:
        """Send without waiting, keeping at most the negotiated window outstanding.

        Responses are matched by Message ID (PS3.7 D.3.3.3). Anything that goes
        wrong with the association hands the outstanding files to send_file,
        one at a time with its retries, so pipelining adds no way to lose one.
        """
        while len(self.outstanding) >= self.client.window:
            self._collect_one(index, unavailable)
            if not self.client.is_open:
                break
        assert self.client.contexts is not None
        if not self.client.is_open:
            self._report(info, self.send_file(info, index, unavailable))
            return
        try:
            selection = self.client.contexts.select(info.sop_class_uid, info.transfer_syntax_uid)
        except NoAcceptableContext as exc:
            self._report(info, FileResult.of(info, Outcome.FAILED, str(exc), attempts=1))
            return
        self.limiter.acquire(info.size)
        if self.stopping:  # Ctrl-C during the --max-rate wait: not sent, not in flight
            self._report(info, _unsent(info, INTERRUPTED_REASON, 0))
            return
        started = time.perf_counter()
        try:
            message_id = self.client.begin_store(info, selection, self._contents.get(info.path))
        except AssociationAbortedError as exc:
            self._lost_association(exc, [info], index, unavailable)
            return
        except (OSError, FastsendError) as exc:
            self._report(info, FileResult.of(info, Outcome.FAILED, _file_error(exc), attempts=1))
            return
        self.outstanding[message_id] = (info, started)
        self._while_the_peer_stores()

    def _collect_one(self, index: int, unavailable: dict[int, str]) -> None:
        try:
            message_id, response = self.client.finish_store(self.outstanding.keys(), self._idle())
        except AssociationAbortedError as exc:
            self._lost_association(exc, [], index, unavailable)
            return
        info, started = self.outstanding.pop(message_id)
        result = result_from_response(info, response, time.perf_counter() - started)
        result.attempts = 1
        result.coerced = coerced_values(self.client.take_changes(message_id))
        if result.outcome is Outcome.FAILED and is_retryable_status(response.status):
            self._retry_later.append(info)
            return
        self._report(info, result)

    def _lost_association(
        self,
        exc: AssociationAbortedError,
        also: list[FileInfo],
        index: int,
        unavailable: dict[int, str],
    ) -> None:
        """The association died with files outstanding: send each again, with retries."""
        self._association(AssociationKind.ABORTED, str(exc))
        self.plan_index = None
        lost = [info for info, _ in self.outstanding.values()] + also
        self.outstanding.clear()
        for info in lost:
            self.in_flight = info
            self._report(info, self.send_file(info, index, unavailable))
            self.in_flight = None

    def _drain(self, unavailable: dict[int, str]) -> None:
        """Collect every outstanding response, then resend what asked for a retry."""
        index = self.plan_index if self.plan_index is not None else 0
        while self.outstanding:
            self._collect_one(index, unavailable)
        retry, self._retry_later = self._retry_later, []
        for info in retry:
            # A7xx (out of resources) on the pipeline: try again the careful way.
            self._report(
                info,
                self.send_file(info, association_for(self.plans, info.sop_class_uid), unavailable),
            )

    def send_file(self, info: FileInfo, index: int, unavailable: dict[int, str]) -> FileResult:
        """One file, retried with backoff after transient failures (``--retries``)."""
        attempt = 0
        while True:
            attempt += 1
            result, retryable = self._attempt(info, index)
            # Sent by now, unless the attempt failed before its C-STORE-RQ
            # went out (the queued outcomes must not wait out a retry's
            # backoff: _sleep reports them).
            self._report_due()
            result.attempts = attempt
            if not retryable or attempt > self.config.retries or self.stopping:
                if result.reason.startswith(NO_ASSOCIATION_PREFIX):
                    unavailable[index] = result.reason[len(NO_ASSOCIATION_PREFIX) :]
                if retryable and attempt > 1:
                    result.reason += f" (gave up after {attempt} attempts)"
                return result
            delay = backoff(attempt, self.config.retry_delay)
            self._association(
                AssociationKind.RETRY,
                f"{info.path}: attempt {attempt} failed: {result.reason}; retrying in {delay:g} s",
            )
            self._sleep(delay)

    def _sleep(self, seconds: float) -> None:
        """Sleep, but wake for a graceful stop (Ctrl-C); nothing waits in the queue meanwhile."""
        self._report_queued()
        deadline = time.monotonic() + seconds
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))

    def _attempt(self, info: FileInfo, index: int) -> tuple[FileResult, bool]:
        """(result, whether trying again may help)."""
        problem = self._ensure_association(index)
        if problem is not None:
            message, retryable = problem
            return _unsent(info, NO_ASSOCIATION_PREFIX + message, 0), retryable
        return self.store(info)

    def _ensure_association(self, index: int) -> tuple[str, bool] | None:
        """None when the planned association ``index`` is open, else (why not, retryable)."""
        if self.client.is_open and self.plan_index == index:
            return None
        if self.client.is_open:
            # PS3.8 allows at most 128 presentation contexts per association;
            # this file's class lives in another planned association.
            self.client.release()
            self._association(AssociationKind.RELEASED, self.client.name)
        self.plan_index = None
        try:
            self.client.open(self.plans[index])
        except AssociationRejectedError as exc:
            message = describe_association_error(exc, self.config.peer)
            self._association(AssociationKind.REJECTED, message)
            return message, exc.reject.transient
        except TLSError as exc:
            # A certificate that fails verification will fail again.
            self._association(AssociationKind.FAILED, str(exc))
            return str(exc), False
        except (AssociationError, ConnectError, TransportError) as exc:
            message = describe_association_error(exc, self.config.peer)
            self._association(AssociationKind.FAILED, message)
            return message, True
        self.plan_index = index
        self.stats.associations_opened += 1
        window = ""
        if self.client.window > 1:
            window = f" (window {self.client.window})"
        elif self.client.max_ops > 1:
            # PS3.7 D.3.3.3: no answer, or one operation performed, is a
            # refusal; say so, or --max-ops would seem to have no effect.
            window = (
                f" (--max-ops {self.client.max_ops} declined: the peer takes one C-STORE at a time)"
            )
        self._association(AssociationKind.OPENED, self.client.name + window)
        return None

    def store(self, info: FileInfo) -> tuple[FileResult, bool]:
        def failed(reason: str) -> FileResult:
            return FileResult.of(info, Outcome.FAILED, reason)

        assert self.client.contexts is not None
        try:
            selection = self.client.contexts.select(info.sop_class_uid, info.transfer_syntax_uid)
        except NoAcceptableContext as exc:
            return failed(str(exc)), False
        if self.limiter.limited:
            # A --max-rate wait can be long; no outcome should wait through it.
            self._report_queued()
        self.limiter.acquire(info.size)
        if self.stopping:
            # Ctrl-C came while this file waited for its share of --max-rate:
            # nothing of it was sent, so it is not in flight.
            return _unsent(info, INTERRUPTED_REASON, 0), False
        started = time.perf_counter()
        try:
            message_id = self.client.begin_store(info, selection, self._contents.get(info.path))
        except AssociationAbortedError as exc:
            return self._lost_while_sending(info, exc), True
        except (OSError, FastsendError) as exc:
            return failed(_file_error(exc)), False
        # While the peer stores this file, journal and report the queued
        # outcomes when due, and read ahead the next batch's headers: that
        # work then costs nothing in the round trip. (Outside the try: a
        # broken pipe to the coordinator is not this file's failure.)
        self._report_due()
        self._while_the_peer_stores()
        try:
            response = self.client.finish_store({message_id}, self._idle())[1]
        except AssociationAbortedError as exc:
            return self._lost_while_sending(info, exc), True
        except (OSError, FastsendError) as exc:
            return failed(_file_error(exc)), False
        result = result_from_response(info, response, time.perf_counter() - started)
        result.coerced = coerced_values(self.client.take_changes(message_id))
        return result, result.outcome is Outcome.FAILED and is_retryable_status(response.status)

    def _lost_while_sending(self, info: FileInfo, exc: AssociationAbortedError) -> FileResult:
        """The association is gone (A-ABORT, reset, timeout, protocol error).

        A retry opens a new one.
        """
        self._association(AssociationKind.ABORTED, str(exc))
        self.plan_index = None
        return FileResult.of(info, Outcome.FAILED, f"association lost while sending: {exc}")


def _file_error(exc: OSError | FastsendError) -> str:
    """Why one file could not be sent (unreadable, changed, not convertible ...)."""
    if isinstance(exc, OSError):
        return f"cannot read file: {exc.strerror or exc}"
    return str(exc)


def _block_abort_signal() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})


def _size_and_mtime(path: str, info: FileInfo | None) -> tuple[int, float]:
    """What the inventory keeps of a file; (0, 0.0) for one that cannot be stat()ed."""
    if info is not None:
        return info.size, info.mtime
    try:
        status = os.stat(path)
    except OSError:
        return 0, 0.0
    return status.st_size, status.st_mtime


def _unsent(info: FileInfo, reason: str, attempt: int) -> FileResult:
    """Not sent: skipped when interrupted, else failed with the reason."""
    outcome = Outcome.SKIPPED if reason == INTERRUPTED_REASON else Outcome.FAILED
    return FileResult.of(info, outcome, reason, attempts=attempt)


def worker_main(
    config: WorkerConfig,
    conn: Connection,
    shared_rate: Any,
) -> None:
    """Entry point of a worker process."""
    worker: Worker | None = None

    def graceful(signum: int, frame: FrameType | None) -> None:
        if worker is not None:
            worker.stopping = True

    def abort(signum: int, frame: FrameType | None) -> None:
        raise AbortRequested()

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, graceful)
    signal.signal(signal.SIGUSR2, abort)
    worker = Worker(config, conn, RateLimiter(shared_rate, config.rate_lock_path, config.max_rate))
    try:
        worker.run()
    except (EOFError, BrokenPipeError):
        pass  # the coordinator is gone; nothing left to report to
    finally:
        conn.close()
