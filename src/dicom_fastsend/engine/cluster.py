"""``--cluster``: the same send, with study batches run as tasks on a Dask cluster.

The coordinator plans as usual (index, group by study, skip what the journal
holds); instead of local processes, Dask's distributed scheduler runs the
tasks. Each task holds a few batches and runs the same ``Worker`` loop as a
local worker process, so associations are kept across the task's studies and
files go out on the same streaming path. This module imports ``distributed``
and is itself imported only when a cluster is asked for.

Nothing may be lost when a Dask worker dies, so every outcome has two ways
home:

* While a task runs, it publishes each new outcome twice, first into a Dask
  ``Variable`` named after the task (kept by the scheduler, so it outlives the
  worker), then as a worker event the coordinator subscribes to (live
  progress, journal). Dask reruns the task of a lost worker elsewhere; the
  new attempt reads the Variable, re-reports those outcomes and sends only
  the files that have none. A file stored in the instant between the C-STORE-RSP
  and the Variable update is sent again: a duplicate, never a loss.
* A task's return value carries all of its outcomes. The coordinator counts
  each file once, whichever way it came first.

If Dask gives up on a task (distributed's ``allowed-failures``), each of its
files without an outcome is reported failed with the reason, so the rerun
sends it.

A task whose coordinator is gone (killed, crashed) stops after its file in
flight: the scheduler releases the keys of a client that disconnects, and a
running task whose key is released is marked cancelled on its worker (Dask
cannot interrupt it). The task looks after each file and at each
publication, so the outcomes lost with the coordinator, which a rerun sends
again, are those of the last FLUSH_INTERVAL and the file in flight per worker
thread, not the rest of each running batch.

The coordinator alone writes the journal here: the workers are on other
hosts, and SQLite must not be shared over a network file system.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import resource
import socket
import tempfile
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from msgspec.structs import replace as struct_replace

from .. import __version__
from ..errors import FastsendError
from ..io.header import FileInfo
from .inventory import Pending
from .messages import (
    Assign,
    AssociationEvent,
    AssociationKind,
    BatchDone,
    ExecutorLost,
    FileDone,
    Finished,
    FromExecutor,
    Note,
    Outcomes,
    Ready,
    Stop,
)
from .plan import Batch
from .results import Cause, FileResult, Outcome, WorkerStats
from .worker import INTERRUPTED_REASON, RateLimiter, Worker, WorkerConfig

if TYPE_CHECKING:
    from distributed import Client, Future

INSTALL_HINT = "pip install 'dicom-fastsend[cluster]'"
# Tasks submitted per worker thread: one running, one queued at the
# scheduler, so a thread that finishes starts the next task at once. A task
# is one batch (plan.BATCH_FILES files at most) and one association.
TASKS_PER_SLOT = 2
# How often a running task publishes its new outcomes (seconds), from a thread
# of its own. The events feed the progress bar and journal; the Variable
# bounds what a lost worker makes us send twice.
FLUSH_INTERVAL = 0.2
# The schemes distributed's comm layer knows; anything else is a typo.
SCHEMES = ("tcp://", "tls://", "ucx://", "ws://", "wss://", "inproc://")
# How long to wait for the first Dask worker when the scheduler has none yet.
WAIT_FOR_WORKERS = 30.0
READ_ERROR_PREFIX = "cannot read file"


class ClusterError(FastsendError):
    """The cluster cannot be used: distributed missing, scheduler unreachable, no workers."""


def connect(address: str, timeout: float) -> Client:
    """A client of the Dask scheduler at ``address``; ClusterError says what is wrong."""
    try:
        from distributed import Client
    except ImportError as exc:
        raise ClusterError(
            f"--cluster {address} needs Dask's distributed package, which is not installed "
            f"({exc}). Install it with: {INSTALL_HINT}"
        ) from None
    if "://" in address and not address.startswith(SCHEMES):
        raise ClusterError(
            f"--cluster {address}: not a Dask scheduler address; use tcp://HOST:8786 "
            "(or tls://HOST:8786 with TLS)"
        )
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(
            f"cannot reach the Dask scheduler at {address}: {exc}. Check the address and "
            "that `dask scheduler` is running there and reachable from this host"
        ) from None
    try:
        client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS)
    except (OSError, TimeoutError) as exc:
        client.close()
        raise ClusterError(
            f"the Dask scheduler at {address} has no workers after {WAIT_FOR_WORKERS:g} s "
            f"({exc}). Start some with: dask worker {address}"
        ) from None
    return client


# ---------------------------------------------------------------- the task side


@dataclass(frozen=True, slots=True)
class ClusterTask:
    """What one Dask task gets: its batch (of headers read here) and the names it reports under."""

    task_id: int
    batches: tuple[Batch, ...]
    config: WorkerConfig  # worker = task_id; no journal (the coordinator keeps it)
    topic: str  # the event topic the coordinator subscribes to
    progress: str  # the Variable holding this task's outcomes so far
    stop: str  # the Event set on Ctrl-C
    version: str = __version__  # the coordinator's; a worker with another refuses


@dataclass(slots=True)
class TaskReport:
    """A task attempt's outcomes: its return value, or one of its progress events."""

    task_id: int
    attempt: str  # unique per attempt: a rerun after a lost worker has a new one
    host: str
    address: str  # the Dask worker's address
    pid: int
    results: list[FileResult] = field(default_factory=list)
    causes: dict[str, Cause] = field(default_factory=dict)  # by path, where one was given
    # (sequence number within the attempt, kind, message): association events
    messages: list[tuple[int, AssociationKind, str]] = field(default_factory=list)
    stats: WorkerStats | None = None  # only in the return value


