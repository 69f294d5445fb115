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

The coordinator alone writes the journal here: the workers are on other
hosts, and SQLite must not be shared over a network file system.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import queue
import resource
import socket
import tempfile
import threading
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import FastsendError
from .header import FileInfo
from .plan import SLICES_PER_WORKER, Batch, group_by_study, make_batches, pack_tasks
from .results import FileResult, Outcome, WorkerStats
from .worker import INTERRUPTED_REASON, RateLimiter, Worker, WorkerConfig

if TYPE_CHECKING:
    from distributed import Client, Future

INSTALL_HINT = "pip install 'dicom-fastsend[cluster]'"
# Tasks per worker thread: enough that a fast worker takes more of them while
# a slow one finishes (Dask hands out queued tasks as threads free up), few
# enough that opening one association per task costs nothing that matters.
TASKS_PER_SLOT = 4
# Files per task at most (about): a task republishes all its outcomes so far
# into its Variable, so a task of a million files would pickle a growing list
# every FLUSH_INTERVAL. Large archives get more, smaller tasks instead.
MAX_FILES_PER_TASK = 500
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
    """What one Dask task gets: its batches and the names it reports under."""

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
    # (sequence number within the attempt, kind, message): association events
    messages: list[tuple[int, str, str]] = field(default_factory=list)
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
        self._progress = Variable(task.progress)
        self._stop = Event(task.stop)
        # Guards report.results (cumulative: what the Variable holds) and the
        # two lists of what is new since the last publication.
        self._lock = threading.Lock()
        self._publishing = threading.Lock()  # one publication at a time, in order
        self._new_results: list[FileResult] = list(done)  # re-reported by a rerun
        self._new_messages: list[tuple[int, str, str]] = []
        self._closed = threading.Event()
        self._publisher = threading.Thread(
            target=self._publish_periodically, name="fastsend-publish", daemon=True
        )
        self.worker: Worker | None = None
        paths = {r.path for r in done}
        self._batches = deque(
            replace(b, files=files)
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
        kind = message[0]
        with self._lock:
            if kind == "result":
                result: FileResult = message[2]
                if result.reason.startswith(READ_ERROR_PREFIX):
                    result.reason += (
                        f" (on {self._report.host}; with --cluster, every Dask worker must see "
                        "the files at the paths the coordinator indexed)"
                    )
                self._report.results.append(result)
                self._new_results.append(result)
            elif kind == "association":
                entry = (len(self._report.messages), message[2], message[3])
                self._report.messages.append(entry)
                self._new_messages.append(entry)

    def recv(self) -> tuple[Any, ...]:
        if self._stop.is_set() or not self._batches:
            return ("stop",)
        return ("batch", self._batches.popleft())

    def remaining(self) -> list[FileInfo]:
        return [f for b in self._batches for f in b.files]

    def flush(self) -> None:
        """Publish new outcomes: the Variable first, so a rerun never misses one we announced."""
        with self._publishing:
            with self._lock:
                results, self._new_results = self._new_results, []
                messages, self._new_messages = self._new_messages, []
                cumulative = pickle.dumps(self._report.results) if results else b""
            stopping = self._stop.is_set()
            if cumulative and not stopping:
                # Not after a stop: the coordinator may be gone and have deleted
                # the Variable, which this would create again, for nobody.
                self._progress.set(cumulative)
            report = self._report
            event = TaskReport(
                report.task_id, report.attempt, report.host, report.address, report.pid,
                results, messages,
            )  # fmt: skip
            self._dask_worker.log_event(self._task.topic, pickle.dumps(event))
        if stopping and self.worker is not None:
            self.worker.stopping = True  # Ctrl-C on the coordinator: after the file in flight


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
            for info in channel.remaining():
                unsent = FileResult.of(
                    info, Outcome.SKIPPED, INTERRUPTED_REASON, worker=task.task_id
                )
                channel.send(("result", task.task_id, unsent))
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
    files: tuple[FileInfo, ...]
    attempts: dict[str, TaskReport] = field(default_factory=dict)  # by attempt id
    state: str = "queued"  # queued, running, finished, failed, cancelled


@dataclass
class ClusterHooks:
    """What the cluster run needs from the coordinator."""

    record: Callable[[FileResult, FileInfo], None]  # the coordinator journals it
    flush: Callable[[], None]  # commit what record() was given, once per merged message
    association: Callable[[int, str, str], None]
    event: Callable[[str, str], None]
    log: Callable[[str, str], None]
    interrupts: Callable[[], int]


class ClusterRun:
    """Submits the tasks, merges what comes back, accounts for every file."""

    def __init__(
        self,
        client: Client,
        address: str,
        session_id: str,
        hooks: ClusterHooks,
    ) -> None:
        self.client = client
        self.address = address
        self.session_id = session_id
        self.hooks = hooks
        self.workers: list[WorkerStats] = []
        self._infos: dict[str, FileInfo] = {}
        self._reported: set[str] = set()
        self._seen_messages: set[tuple[str, int]] = set()
        self._tasks: dict[int, _TaskState] = {}
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._stopping = False
        self._aborting = False
        # Worker threads across the cluster, as the run starts: how many tasks run at once.
        threads: dict[str, int] = client.nthreads()
        self.dask_workers = len(threads)
        self.slots = max(1, sum(threads.values()))

    def run(self, batches: Sequence[Batch], config: WorkerConfig, max_rate: float) -> None:
        from distributed import Event, Variable

        slots = self.slots
        prefix = f"fastsend-{self.session_id}"
        topic, stop = f"{prefix}-events", f"{prefix}-stop"
        Event(stop, client=self.client).clear()
        self.client.subscribe_topic(topic, self._inbox.put)
        futures: dict[Future[TaskReport], int] = {}
        for task_id, task_batches in enumerate(pack_tasks(batches, self.task_count(batches))):
            task = ClusterTask(
                task_id,
                task_batches,
                # --max-rate: at most `slots` tasks run at once, so each gets an equal share.
                replace(config, worker=task_id, max_rate=max_rate / slots, journal_path=None),
                topic,
                f"{prefix}-progress-{task_id}",
                stop,
            )
            files = tuple(f for b in task_batches for f in b.files)
            self._tasks[task_id] = _TaskState(task, files)
            self._infos.update((f.path, f) for f in files)
            Variable(task.progress, client=self.client).set(pickle.dumps([]))
            future = self.client.submit(run_task, task, key=f"{prefix}-task-{task_id}", pure=False)
            futures[future] = task_id
            future.add_done_callback(self._inbox.put)
        self.hooks.log(
            "info",
            f"cluster {self.address}: {len(futures)} tasks for {slots} worker thread(s) on "
            f"{self.dask_workers} Dask worker(s)",
        )
        try:
            self._loop(futures, stop)
        finally:
            # Each step on its own: a scheduler that has gone away must not
            # hide why the run ended, nor stop the other steps.
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic(topic)
            for state in self._tasks.values():
                with contextlib.suppress(Exception):
                    Variable(state.task.progress, client=self.client).delete()
            if all(state.state == "finished" for state in self._tasks.values()):
                with contextlib.suppress(Exception):
                    Event(stop, client=self.client).clear()  # deletes it
            else:
                # A task Dask could not interrupt (second Ctrl-C) is still
                # running somewhere: the stop stays set so it ends after its file
                # in flight. Its name is this session's alone.
                with contextlib.suppress(Exception):
                    Event(stop, client=self.client).set()

    def plan(self, infos: Sequence[FileInfo]) -> list[Batch]:
        """Study batches fine enough for tasks of at most about MAX_FILES_PER_TASK files."""
        per_share = MAX_FILES_PER_TASK * SLICES_PER_WORKER
        return make_batches(
            group_by_study(infos), max(self.slots, math.ceil(len(infos) / per_share))
        )

    def task_count(self, batches: Sequence[Batch]) -> int:
        """About TASKS_PER_SLOT tasks per worker thread, and none of more than
        MAX_FILES_PER_TASK files when the batches allow it."""
        files = sum(len(b.files) for b in batches)
        return max(self.slots * TASKS_PER_SLOT, math.ceil(files / MAX_FILES_PER_TASK))

    def _loop(self, futures: dict[Future[TaskReport], int], stop: str) -> None:
        from distributed import Event

        left = set(futures)
        while left:
            interrupts = self.hooks.interrupts()
            if interrupts >= 1 and not self._stopping:
                self._stopping = True
                # Tasks check this between files: the file in flight finishes,
                # queued tasks start, see it, and report their files unsent.
                Event(stop, client=self.client).set()
            if interrupts >= 2 and not self._aborting:
                self._aborting = True
                self.hooks.event("warning", "second Ctrl-C: cancelling the cluster's tasks now")
                self.client.cancel(list(left), force=True)
            try:
                item = self._inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            if isinstance(item, tuple):  # (timestamp, message): a progress event
                try:
                    report = pickle.loads(item[1])
                except Exception as exc:  # a worker with other code; its task says more
                    self.hooks.log("warning", f"cluster: unreadable progress event: {exc!r}")
                    continue
                self._merge(report)
                self.hooks.flush()
                continue
            left.discard(item)
            self._finished(futures[item], item)
            self.hooks.flush()

    def _merge(self, report: TaskReport) -> None:
        state = self._tasks[report.task_id]
        if report.attempt not in state.attempts:
            if state.attempts:
                lost = ", ".join(f"{a.address} on {a.host}" for a in state.attempts.values())
                self.hooks.event(
                    "error",
                    f"cluster task {report.task_id}: Dask worker {lost} was lost; the task "
                    f"runs again on {report.address} ({report.host}), sending only the files "
                    "that have no outcome yet",
                )
            state.attempts[report.attempt] = replace(report, results=[], messages=[])
            state.state = "running"
        tally = state.attempts[report.attempt]
        for seq, kind, message in report.messages:
            if (report.attempt, seq) not in self._seen_messages:
                self._seen_messages.add((report.attempt, seq))
                self.hooks.association(report.task_id, kind, message)
        for result in report.results:
            if result.path in self._reported:
                continue
            self._reported.add(result.path)
            tally.results.append(result)
            self._record(result)

    def _record(self, result: FileResult) -> None:
        self.hooks.record(result, self._infos[result.path])

    def _finished(self, task_id: int, future: Future[TaskReport]) -> None:
        state = self._tasks[task_id]
        report: TaskReport | None = None
        error: BaseException | None = None
        if future.status == "finished":
            try:
                report = future.result()
            except Exception as exc:  # e.g. the result cannot be unpickled here
                error = exc
        if report is not None:
            self._merge(report)
            state.state = "finished"
            if report.stats is not None:
                self.workers.append(report.stats)
            for attempt, seen in state.attempts.items():
                if attempt != report.attempt:
                    self.workers.append(_lost_stats(task_id, seen, "died (Dask worker lost)"))
            why = ""
        else:
            state.state = "cancelled" if future.status == "cancelled" else "failed"
            if future.status == "cancelled":
                why = (
                    "the Dask task was cancelled (second Ctrl-C, or by the scheduler or "
                    "another client)"
                )
            else:
                if error is None:
                    with contextlib.suppress(Exception):
                        error = future.exception(timeout=5)
                why = _describe_task_error(error)
            ended = "interrupted" if state.state == "cancelled" else "died (Dask task failed)"
            for seen in state.attempts.values():
                self.workers.append(_lost_stats(task_id, seen, ended))
        for info in state.files:
            if info.path in self._reported:
                continue
            if self._stopping:
                reason = INTERRUPTED_REASON
                if state.state == "cancelled" and state.attempts:
                    reason += " (task cancelled; a file in flight may or may not be stored)"
                result = FileResult.of(info, Outcome.SKIPPED, reason, worker=task_id)
            else:
                result = FileResult.of(
                    info,
                    Outcome.FAILED,
                    f"not sent: cluster task {task_id} failed: {why}",
                    worker=task_id,
                )
            self._reported.add(info.path)
            self._record(result)
        if why and not self._stopping:
            self.hooks.event("error", f"cluster task {task_id} failed: {why}")

    def summary(self) -> dict[str, Any]:
        """Where each batch ran: the summary's ``cluster`` section."""
        return {
            "scheduler": self.address,
            "dask_workers": self.dask_workers,
            "tasks": [
                {
                    "task": task_id,
                    "state": state.state,
                    "files": len(state.files),
                    "batches": [
                        {
                            "batch": b.batch_id,
                            "study_instance_uid": b.study_instance_uid,
                            "files": len(b.files),
                        }
                        for b in state.task.batches
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
                for task_id, state in sorted(self._tasks.items())
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
