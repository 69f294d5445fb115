"""The local backend: worker processes on this host, one pipe each.

A pipe per worker rather than a shared ``multiprocessing.Queue``: a Queue
writes from a feeder thread, so a worker killed with SIGKILL can lose
messages it had already "sent", and a shared work queue cannot tell which
worker took a batch before dying. With a pipe per worker, a message is in
the pipe before the worker moves on, and the coordinator hands each batch to
a named worker. ``multiprocessing.connection.wait``-style selection over the
pipes and the process sentinels shows a death at once. The other way round,
a worker sees the coordinator's death as the end of its pipe: a forked
worker first closes the coordinator's ends of the pipes it inherited (its
own and the other workers'), or they would keep every pipe open, and an
orphaned worker would wait for its next batch forever.

This module only runs processes and carries messages; what a death means for
the files is the coordinator's decision (coordinator.py).
"""

from __future__ import annotations

import multiprocessing
import os
import select
import selectors
import signal
import socket
import threading
from multiprocessing.connection import Connection
from multiprocessing.context import ForkContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any

import msgspec
from msgspec import field
from msgspec.structs import replace

from .messages import Assign, ExecutorLost, Finished, FromExecutor, Stop
from .results import WorkerStats
from .worker import WorkerConfig, worker_main


class _Process(msgspec.Struct):
    worker: int
    process: BaseProcess
    conn: Connection
    ended: bool = False
    # Connection.poll() builds and tears down a selector on every call (about
    # 40 us, once per message); a poll object made once answers in about 1 us.
    # A Connection reads whole messages and buffers nothing, so the pipe being
    # readable is the same as a message (or EOF) waiting.
    readable: select.poll = field(default_factory=select.poll)

    def __post_init__(self) -> None:
        self.readable.register(self.conn.fileno(), select.POLLIN)

    def pending(self) -> bool:
        return bool(self.readable.poll(0))