class _TaskChannel:
    """Stands in for the worker's pipe: batches come from the task, outcomes go to Dask.

    A thread of its own publishes new outcomes every FLUSH_INTERVAL, also
    while the worker waits on a slow C-STORE or a retry's backoff, and it
    passes a Ctrl-C on the coordinator (the stop Event) to the worker.
    """

    def __init__(self, task: ClusterTask, report: TaskReport, done: list[FileResult]) -> None:
        from distributed import Event, Variable, get_worker

        self._task = task
        self._report = report
        self._dask_worker = get_worker()
        self._key = self._dask_worker.get_current_task()  # only in the task's own thread
        self._progress = Variable(task.progress)
        self._stop = Event(task.stop)
        # Guards report.results (cumulative: what the Variable holds) and the
        # two lists of what is new since the last publication.
        self._lock = threading.Lock()
        self._publishing = threading.Lock()  # one publication at a time, in order
        self._new_results: list[FileResult] = list(done)  # re-reported by a rerun
        self._new_messages: list[tuple[int, AssociationKind, str]] = []
        self._closed = threading.Event()
        self._publisher = threading.Thread(
            target=self._publish_periodically, name="fastsend-publish", daemon=True
        )
        self.worker: Worker | None = None
        paths = {r.path for r in done}
        self._batches = deque(
            struct_replace(b, files=files)
            for b in task.batches
            if (files := tuple(f for f in b.files if f.path not in paths))
        )

    def start(self, worker: Worker) -> None:
        self.worker = worker
        self.flush()  # at once: the coordinator learns where the task runs
        self._publisher.start()

    def close(self) -> None:
        self._closed.set()
        if self._publisher.is_alive():
            self._publisher.join()
        self.flush()

    def _publish_periodically(self) -> None:
        while not self._closed.wait(FLUSH_INTERVAL):
            self.flush()

    def send(self, message: Any) -> None:
        if isinstance(message, Outcomes):
            for done in message.done:
                self.send(done)
            return
        if isinstance(message, FileDone) and self.worker is not None and self.abandoned():
            self.worker.stopping = True  # nobody will record what it sends next
        with self._lock:
            if isinstance(message, FileDone):
                result = message.result
                if result.reason.startswith(READ_ERROR_PREFIX):
                    result.reason += (
                        f" (on {self._report.host}; with --cluster, every Dask worker must see "
                        "the files at the paths the coordinator indexed)"
                    )
                self._report.results.append(result)
                if message.cause is not None:
                    self._report.causes[result.path] = message.cause
                self._new_results.append(result)
            elif isinstance(message, AssociationEvent):
                entry = (len(self._report.messages), message.kind, message.detail)
                self._report.messages.append(entry)
                self._new_messages.append(entry)

    def recv(self) -> Assign | Stop:
        if self._stop.is_set() or not self._batches:
            return Stop()
        return Assign(self._batches.popleft())

    def abandoned(self) -> bool:
        """Whether the scheduler has let go of this task: the client that submitted it
        (the coordinator) is gone, or it was cancelled.

        The worker keeps running a task whose key was released, in state
        "cancelled", until it returns; a lookup in its own state, no round trip.
        """
        try:
            task = self._dask_worker.state.tasks.get(self._key)
        except AttributeError:  # a distributed without Worker.state: cannot tell
            return False
        return task is not None and task.state == "cancelled"

    def remaining(self) -> list[Pending | FileInfo]:
        return [f for b in self._batches for f in b.files]

    def flush(self) -> None:
        """Publish new outcomes: the Variable first, so a rerun never misses one we announced."""
        with self._publishing:
            with self._lock:
                results, self._new_results = self._new_results, []
                messages, self._new_messages = self._new_messages, []
                cumulative = pickle.dumps(self._report.results) if results else b""
            abandoned = self.abandoned()
            stopping = abandoned or self._stop.is_set()
            if cumulative and not stopping:
                # Not after a stop: the coordinator may be gone and have deleted
                # the Variable, which this would create again, for nobody.
                self._progress.set(cumulative)
            if not abandoned:  # else nobody listens
                report = self._report
                causes = {r.path: report.causes[r.path] for r in results if r.path in report.causes}
                event = TaskReport(
                    report.task_id, report.attempt, report.host, report.address, report.pid,
                    results, causes, messages,
                )  # fmt: skip
                self._dask_worker.log_event(self._task.topic, pickle.dumps(event))
        if stopping and self.worker is not None:
            # Ctrl-C on the coordinator, or the coordinator is gone: after the file in flight.
            self.worker.stopping = True


