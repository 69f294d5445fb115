"""The coordinator: walk, dispatch, account for every file. One, whatever runs the batches.

A single thread runs one loop (it forks workers, so it must have no other):
a step of the walk into the inventory (prepare.Walker), batches of pending
files to whichever executor is free, then the executors' typed messages
(messages.py). Memory follows the batches in flight and the counters, not
the archive: the inventory holds the rest.

The backend runs the batches: worker processes here (local.py) or tasks on
a Dask cluster (cluster.py). Everything that decides what happens to a file
is here, for both: Ctrl-C (the first stops dispatching and lets the files in
flight finish, the second aborts), an executor that dies (its unreported
files go to another once, then fail), outcomes the coordinator decides
itself, and the inventory writes they need. An inventory that can no longer
be written (here or in an executor: a full disk ...) stops the run as the
first Ctrl-C does, with exit 3 and the reason: a migration does not go on
without its journal.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from msgspec import field

from ..config import SendConfig, destination_key
from ..errors import FastsendError
from ..io.header import FileInfo
from .inventory import Inventory, JournalError, Pending
from .messages import (
    Assign,
    AssociationEvent,
    AssociationKind,
    BatchDone,
    ExecutorLost,
    FileDone,
    Finished,
    FromExecutor,
    JournalFailed,
    Note,
    Outcomes,
    Ready,
    Stop,
)
from .plan import BATCH_BYTES, Batch, BatchBook, batch_files
from .prepare import Walker, admit
from .results import Cause, FileResult, Outcome, SendSummary, WorkerStats
from .schedule import (
    Pacer,
    ScheduleError,
    batch_bytes,
    clock_from_environment,
    parse_schedule,
)
from .worker import INTERRUPTED_REASON, WorkerConfig

if TYPE_CHECKING:
    # Imported where used: a send without --order, --priority-list or
    # --metrics-port needs neither, and `fastsend send` starts faster without.
    import tempfile

    from .metrics import Live, MetricsServer
    from .order import StudyQueue

Reporter = Callable[[FileResult], None]

# Seconds between the coordinator's inventory checkpoints. The WAL grows by
# about 12 kB per outcome meanwhile: some 40 MB at 1,500 files a second.
CHECKPOINT_INTERVAL = 2.0
# How long the coordinator lets messages gather after handling some.
BURST_SECONDS = 0.002
# Outcomes the coordinator decides are written in one transaction per this
# many (and whenever its loop comes round): an interrupted run of a million
# files must not pay a million commits.
JOURNAL_BATCH = 500
# Files not sent because the journal could no longer be written (skipped).
JOURNAL_STOP_REASON = "not sent: the run stopped, the journal cannot be written"


class Backend(Protocol):
    """What runs the batches: executors that take Assign/Stop and send messages back."""

    # True: executors read headers and claim instances themselves (they can
    # reach the inventory); False: the coordinator admits a batch before it goes.
    reads_headers: bool

    def add_executor(self) -> int: ...

    # Bytes per second across all executors (0: none), for executors started from now on.
    def set_rate(self, bytes_per_second: float) -> None: ...

    def assign(self, executor: int, message: Assign | Stop) -> None: ...

    def poll(self, timeout: float) -> list[FromExecutor]: ...

    def stop(self) -> None: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...


class Hooks(msgspec.Struct):
    """What the coordinator tells the outside world as it goes."""

    result: Reporter = lambda result: None
    log: Callable[[str, str], None] = lambda level, message: None
    progress: Callable[[FileResult], None] = lambda result: None
    # More files found by the walk, and files skipped as already stored.
    found: Callable[[int], None] = lambda files: None
    already_stored: Callable[[int], None] = lambda count: None
    # A batch is about to go to an executor (for observers, and tests).
    dispatched: Callable[[Batch], None] = lambda batch: None


# dict=True: __post_init__ sets the run's state as attributes beyond the fields.
class Coordinator(msgspec.Struct, dict=True):
    config: SendConfig
    hooks: Hooks = field(default_factory=Hooks)
    summary: SendSummary = field(default_factory=SendSummary)
    interrupts: int = 0

    # object's repr: signal.signal() returns the SIGINT handler it replaces,
    # our bound method, after trying it as a signal.Handlers member, whose
    # failure formats repr() of the method; a generated repr would write out the
    # summary (every C-STORE latency), tens of MB and seconds at the end of a
    # large run.
    __repr__ = object.__repr__

    def __post_init__(self) -> None:
        self._book = BatchBook()
        self._inventory: Inventory | None = None
        self._unjournalled: list[tuple[FileResult, int, float]] = []
        # Why the inventory can no longer be written, once it cannot: the run stops.
        self._journal_error = ""
        self._journal_writable = True  # False once a write of ours failed: none more
        # Files taken from the inventory for a batch that could not be made.
        self._unbatched: list[Pending] = []
        self._stopping = False
        self._aborting = False
        self._finishing = False  # nothing left to dispatch: executors stop when free
        self._live: set[int] = set()  # executors started and not ended
        self._idle: deque[int] = deque()  # executors waiting for a batch
        self._deaths = 0  # executors lost
        self._taken = 0  # pending files taken into batches
        self._next_batch = 0
        self._target = 1  # executors to run: -P, or the cluster's worker threads
        self._stored_by: Counter[int] = Counter()  # files stored per executor
        self._client: Any = None  # a distributed.Client with --cluster
        # Migration controls: --order, --schedule, SIGUSR1, --metrics-port.
        self._ordered = self.config.order != "path" or bool(self.config.priority_list)
        self._queue: StudyQueue | None = None  # the order, once the pre-pass made it
        self._pacer = Pacer(None, self.config.max_rate_mb_s)
        self._pause_toggles = 0  # SIGUSR1s received
        self._applied_rate = self.config.max_rate_mb_s  # MB/s the backend was given
        self._generation = 0  # bumped at each rate change: older executors are replaced
        self._generation_of: dict[int, int] = {}
        self._metrics: MetricsServer | None = None
        self._walker: Walker | None = None
        self._over = False  # the run is over; the metrics endpoint may linger

    # ------------------------------------------------------------ public

    def run(self) -> SendSummary:
        previous = _set_signal(signal.SIGUSR1, self._on_sigusr1)
        try:
            summary = self._run()
            self._over = True
            self._linger()
            return summary
        finally:
            _set_signal(signal.SIGUSR1, previous)
            if self._metrics is not None:
                self._metrics.close()

    def _run(self) -> SendSummary:
        summary = self.summary
        summary.started = time.time()
        previous = _set_sigint(self._on_sigint)
        scratch: tempfile.TemporaryDirectory[str] | None = None
        backend: Backend | None = None
        try:
            problem = self._start_controls()
            if problem is not None:
                return self._cannot_start(FastsendError(problem))
            if self.config.cluster is not None:
                # Before the walk, which can take long: an unreachable cluster
                # should stop the run at once, naming the address.
                from .cluster import ClusterError, connect

                try:
                    self._client = connect(self.config.cluster, self.config.peer.connect_timeout)
                except ClusterError as exc:
                    return self._cannot_start(exc)
            path = self.config.journal
            if path is None:
                # No log directory: the run still needs its inventory, for a while.
                import tempfile

                scratch = tempfile.TemporaryDirectory(prefix="fastsend-")
                path = Path(scratch.name) / "inventory.sqlite"
            try:
                # Also before the walk: one that cannot be used stops the run
                # at once, naming the file; this also creates a new one before
                # any worker opens it. Its first write, begin_session, shows
                # one that cannot be written (read-only, a full disk).
                self._inventory = Inventory(
                    path,
                    destination_key(self.config.peer),
                    summary.session_id,
                    rules=self.config.coerce.digest if self.config.coerce else "",
                )
                self._inventory.begin_session()
            except JournalError as exc:
                self._journal_writable = False
                return self._cannot_start(exc)
            if self.config.journal is not None:
                self.hooks.log(
                    "info",
                    f"journal {path}: "
                    + (
                        "consulted: files it records as stored are skipped unless changed"
                        if self.config.resume
                        else "not consulted (--no-resume), still written"
                    ),
                )
            backend = self._backend(path)
            walker = Walker(
                self.config.inputs,
                self.config.recursive,
                self._inventory,
                self.config.resume,
                self._decided,
                self._already_stored,
            )
            self._walker = walker
            self._loop(walker, backend)
            self._conclude(walker)
        finally:
            _set_sigint(previous)
            if backend is not None:
                backend.close()
            if self._client is not None:
                self._client.close()
            if self._inventory is not None:
                self._flush_journal()
                if self._journal_writable:
                    try:
                        self._inventory.end_session(summary.exit_code)
                    except JournalError as exc:
                        self._journal_lost(str(exc))
                self._inventory.close()  # the last connection: checkpoints what is left
            if scratch is not None:
                scratch.cleanup()
            summary.finished = time.time()
        return summary

    # ------------------------------------------------------------ setup

    def _cannot_start(self, exc: FastsendError) -> SendSummary:
        """End the run before the walk, naming why (exit code 3)."""
        self.summary.error = str(exc)
        self.hooks.log("error", self.summary.error)
        return self.summary

    def _worker_config(self, journal: Path | None) -> WorkerConfig:
        config = self.config
        return WorkerConfig(
            worker=0,
            peer=config.peer,
            max_rate=config.max_rate_mb_s * 1e6,
            retries=config.retries,
            retry_delay=config.retry_delay,
            transcode=config.transcode,
            max_ops=config.max_ops,
            journal_path=journal,
            destination=destination_key(config.peer),
            session_id=self.summary.session_id,
            resume=config.resume,
            coerce=config.coerce,
            prefetch=config.schedule is None,
        )

    def _backend(self, inventory: Path) -> Backend:
        if self._client is not None:
            from .cluster import DaskBackend

            assert self.config.cluster is not None
            dask = DaskBackend(
                self._client,
                self.config.cluster,
                self.summary.session_id,
                self._worker_config(None),
                self.config.max_rate_mb_s * 1e6,
                self.hooks.log,
            )
            self._target = dask.target
            self.summary.cluster = dask.summary()  # replaced at the end
            self._dask = dask
            return dask
        from .local import LocalBackend

        self._target = self.config.processes
        return LocalBackend(self._worker_config(inventory), self.config.max_rate_mb_s * 1e6)

    # ------------------------------------------------------------ the loop

    def _loop(self, walker: Walker, backend: Backend) -> None:
        """Walk, dispatch, handle messages, until every file has its outcome.

        Ends when the walk is done, nothing is pending or held and every
        executor has finished; or, after Ctrl-C, when every executor has
        finished its file in flight; or when executors keep dying and no
        more may be started (the rest then fails, in _conclude).
        """
        assert self._inventory is not None
        walking = True
        next_checkpoint = time.monotonic() + CHECKPOINT_INTERVAL
        while True:
            self._check_interrupts(backend)
            if self._journal_error and not self._stopping:
                self._halt(backend)
            try:
                if walking and not self._stopping:
                    found = walker.walk.found
                    walking = walker.step()
                    if walker.walk.found != found:
                        self.hooks.found(walker.walk.found - found)
                else:
                    walking = False
                self._control(backend, walking)
                self._dispatch(backend, walker)
            except JournalError as exc:
                self._journal_lost(str(exc))
                continue  # stop at once, before anything else is dispatched
            if (
                not walking
                and not self._stopping
                and not self._finishing
                and not self._book.busy
                and not self._inventory.has_pending()
            ):
                self._finishing = True  # nothing left: each executor stops when free
            if self._finishing or self._stopping:
                for executor in self._idle:
                    backend.assign(executor, Stop())
                self._idle.clear()
                if not self._live:
                    break
            elif not walking and not self._live and not self._can_start():
                break  # executors kept dying; _conclude fails what is left
            messages = backend.poll(0 if walking else 0.2)
            for message in messages:
                self._handle(message)
                if self._journal_error and not self._stopping:
                    self._halt(backend)  # at once: the other executors are sending
            if messages and not walking:
                # Outcomes are flowing: let a few gather in the pipes, so each
                # wake-up handles a burst instead of one message (a wake-up a
                # file costs both processes a context switch). They are safe
                # there meanwhile: the kernel keeps a pipe's contents even if
                # its writer is killed.
                time.sleep(BURST_SECONDS)
            self._flush_journal()
            if self._journal_writable and time.monotonic() >= next_checkpoint:
                try:
                    self._inventory.checkpoint()
                except JournalError as exc:
                    self._journal_lost(str(exc))
                next_checkpoint = time.monotonic() + CHECKPOINT_INTERVAL

    def _can_start(self) -> bool:
        """Whether another executor may start: not after too many have died."""
        return self._deaths < 2 * self._target + 2

    def _dispatch(self, backend: Backend, walker: Walker) -> None:
        """Hand batches to idle executors; start executors while there is work for them."""
        assert self._inventory is not None
        if self._stopping or self._finishing or self._holding(backend):
            return
        while self._idle:
            size = batch_files(walker.walk.pending - self._taken, self._target)
            batch = self._book.next_retry() or self._take(backend, size)
            if batch is None:
                return
            executor = self._idle.popleft()
            self._book.assign(executor, batch)
            self.hooks.dispatched(batch)
            backend.assign(executor, Assign(batch))
        if (
            len(self._live) < self._target
            and self._can_start()
            and (self._book.retries or self._inventory.has_pending())
        ):
            executor = backend.add_executor()
            self._generation_of[executor] = self._generation
            self._live.add(executor)
            self.hooks.log("info", f"worker {executor} started")

    def _take(self, backend: Backend, size: int) -> Batch | None:
        """The next batch of pending files, admitted here if the backend cannot."""
        assert self._inventory is not None
        decided: set[str] = set()  # files of the batch admit() gave an outcome

        def report(result: FileResult, info: FileInfo | None, cause: Cause) -> None:
            decided.add(result.path)
            self._decided(result, info, cause)

        while True:
            limit = batch_bytes(self._applied_rate * 1e6, BATCH_BYTES)  # a pause comes soon
            if self._queue is not None:
                files = self._queue.take(self._inventory, size, limit)
            else:
                files = self._inventory.take_pending(size, limit)
            if not files:
                return None
            self._taken += len(files)
            self._next_batch += 1
            if backend.reads_headers:
                return Batch(self._next_batch, tuple(files))
            decided.clear()
            try:
                infos = admit(files, self._inventory, self.config.resume, report)
            except JournalError:
                # The claims were not written: these files go nowhere, and
                # _conclude accounts for them.
                self._unbatched += [f for f in files if f.path not in decided]
                raise
            if infos:
                return Batch(self._next_batch, tuple(infos))

    # ------------------------------------------------------------ messages

    def _handle(self, message: FromExecutor) -> None:
        if isinstance(message, Outcomes):
            for done in message.done:
                self._file_done(done)
        elif isinstance(message, FileDone):
            self._file_done(message)
        elif isinstance(message, Ready):
            self._idle.append(message.executor)
        elif isinstance(message, BatchDone):
            self._book.batch_done(message.executor)
        elif isinstance(message, AssociationEvent):
            self._association(message)
        elif isinstance(message, Finished):
            self._ended(message.executor, message.stats)
            # A worker that stopped early (abort, no journal) hands back what it held.
            for item in self._book.unfinished(message.executor):
                self._record_unsent(item, self._unsent_reason(), Outcome.SKIPPED)
            self._book.release(message.executor)
        elif isinstance(message, ExecutorLost):
            self._lost(message)
        elif isinstance(message, JournalFailed):
            self._journal_lost(message.reason)
        elif isinstance(message, Note):
            if message.level == "info":
                self.hooks.log(message.level, message.text)
            else:
                self._event(message.level, message.text)

    def _file_done(self, message: FileDone) -> None:
        if message.cause is Cause.INTERRUPTED:
            # The executor stopped when told to; the run knows why.
            message.result.reason = self._unsent_reason()
        item = self._book.file_done(message.executor, message.result.path)
        size_mtime = None if item is None else (item.size, item.mtime)
        self._record(message.result, message.cause, not message.journaled, size_mtime=size_mtime)

    def _ended(self, executor: int, stats: WorkerStats | None) -> None:
        self._live.discard(executor)
        while executor in self._idle:  # a local worker asks for two batches at first
            self._idle.remove(executor)
        if stats is not None:
            self.summary.workers.append(stats)

    def _lost(self, message: ExecutorLost) -> None:
        """An executor died: account for whatever it had not reported."""
        self._deaths += 1
        stats = message.stats
        stats.files = self._stored_by.get(message.executor, 0)
        self._ended(message.executor, stats)
        retry, given_up = self._book.executor_lost(message.executor, message.may_retry)
        text = (
            f"worker {message.executor} (pid {stats.pid}) died ({message.how})"
            if message.may_retry
            else message.how
        )
        if retry is not None:
            text += f"; its {len(retry.files)} unfinished file(s) go to another worker"
        self._event("error", text)
        self.summary.problems.append(text)
        if message.may_retry:
            why = (
                f"not sent: worker died ({message.how}) while holding this file, "
                "and it had already been handed back once"
            )
        else:
            why = f"not sent: {message.how}"
        for item in given_up:
            if self._stopping:
                reason = self._unsent_reason()
                if not message.may_retry:
                    reason += f" ({message.how})"
                self._record_unsent(item, reason, Outcome.SKIPPED, message.executor)
            else:
                self._record_unsent(item, why, Outcome.FAILED, message.executor)

    def _association(self, event: AssociationEvent) -> None:
        summary = self.summary
        worker, kind, detail = event.executor, event.kind, event.detail
        if kind is AssociationKind.OPENED:
            summary.associations_opened += 1
            self.hooks.log("info", f"worker {worker}: association opened with {detail}")
        elif kind is AssociationKind.RELEASED:
            self.hooks.log("info", f"worker {worker}: association released with {detail}")
        elif kind is AssociationKind.RETRY:
            summary.retries += 1
            self.hooks.log("warning", f"worker {worker}: {detail}")
        elif kind is AssociationKind.ABORTED:
            summary.associations_aborted += 1
            self.hooks.log("warning", f"worker {worker}: association aborted: {detail}")
        else:  # rejected or failed: none could be made
            summary.associations_failed += 1
            if kind is AssociationKind.REJECTED:
                summary.associations_rejected += 1
            summary.association_errors.append(detail)
            self.hooks.log("error", f"worker {worker}: {detail}")

    # ------------------------------------------------------------ migration controls

    def _start_controls(self) -> str | None:
        """Read --schedule and open --metrics-port, before the walk: a mistake stops the run.

        Returns what is wrong, if something is.
        """
        config = self.config
        if config.schedule is not None:
            try:
                self._pacer = Pacer(
                    parse_schedule(config.schedule), config.max_rate_mb_s, clock_from_environment()
                )
            except ScheduleError as exc:
                return str(exc)
        self.summary.pauses = self._pacer.pauses
        if config.metrics_port is not None:
            from .metrics import MetricsError, MetricsServer, SendCollector

            try:
                collector = SendCollector(self.summary, self._live_state)
                self._metrics = MetricsServer(
                    config.metrics_address, config.metrics_port, collector
                )
            except MetricsError as exc:
                return str(exc)
            self.hooks.log(
                "info",
                f"metrics: http://{config.metrics_address}:{self._metrics.port}/metrics",
            )
        return None

    def _control(self, backend: Backend, walking: bool) -> None:
        """Once per loop: the schedule and SIGUSR1, the rate, the order's pre-pass, metrics."""
        pacer = self._pacer
        while self._pause_toggles:
            self._pause_toggles -= 1
            pacer.toggle_manual()
        for level, text in pacer.update():
            if level == "info":
                self.hooks.log(level, text)
            else:
                self._event(level, text)
        if pacer.rate_mb_s != self._applied_rate:
            # Executors take their rate when they start: the ones started
            # before are replaced as they come free (_holding), so the change
            # holds from their next batch on.
            self._applied_rate = pacer.rate_mb_s
            self._generation += 1
            backend.set_rate(pacer.rate_mb_s * 1e6)
        if self._ordered and self._queue is None and not walking and not self._stopping:
            self._plan_order()
        if self._metrics is not None:
            self._metrics.serve()

    def _holding(self, backend: Backend) -> bool:
        """Whether to hold dispatching now: paused, or the order not known yet.

        Executors with nothing to do while paused, or started at an earlier
        rate, are stopped: they release their associations (PS3.8 7.2), and
        new ones start when there is work and the run may go on.
        """
        paused = self._pacer.paused
        for executor in list(self._idle):
            if paused or self._generation_of.get(executor, self._generation) != self._generation:
                self._idle.remove(executor)
                backend.assign(executor, Stop())
        return paused or (self._ordered and self._queue is None)

    def _plan_order(self) -> None:
        """The pre-pass of --order/--priority-list: a header read per directory, then the plan."""
        assert self._inventory is not None
        directories = self._inventory.pending_directories()
        started = time.monotonic()
        interrupts = self.interrupts

        def between() -> bool:
            if self._metrics is not None:
                self._metrics.serve()
            return self.interrupts == interrupts  # Ctrl-C: the loop stops the run

        from .order import Order, StudyQueue, plan_order, survey_groups

        groups, mixed = survey_groups(directories, between)
        if self.interrupts != interrupts:
            return
        plan = plan_order(groups, Order(self.config.order), self.config.priority_list)
        self._queue = StudyQueue([group.directory for group in plan.groups])
        text = (
            f"order {self.config.order}: {len(directories)} directories ordered by their studies "
            f"in {time.monotonic() - started:.1f} s"
        )
        if self.config.priority_list:
            text += f"; {plan.prioritized} hold studies of the priority list and go first"
        self.hooks.log("info", text)
        if plan.unmatched:
            shown = ", ".join(plan.unmatched[:5]) + (" ..." if len(plan.unmatched) > 5 else "")
            self.hooks.log(
                "warning",
                f"{len(plan.unmatched)} priority list entries match no study among the files "
                f"to send (already stored, or not in the inputs): {shown}",
            )
        for directory in mixed[:10]:
            self.hooks.log(
                "warning",
                f"{directory} holds more than one study: it goes out as one, where its most "
                "urgent study would",
            )

    def _live_state(self) -> Live:
        walker = self._walker
        in_flight = self._book.outstanding
        found = 0 if walker is None else walker.walk.found
        from .metrics import Live

        return Live(
            in_flight=in_flight,
            remaining=max(0, found - self.summary.found),
            paused=self._pacer.paused,
            rate_limit_bytes=self._applied_rate * 1e6,
            finished=self._over,
        )

    def _linger(self) -> None:
        """Keep answering scrapes for --metrics-linger seconds (Ctrl-C ends it)."""
        if self._metrics is None or self.config.metrics_linger <= 0:
            return
        interrupts = self.interrupts
        previous = _set_sigint(self._on_sigint)
        try:
            deadline = time.monotonic() + self.config.metrics_linger
            while self.interrupts == interrupts and time.monotonic() < deadline:
                self._metrics.serve(min(0.2, max(0.0, deadline - time.monotonic())))
        finally:
            _set_sigint(previous)

    def _on_sigusr1(self, signum: int, frame: FrameType | None) -> None:
        self._pause_toggles += 1

    # ------------------------------------------------------------ signals

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.interrupts += 1

    def _check_interrupts(self, backend: Backend) -> None:
        if self.interrupts >= 1 and not self._stopping:
            self.summary.interrupted = True
            self._event(
                "warning",
                "interrupted (Ctrl-C): no new files are dispatched; files in "
                "flight finish and associations are released. Ctrl-C again to abort.",
            )
            self._halt(backend)
        if self.interrupts >= 2 and not self._aborting:
            self._aborting = True
            self._event("warning", "second Ctrl-C: aborting associations now")
            backend.abort()

    def _halt(self, backend: Backend) -> None:
        """Dispatch nothing more; each executor stops after its file in flight."""
        self._stopping = True
        for item in self._book.drop_retries():
            self._record_unsent(item, self._unsent_reason(), Outcome.SKIPPED)
        for executor in self._idle:
            backend.assign(executor, Stop())
        self._idle.clear()
        backend.stop()

    def _journal_lost(self, reason: str) -> None:
        """The inventory cannot be written (here, or by an executor): the run stops.

        Exit 3 with the reason, which names the file and what to do. What
        cannot be recorded now is sent again by the rerun; what the journal
        records is not.
        """
        if self._journal_error:
            return
        self._journal_error = reason
        self.summary.error = reason
        self._event("error", reason)

    # ------------------------------------------------------------ the end

    def _conclude(self, walker: Walker) -> None:
        """Account for what was found and never dispatched; say if nothing was there."""
        assert self._inventory is not None
        if self._stopping:
            reason, outcome = self._unsent_reason(), Outcome.SKIPPED
        else:
            reason = f"not sent: no worker left ({self._deaths} died)"
            outcome = Outcome.FAILED
        left: Iterable[Pending | FileInfo] = itertools.chain(
            self._book.drop_retries(), self._unbatched
        )
        for item in itertools.chain(left, self._inventory.pending()):
            self._record_unsent(item, reason, outcome)
        summary = self.summary
        for note in walker.walk.unsearched:
            summary.unsearched.append(note)
            self.hooks.log("warning", note.hint)
        if self._stopping and not walker.walk.done:
            stop = "interrupted (Ctrl-C)" if self.summary.interrupted else "stopped"
            self._event(
                "warning",
                f"{stop} while walking the inputs, after {walker.walk.found} "
                "files; the files not reached were not counted",
            )
        sent_or_known = (
            summary.count(Outcome.STORED)
            + summary.count(Outcome.WARNING)
            + summary.count(Outcome.FAILED)
            + summary.already_stored
            + summary.causes[Cause.DUPLICATE]
        )
        if not sent_or_known and not summary.interrupted and not summary.error:
            found = walker.walk.found
            if found:
                plural = "" if found == 1 else "s"
                why = [f"none of the {found} file{plural} found is DICOM"]
            else:
                why = ["no files found in the inputs"]
            why += [note.hint for note in walker.walk.unsearched]
            summary.nothing_to_send = "nothing to send: " + "; ".join(why)
            self.hooks.log("error", summary.nothing_to_send)
        if self._client is not None:
            summary.cluster = self._dask.summary()

    # ------------------------------------------------------------ bookkeeping

    def _decided(self, result: FileResult, info: FileInfo | None, cause: Cause) -> None:
        """An outcome decided by the walk or by an admission here (not by an executor)."""
        self._record(result, cause, journal=True, info=info)

    def _unsent_reason(self) -> str:
        """Why a file the run stopped before sending was not sent."""
        if self._journal_error and not self.summary.interrupted:
            return JOURNAL_STOP_REASON
        return INTERRUPTED_REASON

    def _already_stored(self, directory: str, count: int) -> None:
        self.summary.add_already_stored(count)
        self.hooks.already_stored(count)
        self.hooks.log("info", f"skipped {count} file(s) in {directory}: already stored (journal)")

    def _record_unsent(
        self,
        item: Pending | FileInfo,
        reason: str,
        outcome: Outcome,
        worker: int | None = None,
    ) -> None:
        if isinstance(item, FileInfo):
            result = FileResult.of(item, outcome, reason, worker=worker)
        else:
            result = FileResult(item.path, outcome, reason, worker=worker)
        cause = Cause.INTERRUPTED if reason in (INTERRUPTED_REASON, JOURNAL_STOP_REASON) else None
        self._record(result, cause, journal=True, size_mtime=(item.size, item.mtime))

    def _record(
        self,
        result: FileResult,
        cause: Cause | None,
        journal: bool,
        info: FileInfo | None = None,
        size_mtime: tuple[int, float] | None = None,
    ) -> None:
        """Account for one file's outcome: summary, console, progress, and the inventory.

        ``journal`` is False only for what an executor wrote itself.
        """
        self.summary.add(result, cause)
        if result.worker is not None and result.outcome in (Outcome.STORED, Outcome.WARNING):
            self._stored_by[result.worker] += 1
        self.hooks.result(result)
        self.hooks.progress(result)
        if journal:
            if size_mtime is None:
                size_mtime = (info.size, info.mtime) if info is not None else (0, 0.0)
            self._unjournalled.append((result, *size_mtime))
            if len(self._unjournalled) >= JOURNAL_BATCH:
                self._flush_journal()

    def _flush_journal(self) -> None:
        if self._inventory is not None and self._unjournalled and self._journal_writable:
            try:
                self._inventory.record_many(self._unjournalled)
            except JournalError as exc:
                # These outcomes, and the ones after, are in the summary only.
                self._journal_writable = False
                self._journal_lost(str(exc))
        self._unjournalled.clear()

    def _event(self, level: str, message: str) -> None:
        self.summary.events.append(message)
        self.hooks.log(level, message)


def _set_signal(signum: int, handler: Any) -> Any:
    """Install a signal handler; only the main thread may (a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signum, handler)


def _set_sigint(handler: Any) -> Any:
    """Install a SIGINT handler; only the main thread may (a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, handler)