class LocalBackend:
    """Worker processes forked from the coordinator (spawned if it has threads)."""

    reads_headers = True  # each worker admits its own batches (prepare.admit)

    def __init__(self, config: WorkerConfig, max_rate: float) -> None:
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
        self._config = config
        self._selector = selectors.DefaultSelector()
        self._processes: dict[int, _Process] = {}
        self._next = 0
        self._shared_rate: Any = None  # RawValue("d"): the --max-rate budget
        self._rate_lock: str | None = None
        if max_rate > 0:
            self._share_rate()

    def _share_rate(self) -> None:
        # Guarded by flock on this file rather than a multiprocessing lock,
        # which a SIGKILLed worker could leave held (see RateLimiter).
        self._shared_rate = self._context.RawValue("d", 0.0)
        import tempfile  # only with --max-rate: start-up of the others

        lock_fd, self._rate_lock = tempfile.mkstemp(prefix="fastsend-rate-", suffix=".lock")
        os.close(lock_fd)

    def set_rate(self, bytes_per_second: float) -> None:
        """A --schedule window's rate, for the workers started from now on."""
        if bytes_per_second > 0 and self._shared_rate is None:
            self._share_rate()
        self._config = replace(self._config, max_rate=bytes_per_second)

    def add_executor(self) -> int:
        worker = self._next
        self._next += 1
        parent, child = self._context.Pipe(duplex=True)
        config = replace(self._config, worker=worker, rate_lock_path=self._rate_lock)
        if isinstance(self._context, ForkContext):
            # A forked child has copies of every descriptor (a spawned one only
            # of what it is given): the coordinator's ends must be closed there.
            inherited = (parent, *(handle.conn for handle in self._processes.values()))
            target: Any = _forked_worker_main
            args: tuple[Any, ...] = (inherited, config, child, self._shared_rate)
        else:
            target, args = worker_main, (config, child, self._shared_rate)
        process = self._context.Process(
            target=target, args=args, name=f"fastsend-worker-{worker}", daemon=True
        )
        # Workers must not see the terminal's Ctrl-C; the coordinator decides.
        # An ignored SIGINT is inherited by a forked worker, and a spawned one
        # keeps it across exec (Python leaves an ignored SIGINT ignored).
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            process.start()
        finally:
            signal.signal(signal.SIGINT, previous)
        child.close()
        handle = _Process(worker, process, parent)
        self._processes[worker] = handle
        self._selector.register(parent.fileno(), selectors.EVENT_READ, (handle, False))
        self._selector.register(process.sentinel, selectors.EVENT_READ, (handle, True))
        return worker

    def pid(self, worker: int) -> int:
        return self._processes[worker].process.pid or 0

    def assign(self, worker: int, message: Assign | Stop) -> None:
        try:
            self._processes[worker].conn.send(message)
        except OSError:
            pass  # it died; its sentinel says so and poll() reports it

    def poll(self, timeout: float) -> list[FromExecutor]:
        """Every message waiting, and a loss for every worker that died."""
        messages: list[FromExecutor] = []
        for key, _ in self._selector.select(timeout=timeout):
            handle, is_sentinel = key.data
            if handle.ended:
                continue
            if is_sentinel:
                self._reap(handle, messages)
            else:
                self._drain(handle, messages)
        return messages

    def _drain(self, handle: _Process, messages: list[FromExecutor]) -> None:
        try:
            while not handle.ended and handle.pending():
                message = handle.conn.recv()
                messages.append(message)
                if isinstance(message, Finished):
                    handle.ended = True
        except (EOFError, OSError):
            # The worker is gone; its sentinel says so and _reap accounts for it.
            self._unregister(handle, sentinel=False)
        if handle.ended:
            # Finished: nothing more will come, and its exit must not wake us.
            self._unregister(handle, sentinel=True)

    def _reap(self, handle: _Process, messages: list[FromExecutor]) -> None:
        self._drain(handle, messages)
        self._unregister(handle, sentinel=True)
        if handle.ended:
            return
        handle.ended = True
        handle.process.join(timeout=5)
        code = handle.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        stats = WorkerStats(
            handle.worker, handle.process.pid or 0, exit=f"died ({how})", host=socket.gethostname()
        )
        messages.append(ExecutorLost(handle.worker, how, True, stats))

    def _unregister(self, handle: _Process, sentinel: bool) -> None:
        for fileobj in (handle.conn.fileno(),) + ((handle.process.sentinel,) if sentinel else ()):
            try:
                self._selector.unregister(fileobj)
            except (KeyError, ValueError, OSError):
                pass

    def stop(self) -> None:
        """Ctrl-C once: each worker stops after its file in flight (SIGUSR1)."""
        self._signal(signal.SIGUSR1)

    def abort(self) -> None:
        """Ctrl-C twice: each worker aborts its association at once (SIGUSR2)."""
        self._signal(signal.SIGUSR2)

    def _signal(self, signum: int) -> None:
        for handle in self._processes.values():
            if not handle.ended and handle.process.pid is not None:
                try:
                    os.kill(handle.process.pid, signum)
                except ProcessLookupError:
                    pass

    def close(self) -> None:
        for handle in self._processes.values():
            handle.process.join(timeout=5)
            handle.conn.close()
        self._selector.close()
        if self._rate_lock is not None:
            os.unlink(self._rate_lock)
            self._rate_lock = None


def _forked_worker_main(
    inherited: tuple[Connection, ...], config: WorkerConfig, conn: Connection, shared_rate: Any
) -> None:
    """A forked worker: close the coordinator's pipe ends it inherited, then run.

    Only the coordinator may hold them: then its death (kill -9 included)
    closes them, and each worker's next send or receive fails (EOF, broken
    pipe), which tells it to stop after its file in flight (worker.py).
    """
    for connection in inherited:
        connection.close()
    worker_main(config, conn, shared_rate)