class _Budget:
    """The RateLimiter's shared value, private to one task."""

    value = 0.0


def run_task(task: ClusterTask) -> TaskReport:
    """The body of one Dask task: the local worker loop over the task's batches."""
    from distributed import Variable, get_worker

    if task.version != __version__:
        raise RuntimeError(
            f"dicom-fastsend {__version__} on this Dask worker, {task.version} on the "
            "coordinator: install the same version everywhere"
        )
    dask_worker = get_worker()
    report = TaskReport(
        task.task_id, uuid.uuid4().hex, socket.gethostname(), dask_worker.address, os.getpid()
    )
    # Outcomes of an earlier attempt whose worker was lost: keep them, skip their files.
    done: list[FileResult] = pickle.loads(Variable(task.progress).get())
    report.results.extend(done)
    channel = _TaskChannel(task, report, done)
    cpu = resource.getrusage(resource.RUSAGE_THREAD)
    with contextlib.ExitStack() as stack:
        limiter = RateLimiter(None, None, 0.0)
        if task.config.max_rate > 0:
            lock = stack.enter_context(
                tempfile.NamedTemporaryFile(prefix="fastsend-rate-", suffix=".lock")
            )
            limiter = RateLimiter(_Budget(), lock.name, task.config.max_rate)
            stack.callback(limiter.close)
        worker = Worker(task.config, channel, limiter)
        channel.start(worker)
        try:
            worker.run()
            # A graceful stop leaves batches unsent; they are reported, not dropped.
            for item in channel.remaining():
                unsent = FileResult(
                    item.path, Outcome.SKIPPED, INTERRUPTED_REASON, worker=task.task_id
                )
                if isinstance(item, FileInfo):
                    unsent = FileResult.of(
                        item, Outcome.SKIPPED, INTERRUPTED_REASON, worker=task.task_id
                    )
                channel.send(FileDone(task.task_id, unsent, False, Cause.INTERRUPTED))
        finally:
            channel.close()
    # The Dask worker is a shared, long-lived process: count this thread's CPU only.
    used = resource.getrusage(resource.RUSAGE_THREAD)
    report.stats = worker.stats
    report.stats.cpu_user_seconds = used.ru_utime - cpu.ru_utime
    report.stats.cpu_system_seconds = used.ru_stime - cpu.ru_stime
    return report


# ---------------------------------------------------------------- the coordinator side


@dataclass
class _TaskState:
    task: ClusterTask
    executor: int
    files: int
    attempts: dict[str, TaskReport] = field(default_factory=dict)  # by attempt id
    reported: set[str] = field(default_factory=set)  # paths with an outcome, while it runs
    state: str = "queued"  # queued, running, finished, failed, cancelled


