"""The coordinator: index, plan, run worker processes, merge what they report.

Each worker has its own ``multiprocessing.Pipe``. A pipe rather than a shared
``multiprocessing.Queue`` because a Queue writes from a feeder thread: a
worker killed with SIGKILL can lose results it had already "sent", and a
shared work queue cannot tell which worker took a batch before dying. With a
pipe per worker, a result is in the pipe before the worker moves on, and the
coordinator hands each batch to a named worker, so it always knows who holds
what. ``multiprocessing.connection.wait`` watches the pipes and the process
sentinels together, so a death is seen at once.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import selectors
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import ForkContext, SpawnContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

from .config import SendConfig
from .contexts import plan_associations
from .errors import FastsendError
from .header import FileInfo
from .journal import Journal, JournalError, StoredEntry, destination_key
from .plan import Batch, Dispatcher, group_by_study, make_batches
from .prepare import Cause, prepare
from .results import FileResult, Outcome, SendSummary, WorkerStats
from .worker import INTERRUPTED_REASON, WorkerConfig, worker_main

Reporter = Callable[[FileResult], None]

# Seconds between the coordinator's journal checkpoints. The WAL grows by
# about 12 kB per outcome meanwhile: some 40 MB at 1,500 files a second.
CHECKPOINT_INTERVAL = 2.0
# Outcomes the coordinator decides are journalled in one transaction per this
# many (and whenever its loop comes round): an interrupted run of a million
# files must not pay a million commits.
JOURNAL_BATCH = 500


@dataclass
class _WorkerHandle:
    worker: int
    process: BaseProcess
    conn: Connection
    done: bool = False
    stats: WorkerStats | None = None
    # Connection.poll() builds and tears down a selector on every call (about
    # 40 us, once per result); a poll object made once answers in about 1 us.
    # A Connection reads whole messages and buffers nothing, so the pipe being
    # readable is the same as a message (or EOF) waiting.
    readable: select.poll = field(default_factory=select.poll)

    def __post_init__(self) -> None:
        self.readable.register(self.conn.fileno(), select.POLLIN)

    def pending(self) -> bool:
        return bool(self.readable.poll(0))


@dataclass
class Hooks:
    """What the coordinator tells the outside world as it goes."""

    result: Reporter = lambda result: None
    log: Callable[[str, str], None] = lambda level, message: None
    progress: Callable[[FileResult], None] = lambda result: None
    started: Callable[[int, int], None] = lambda files, size: None  # files, bytes to send


@dataclass
class Coordinator:
    config: SendConfig
    hooks: Hooks = field(default_factory=Hooks)
    summary: SendSummary = field(default_factory=SendSummary)
    interrupts: int = 0

    def __post_init__(self) -> None:
        # fork: a worker starts in milliseconds with everything already imported.
        # Safe only while this process runs no other thread (the CLI has none:
        # the progress bar is made without tqdm's monitor thread); a program
        # that embeds fastsend and has threads gets spawned workers instead.
        single_threaded = threading.active_count() == 1
        self._context: ForkContext | SpawnContext = (
            multiprocessing.get_context("fork")
            if single_threaded
            else multiprocessing.get_context("spawn")
        )
        self._selector = selectors.DefaultSelector()
        self._workers: dict[int, _WorkerHandle] = {}
        self._next_worker = 0
        self._restarts = 0
        self._stopping = False
        self._aborting = False
        self._shared_rate: Any = None  # RawValue("d"): the --max-rate budget
        self._rate_lock: str | None = None
        self._dispatcher = Dispatcher()
        self._plans: tuple[Any, ...] = ()
        self._client: Any = None  # a distributed.Client with --cluster
        # The coordinator's own journal connection, and the outcomes it decided
        # that are not committed yet (result, size, mtime).
        self._journal: Journal | None = None
        self._unjournalled: list[tuple[FileResult, int, float]] = []

    # ------------------------------------------------------------ public

    def run(self) -> SendSummary:
        summary = self.summary
        summary.started = time.time()
        previous = _set_sigint(self._on_sigint)
        try:
            if self.config.cluster is not None:
                # Before the walk, which can take long: an unreachable cluster
                # should stop the run at once, naming the address.
                from .cluster import ClusterError, connect

                try:
                    self._client = connect(self.config.cluster, self.config.peer.connect_timeout)
                except ClusterError as exc:
                    return self._cannot_start(exc)
            stored: dict[str, StoredEntry] = {}
            if self.config.journal is not None:
                # Also before the walk: a journal that cannot be used stops the
                # run at once, naming the file. This also creates a new one
                # before any worker opens it.
                try:
                    stored = self._open_journal(self.config.journal)
                except JournalError as exc:
                    return self._cannot_start(exc)
            prepared = prepare(
                self.config, self._prepared, stored or None, lambda: self.interrupts > 0
            )
            infos = prepared.to_send
            if prepared.interrupted:
                summary.interrupted = True
                self._event(
                    "warning",
                    f"interrupted (Ctrl-C) while indexing, after {len(infos)} readable files; "
                    "nothing was sent",
                )
                for info in infos:
                    self._record(_interrupted(info), info)
                return summary
            for note in prepared.unsearched:
                summary.unsearched.append((note.path, note.count))
                self.hooks.log("warning", note.hint)
            if prepared.nothing_to_send:
                summary.nothing_to_send = prepared.nothing_to_send
                self.hooks.log("error", prepared.nothing_to_send)
            if infos:
                self._send_all(infos)
        finally:
            _set_sigint(previous)
            if self._client is not None:
                self._client.close()
            self._close_journal()
            summary.finished = time.time()
        return summary

    # ------------------------------------------------------------ planning

    def _cannot_start(self, exc: FastsendError) -> SendSummary:
        """End the run before the walk, naming why (exit code 3)."""
        self.summary.error = str(exc)
        self.hooks.log("error", self.summary.error)
        return self.summary

    def _open_journal(self, path: Path) -> dict[str, StoredEntry]:
        """Open (or create) the journal: what it says this destination holds, if resuming."""
        self._journal = Journal(path, destination_key(self.config.peer), self.summary.session_id)
        if not self.config.resume:
            self.hooks.log("info", f"journal {path}: not consulted (--no-resume), still written")
            return {}
        stored = self._journal.stored()
        self.hooks.log(
            "info", f"journal {path}: {len(stored)} instance(s) already stored at this destination"
        )
        return stored

    def _close_journal(self) -> None:
        """Commit what is pending and close the coordinator's connection.

        Its close, the last one, checkpoints what is left (see journal.py).
        """
        if self._journal is not None:
            self._flush_journal()
            self._journal.close()
            self._journal = None

    def _flush_journal(self) -> None:
        if self._journal is not None and self._unjournalled:
            self._journal.record_many(self._unjournalled)
        self._unjournalled.clear()

    # ------------------------------------------------------------ signals

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.interrupts += 1

    def _check_interrupts(self) -> None:
        if self.interrupts >= 1 and not self._stopping:
            self._stopping = True
            self.summary.interrupted = True
            self._event(
                "warning",
                "interrupted (Ctrl-C): no new files are dispatched; files in "
                "flight finish and associations are released. Ctrl-C again to abort.",
            )
            for info in self._dispatcher.stop():
                self._record(_interrupted(info), info)
            self._signal_workers(signal.SIGUSR1)
        if self.interrupts >= 2 and not self._aborting:
            self._aborting = True
            self._event("warning", "second Ctrl-C: aborting associations now")
            self._signal_workers(signal.SIGUSR2)

    def _signal_workers(self, signum: int) -> None:
        for handle in self._workers.values():
            if not handle.done and handle.process.pid is not None:
                try:
                    os.kill(handle.process.pid, signum)
                except ProcessLookupError:
                    pass

    # ------------------------------------------------------------ bookkeeping

    def _prepared(self, result: FileResult, info: FileInfo | None, cause: Cause) -> None:
        """An outcome decided while preparing; "already stored" is in the journal already."""
        self._record(result, info, journal=cause is not Cause.ALREADY_STORED)

    def _record(
        self, result: FileResult, info: FileInfo | None = None, journal: bool = True
    ) -> None:
        """Account for one file's outcome: summary, console, progress, and the journal.

        ``journal`` is False only for what a local worker journalled itself.
        """
        self.summary.results.append(result)
        self.hooks.result(result)
        self.hooks.progress(result)
        if journal and self.config.journal is not None:
            self._unjournalled.append((result, *_size_and_mtime(result.path, info)))
            if len(self._unjournalled) >= JOURNAL_BATCH:
                self._flush_journal()

    def _event(self, level: str, message: str) -> None:
        self.summary.events.append(message)
        self.hooks.log(level, message)

    # ------------------------------------------------------------ workers

    def _start_worker(self) -> None:
        worker = self._next_worker
        self._next_worker += 1
        parent, child = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=worker_main,
            args=(self._worker_config(worker), child, self._shared_rate),
            name=f"fastsend-worker-{worker}",
            daemon=True,
        )
        # Workers must not see the terminal's Ctrl-C; the coordinator decides.
        # An ignored SIGINT is inherited by a forked worker, and a spawned one
        # keeps it across exec (Python leaves an ignored SIGINT ignored).
        previous = _set_sigint(signal.SIG_IGN)
        try:
            process.start()
        finally:
            _set_sigint(previous)
        child.close()
        handle = _WorkerHandle(worker, process, parent)
        self._workers[worker] = handle
        self._selector.register(parent.fileno(), selectors.EVENT_READ, (handle, False))
        self._selector.register(process.sentinel, selectors.EVENT_READ, (handle, True))
        self.hooks.log("info", f"worker {worker} started, pid {process.pid}")

    def _send_all(self, infos: list[FileInfo]) -> None:
        config = self.config
        self._plans = tuple(
            plan_associations(
                ((i.sop_class_uid, i.transfer_syntax_uid) for i in infos),
                transcode=config.transcode,
            )
        )
        if self._client is not None:
            self._send_on_cluster(infos)
            return
        batches = make_batches(group_by_study(infos), config.processes)
        self._dispatcher = Dispatcher.of(batches)
        if config.max_rate_mb_s > 0:
            # Guarded by flock on this file rather than a multiprocessing lock,
            # which a SIGKILLed worker could leave held (see RateLimiter).
            self._shared_rate = self._context.RawValue("d", 0.0)
            lock_fd, self._rate_lock = tempfile.mkstemp(prefix="fastsend-rate-", suffix=".lock")
            os.close(lock_fd)
        self._announce(infos, batches, f"{config.processes} worker process(es)")
        # A child should not inherit an SQLite connection it could close (the
        # SQLite FAQ on fork): commit and close ours while the first workers
        # start, then open it again.
        self._close_journal()
        for _ in range(min(config.processes, len(batches))):
            self._start_worker()
        if config.journal is not None:
            self._journal = Journal(
                config.journal, destination_key(config.peer), self.summary.session_id
            )
        self._run_workers()

    def _run_workers(self) -> None:
        # The workers append to the journal; its checkpoints (an fsync each)
        # happen here, off their path.
        next_checkpoint = time.monotonic() + CHECKPOINT_INTERVAL
        while any(not h.done for h in self._workers.values()):
            self._check_interrupts()
            self._flush_journal()
            if self._journal is not None and time.monotonic() >= next_checkpoint:
                self._journal.checkpoint()
                next_checkpoint = time.monotonic() + CHECKPOINT_INTERVAL
            handled = 0
            for key, _ in self._selector.select(timeout=0.2):
                handle, is_sentinel = key.data
                if handle.done:
                    continue
                if is_sentinel:
                    self._reap(handle)
                else:
                    handled += self._drain(handle)
            if handled:
                # Results are flowing: let a few gather in the pipes so each
                # wake-up handles a burst. They are safe there meanwhile: the
                # kernel keeps a pipe's contents even if its writer is killed.
                time.sleep(0.002)
        # Every worker is gone; whatever is still queued has nobody to send it.
        for info in self._dispatcher.stop():
            self._record(
                _interrupted(info)
                if self._stopping
                else FileResult.of(
                    info,
                    Outcome.FAILED,
                    f"not sent: no worker process left ({self._restarts} restarted after dying)",
                ),
                info,
            )
        if self._rate_lock is not None:
            os.unlink(self._rate_lock)
        for handle in self._workers.values():
            handle.process.join(timeout=5)
            self.summary.workers.append(
                handle.stats
                or WorkerStats(handle.worker, handle.process.pid or 0, host=socket.gethostname())
            )

    def _announce(self, infos: list[FileInfo], batches: list[Batch], where: str) -> None:
        self.hooks.started(len(infos), sum(i.size for i in infos))
        self.hooks.log(
            "info",
            f"{len(infos)} files in {len({i.study_instance_uid for i in infos})} studies, "
            f"{len(batches)} batches, {len(self._plans)} planned association(s), {where}",
        )

    def _worker_config(self, worker: int) -> WorkerConfig:
        return WorkerConfig(
            worker=worker,
            peer=self.config.peer,
            plans=self._plans,
            max_rate=self.config.max_rate_mb_s * 1e6,
            rate_lock_path=self._rate_lock,
            retries=self.config.retries,
            retry_delay=self.config.retry_delay,
            transcode=self.config.transcode,
            max_ops=self.config.max_ops,
            journal_path=self.config.journal,
            destination=destination_key(self.config.peer),
            session_id=self.summary.session_id,
        )

    def _send_on_cluster(self, infos: list[FileInfo]) -> None:
        from .cluster import ClusterHooks, ClusterRun

        assert self.config.cluster is not None
        # The Dask workers are on other hosts: every outcome is journalled here,
        # in one transaction per message merged (flush).
        hooks = ClusterHooks(
            record=self._record,
            flush=self._flush_journal,
            association=self._association,
            event=self._event,
            log=self.hooks.log,
            interrupts=self._cluster_interrupts,
        )
        run = ClusterRun(self._client, self.config.cluster, self.summary.session_id, hooks)
        batches = run.plan(infos)
        self._announce(infos, batches, f"on the Dask cluster {self.config.cluster}")
        try:
            run.run(batches, self._worker_config(0), self.config.max_rate_mb_s * 1e6)
        finally:
            self.summary.workers.extend(run.workers)
            self.summary.cluster = run.summary()

    def _cluster_interrupts(self) -> int:
        if self.interrupts and not self._stopping:
            self._stopping = True
            self.summary.interrupted = True
            self._event(
                "warning",
                "interrupted (Ctrl-C): the cluster's tasks stop after the files in flight; "
                "Ctrl-C again to cancel them at once",
            )
        return self.interrupts

    def _drain(self, handle: _WorkerHandle) -> int:
        """Handle every message waiting on a worker's pipe; return how many."""
        count = 0
        try:
            while not handle.done and handle.pending():
                self._handle(handle, handle.conn.recv())
                count += 1
        except (EOFError, OSError):
            # The worker is gone; its sentinel says so and _reap accounts for it.
            self._unregister(handle, sentinel=False)
        if handle.done:
            # Finished: nothing more will come, and its exit must not wake us.
            self._unregister(handle, sentinel=True)
        return count

    def _unregister(self, handle: _WorkerHandle, sentinel: bool) -> None:
        for fileobj in (handle.conn.fileno(),) + ((handle.process.sentinel,) if sentinel else ()):
            try:
                self._selector.unregister(fileobj)
            except (KeyError, ValueError, OSError):
                pass

    def _handle(self, handle: _WorkerHandle, message: tuple[Any, ...]) -> None:
        kind, worker = message[0], message[1]
        dispatcher = self._dispatcher
        if kind == "ready":
            batch = None if self._stopping else dispatcher.next_for(worker)
            handle.conn.send(("batch", batch) if batch is not None else ("stop",))
        elif kind == "result":
            result: FileResult = message[2]
            dispatcher.file_done(worker, result.path)
            self._record(result, journal=False)  # the worker journalled it
        elif kind == "batch_done":
            dispatcher.batch_done(worker)
        elif kind == "association":
            self._association(worker, message[2], message[3])
        elif kind == "stats":
            handle.stats = message[2]
        elif kind == "done":
            handle.done = True
            # A worker that stopped early (abort) hands back what it held.
            for info in dispatcher.unfinished(worker):
                self._record(_interrupted(info), info)
            if worker in dispatcher.held:
                dispatcher.batch_done(worker)

    def _association(self, worker: int, kind: str, message: str) -> None:
        summary = self.summary
        if kind == "opened":
            summary.associations_opened += 1
            self.hooks.log("info", f"worker {worker}: association opened with {message}")
        elif kind == "released":
            self.hooks.log("info", f"worker {worker}: association released with {message}")
        elif kind == "retry":
            summary.retries += 1
            self.hooks.log("warning", f"worker {worker}: {message}")
        elif kind == "aborted":
            summary.associations_aborted += 1
            self.hooks.log("warning", f"worker {worker}: association aborted: {message}")
        else:  # rejected or failed: none could be made
            summary.associations_failed += 1
            if kind == "rejected":
                summary.associations_rejected += 1
            summary.association_errors.append(message)
            self.hooks.log("error", f"worker {worker}: {message}")

    def _reap(self, handle: _WorkerHandle) -> None:
        """A worker process ended: account for whatever it had not reported."""
        self._drain(handle)
        self._unregister(handle, sentinel=True)
        if handle.done:
            return
        handle.done = True
        handle.process.join(timeout=5)
        code = handle.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        handle.stats = WorkerStats(
            handle.worker,
            handle.process.pid or 0,
            files=sum(
                1
                for r in self.summary.results
                if r.worker == handle.worker and r.outcome in (Outcome.STORED, Outcome.WARNING)
            ),
            exit=f"died ({how})",
            host=socket.gethostname(),
        )
        retry, given_up = self._dispatcher.worker_lost(handle.worker)
        message = f"worker {handle.worker} (pid {handle.process.pid}) died ({how})"
        if retry is not None:
            message += f"; its {len(retry.files)} unfinished file(s) go to another worker"
        self._event("error", message)
        for info in given_up:
            reason = (
                "not sent: the run was interrupted"
                if self._stopping
                else f"not sent: worker died ({how}) while holding this file, "
                "and it had already been handed back once"
            )
            outcome = Outcome.SKIPPED if self._stopping else Outcome.FAILED
            self._record(FileResult.of(info, outcome, reason, worker=handle.worker), info)
        # Keep the pool at strength while work remains, within reason.
        alive = sum(1 for h in self._workers.values() if not h.done)
        if (
            not self._stopping
            and self._dispatcher.pending
            and alive < self.config.processes
            and self._restarts < 2 * self.config.processes + 2
        ):
            self._restarts += 1
            self._start_worker()


def _set_sigint(handler: Any) -> Any:
    """Install a SIGINT handler; only the main thread may (a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, handler)


def _interrupted(info: FileInfo) -> FileResult:
    return FileResult.of(info, Outcome.SKIPPED, INTERRUPTED_REASON)


def _size_and_mtime(path: str, info: FileInfo | None) -> tuple[int, float]:
    """What the journal keys a file's outcome by; a missing file has (0, 0.0)."""
    if info is not None:
        return info.size, info.mtime
    try:
        status = os.stat(path)
    except OSError:
        return 0, 0.0
    return status.st_size, status.st_mtime