class DaskBackend:
    """Runs each batch as a Dask task; one executor is one task.

    Dask, not this backend, reruns a task whose worker was lost (up to its
    allowed-failures); the rerun reads what the lost attempt published and
    sends only the files without an outcome, so an outcome may arrive twice
    (from the progress events and the return value), and each file counts
    once. A task Dask gives up on, or that is cancelled, is reported lost
    without a retry: the coordinator fails (or, after Ctrl-C, skips) its
    files that have no outcome.
    """

    reads_headers = False  # the Dask workers cannot reach the coordinator's SQLite

    def __init__(
        self,
        client: Client,
        address: str,
        session_id: str,
        config: WorkerConfig,
        max_rate: float,
        log: Callable[[str, str], None],
    ) -> None:
        from distributed import Event

        self.client = client
        self.address = address
        self._config = config
        self._log = log
        # Worker threads across the cluster, as the run starts: how many tasks run at once.
        threads: dict[str, int] = client.nthreads()
        self.dask_workers = len(threads)
        self.slots = max(1, sum(threads.values()))
        # --max-rate: at most `slots` tasks run at once, so each gets an equal share.
        self._max_rate = max_rate / self.slots
        prefix = f"fastsend-{session_id}"
        self._prefix = prefix
        self._topic, self._stop_name = f"{prefix}-events", f"{prefix}-stop"
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._outbox: list[FromExecutor] = []
        self._tasks: dict[int, _TaskState] = {}  # by executor (= task id)
        self._futures: dict[Future[TaskReport], int] = {}
        self._finished: set[int] = set()  # tasks whose late progress events are ignored
        self._next = 0
        Event(self._stop_name, client=client).clear()
        client.subscribe_topic(self._topic, self._inbox.put)
        self._log(
            "info",
            f"cluster {address}: {self.slots} worker thread(s) on {self.dask_workers} "
            "Dask worker(s)",
        )

    @property
    def target(self) -> int:
        """Tasks to keep submitted: one running and one queued per worker thread."""
        return self.slots * TASKS_PER_SLOT

    def add_executor(self) -> int:
        executor = self._next
        self._next += 1
        self._outbox.append(Ready(executor))
        return executor

    def set_rate(self, bytes_per_second: float) -> None:
        """A --schedule window's rate, for the tasks submitted from now on (each one batch)."""
        self._max_rate = bytes_per_second / self.slots

    def assign(self, executor: int, message: Assign | Stop) -> None:
        from distributed import Variable

        if isinstance(message, Stop):
            self._outbox.append(Finished(executor, None))
            return
        batch = message.batch
        task = ClusterTask(
            executor,
            (batch,),
            struct_replace(
                self._config, worker=executor, max_rate=self._max_rate, journal_path=None
            ),
            self._topic,
            f"{self._prefix}-progress-{executor}",
            self._stop_name,
        )
        self._tasks[executor] = _TaskState(task, executor, len(batch.files))
        Variable(task.progress, client=self.client).set(pickle.dumps([]))
        future = self.client.submit(
            run_task, task, key=f"{self._prefix}-task-{executor}", pure=False
        )
        self._futures[future] = executor
        future.add_done_callback(self._inbox.put)

    def poll(self, timeout: float) -> list[FromExecutor]:
        if not self._outbox:
            try:
                self._take(self._inbox.get(timeout=timeout))
            except queue.Empty:
                pass
        while True:
            try:
                self._take(self._inbox.get_nowait())
            except queue.Empty:
                break
        messages, self._outbox = self._outbox, []
        return messages

    def _take(self, item: Any) -> None:
        if isinstance(item, tuple):  # (timestamp, message): a progress event
            try:
                report = pickle.loads(item[1])
            except Exception as exc:  # a worker with other code; its task says more
                self._log("warning", f"cluster: unreadable progress event: {exc!r}")
                return
            # A task already accounted for (finished, failed or cancelled) may
            # still publish: a cancelled one Dask could not interrupt goes on
            # until its file in flight is done. Its files have their outcome.
            if report.task_id in self._tasks and report.task_id not in self._finished:
                self._merge(report)
            return
        executor = self._futures.pop(item)
        self._done(executor, item)

    def _merge(self, report: TaskReport) -> None:
        state = self._tasks[report.task_id]
        if report.attempt not in state.attempts:
            if state.attempts:
                lost = ", ".join(f"{a.address} on {a.host}" for a in state.attempts.values())
                self._outbox.append(
                    Note(
                        "error",
                        f"cluster task {report.task_id}: Dask worker {lost} was lost; the task "
                        f"runs again on {report.address} ({report.host}), sending only the "
                        "files that have no outcome yet",
                    )
                )
            state.attempts[report.attempt] = replace(report, results=[], causes={}, messages=[])
            state.state = "running"
        tally = state.attempts[report.attempt]
        for _, kind, detail in report.messages:
            self._outbox.append(AssociationEvent(report.task_id, kind, detail))
        for result in report.results:
            if result.path in state.reported:
                continue
            state.reported.add(result.path)
            tally.results.append(result)
            cause = report.causes.get(result.path)
            self._outbox.append(FileDone(report.task_id, result, False, cause))

    def _done(self, executor: int, future: Future[TaskReport]) -> None:
        state = self._tasks[executor]
        report: TaskReport | None = None
        error: BaseException | None = None
        if future.status == "finished":
            try:
                report = future.result()
            except Exception as exc:  # e.g. the result cannot be unpickled here
                error = exc
        if report is not None:
            # Association events already came as progress events.
            self._merge(replace(report, messages=[]))
            state.state = "finished"
            for attempt, seen in state.attempts.items():
                if attempt != report.attempt:
                    stats = _lost_stats(executor, seen, "died (Dask worker lost)")
                    self._outbox.append(Finished(executor, stats))
            self._outbox.append(BatchDone(executor, state.task.batches[0].batch_id))
            self._outbox.append(Finished(executor, report.stats))
        else:
            cancelled = future.status == "cancelled"
            state.state = "cancelled" if cancelled else "failed"
            if cancelled:
                why = (
                    "the Dask task was cancelled (second Ctrl-C, or by the scheduler or "
                    "another client); a file in flight may or may not be stored"
                )
            else:
                if error is None:
                    with contextlib.suppress(Exception):
                        error = future.exception(timeout=5)
                why = _describe_task_error(error)
            ended = "interrupted" if cancelled else "died (Dask task failed)"
            attempts = list(state.attempts.values())
            for seen in attempts[:-1]:
                self._outbox.append(Finished(executor, _lost_stats(executor, seen, ended)))
            stats = (
                _lost_stats(executor, attempts[-1], ended)
                if attempts
                else WorkerStats(executor, 0, exit=ended)
            )
            self._outbox.append(
                ExecutorLost(executor, f"cluster task {executor} failed: {why}", False, stats)
            )
        self._finished.add(executor)
        state.reported.clear()  # memory follows the tasks running, not the archive

    def stop(self) -> None:
        """Ctrl-C once: tasks check the stop Event between files."""
        from distributed import Event

        Event(self._stop_name, client=self.client).set()

    def abort(self) -> None:
        """Ctrl-C twice: cancel the tasks (Dask cannot interrupt a running one)."""
        self.client.cancel(list(self._futures), force=True)

    def close(self) -> None:
        """Each step on its own: a scheduler that has gone away must not hide why the
        run ended, nor stop the other steps."""
        from distributed import Event, Variable

        with contextlib.suppress(Exception):
            self.client.unsubscribe_topic(self._topic)
        for state in self._tasks.values():
            with contextlib.suppress(Exception):
                Variable(state.task.progress, client=self.client).delete()
        if not self._futures:
            with contextlib.suppress(Exception):
                Event(self._stop_name, client=self.client).clear()  # deletes it
        else:
            # A task Dask could not interrupt (second Ctrl-C) is still running
            # somewhere: the stop stays set so it ends after its file in
            # flight. Its name is this session's alone.
            with contextlib.suppress(Exception):
                Event(self._stop_name, client=self.client).set()

    def summary(self) -> dict[str, Any]:
        """Where each batch ran: the summary's ``cluster`` section."""
        return {
            "scheduler": self.address,
            "dask_workers": self.dask_workers,
            "tasks": [
                {
                    "task": executor,
                    "state": state.state,
                    "files": state.files,
                    "batches": [
                        {"batch": b.batch_id, "files": len(b.files)} for b in state.task.batches
                    ],
                    "attempts": [
                        {
                            "host": a.host,
                            "worker": a.address,
                            "pid": a.pid,
                            "files_reported": len(a.results),
                        }
                        for a in state.attempts.values()
                    ],
                }
                for executor, state in sorted(self._tasks.items())
            ],
        }


def _lost_stats(task_id: int, attempt: TaskReport, ended: str) -> WorkerStats:
    """Statistics of an attempt that returned nothing, from the outcomes it published."""
    done = [r for r in attempt.results if r.outcome in (Outcome.STORED, Outcome.WARNING)]
    return WorkerStats(
        task_id,
        attempt.pid,
        files=len(done),
        bytes_sent=sum(r.bytes_sent for r in done),
        exit=ended,
        host=attempt.host,
    )


def _describe_task_error(error: BaseException | None) -> str:
    name = type(error).__name__
    if name == "KilledWorker":
        return (
            f"KilledWorker: Dask workers died running it more often than distributed's "
            f"allowed-failures ({error}); rerun to send the files that have no outcome"
        )
    if isinstance(error, ModuleNotFoundError):
        return f"{error}: install dicom-fastsend on every Dask worker"
    return f"{name}: {error}"
