"""`fastsend bench`: a quick self-check of the sender on this machine.

``run_bench`` generates synthetic studies, sends them with fastsend's engine
to the built-in sink (started here, on 127.0.0.1) or to a peer, a few times,
and reports the median rate and whether every file arrived.

The comparison with DCMTK, pynetdicom and Orthanc is not part of the package:
it runs from a checkout, ``python bench/run.py`` (bench/compare.py).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .config import PeerConfig, SendConfig

LOOPBACK = "127.0.0.1"
SINK_AE = "BENCH_SINK"
STARTUP_TIMEOUT = 30.0

Say = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class BenchOptions:
    studies: int = 4
    instances: int = 25  # per study
    size: int = 256  # rows and columns, 16 bit
    processes: int = 1
    max_ops: int = 1
    runs: int = 3
    peer: PeerConfig | None = None  # None: the built-in sink, started here


@dataclass(frozen=True, slots=True)
class RunResult:
    seconds: float  # the whole send: indexing, workers, associations
    stored: int  # stored, with or without a warning
    failed: int
    skipped: int
    received: int | None  # counted by the built-in sink; None for another peer
    exit_code: int
    peak_worker_rss_bytes: int


@dataclass(slots=True)
class BenchReport:
    destination: str
    files: int
    bytes: int
    processes: int
    max_ops: int
    runs: list[RunResult] = field(default_factory=list)

    def complete(self, run: RunResult) -> bool:
        """Every generated file stored, and (to the sink) received once."""
        return (
            run.exit_code == 0
            and run.stored == self.files
            and run.failed == 0
            and (run.received is None or run.received == self.files)
        )

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(self.complete(run) for run in self.runs)

    @property
    def median_seconds(self) -> float:
        return statistics.median(run.seconds for run in self.runs) if self.runs else 0.0

    @property
    def files_per_second(self) -> float:
        median = self.median_seconds
        return self.files / median if median > 0 else 0.0

    @property
    def megabytes_per_second(self) -> float:
        median = self.median_seconds
        return self.bytes / 1e6 / median if median > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 when every run stored every file; else the first run's own code, or 1."""
        if self.ok:
            return 0
        return next((run.exit_code for run in self.runs if run.exit_code), 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "files": self.files,
            "bytes": self.bytes,
            "processes": self.processes,
            "max_ops": self.max_ops,
            "runs": [asdict(run) for run in self.runs],
            "median_seconds": self.median_seconds,
            # No rate for runs that did not store everything: it would not be comparable.
            "files_per_second": self.files_per_second if self.ok else None,
            "megabytes_per_second": self.megabytes_per_second if self.ok else None,
            "exit_code": self.exit_code,
        }


def format_run(number: int, total: int, files: int, run: RunResult) -> str:
    received = "" if run.received is None else f", sink received {run.received}"
    return (
        f"run {number}/{total}: {run.stored}/{files} stored, {run.failed} failed{received} "
        f"in {run.seconds:.2f} s"
    )


def format_bench(report: BenchReport) -> str:
    """The result lines `fastsend bench` prints on stdout."""
    received = [run.received for run in report.runs]
    lines = [
        f"destination: {report.destination}",
        f"files: {report.files}",
        f"bytes: {report.bytes}",
        f"processes: {report.processes}, max-ops: {report.max_ops}",
        f"runs: {len(report.runs)}",
        f"files/s: {report.files_per_second:.1f} (median of {len(report.runs)} runs)"
        if report.ok
        else "files/s: - (not every file was stored)",
        f"MB/s: {report.megabytes_per_second:.1f}" if report.ok else "MB/s: -",
        f"stored per run: {', '.join(str(run.stored) for run in report.runs)}",
    ]
    if all(count is not None for count in received):
        lines.append(f"received by the sink per run: {', '.join(map(str, received))}")
    peak = max((run.peak_worker_rss_bytes for run in report.runs), default=0)
    if peak:
        lines.append(f"peak worker RSS: {peak / 1e6:.0f} MB")
    verdict = "every file stored" if report.ok else "NOT every file was stored"
    lines.append(f"exit status: {report.exit_code} ({verdict})")
    return "\n".join(lines)


class SinkProcess:
    """The built-in sink in a child process, answering "how many so far?" over a pipe.

    Not in a thread of this process: a process with threads must spawn the
    sender's workers instead of forking them (see Coordinator), and each
    spawned worker re-imports everything, about 0.3 s a run that a real
    `fastsend send` does not pay.
    """

    def __init__(self, ae_title: str) -> None:
        context = multiprocessing.get_context("fork")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_sink_child, args=(child, ae_title), name="fastsend-bench-sink", daemon=True
        )
        self._process.start()
        child.close()
        if not self._conn.poll(STARTUP_TIMEOUT):
            self._process.kill()
            raise RuntimeError("the built-in sink did not start")
        self.port: int = self._conn.recv()

    def instances(self) -> int:
        self._conn.send("instances")
        count: int = self._conn.recv()
        return count

    def close(self) -> None:
        with contextlib.suppress(OSError):  # already gone: nothing to stop
            self._conn.send("stop")
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()


def _sink_child(conn: Connection, ae_title: str) -> None:
    from .sink import Sink

    # Ctrl-C is the sender's to handle (it stops the run); the sink is stopped
    # by the parent once the run has wound down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    with Sink(host=LOOPBACK, port=0, ae_title=ae_title) as sink:
        conn.send(sink.port)
        while conn.recv() != "stop":
            conn.send(sink.stats.instances)


def run_bench(options: BenchOptions, say: Say = lambda line: None) -> BenchReport:
    """Generate the synthetic studies, send them `options.runs` times, check every run."""
    from . import synth
    from .engine.results import Outcome
    from .sender import send

    with tempfile.TemporaryDirectory(prefix="fastsend-bench-") as temporary:
        archive = Path(temporary) / "archive"
        files = synth.write_archive(
            archive,
            studies=options.studies,
            instances_per_study=options.instances,
            rows=options.size,
            columns=options.size,
        )
        total_bytes = sum(path.stat().st_size for path in files)
        with contextlib.ExitStack() as stack:
            sink: SinkProcess | None = None
            peer = options.peer
            if peer is None:
                sink = SinkProcess(SINK_AE)
                stack.callback(sink.close)
                peer = PeerConfig(host=LOOPBACK, port=sink.port, called_ae_title=SINK_AE)
            destination = f"{peer.called_ae_title}@{peer.host}:{peer.port}" + (
                " (the built-in sink)" if sink is not None else ""
            )
            say(
                f"sending {len(files)} files ({options.studies} x {options.instances} instances,"
                f" {options.size}x{options.size} 16 bit, {total_bytes / 1e6:.1f} MB) "
                f"to {destination}, {options.runs} runs"
            )
            report = BenchReport(
                destination, len(files), total_bytes, options.processes, options.max_ops
            )
            config = SendConfig(
                peer=peer,
                inputs=(archive,),
                recursive=True,
                processes=options.processes,
                max_ops=options.max_ops,
                # Every run sends every file: no journal to skip what a run stored.
                log_dir=None,
                resume=False,
                progress=False,
            )
            for number in range(1, options.runs + 1):
                before = sink.instances() if sink is not None else 0
                started = time.perf_counter()
                summary = send(config)
                seconds = time.perf_counter() - started
                run = RunResult(
                    seconds=seconds,
                    stored=summary.count(Outcome.STORED) + summary.count(Outcome.WARNING),
                    failed=summary.count(Outcome.FAILED),
                    skipped=summary.count(Outcome.SKIPPED),
                    received=None if sink is None else sink.instances() - before,
                    exit_code=summary.exit_code,
                    peak_worker_rss_bytes=max(
                        (worker.peak_rss_bytes for worker in summary.workers), default=0
                    ),
                )
                report.runs.append(run)
                say(format_run(number, options.runs, len(files), run))
                for problem in dict.fromkeys(summary.association_errors):
                    say(f"ERROR {problem}")
                if summary.interrupted:
                    say("interrupted (Ctrl-C): no more runs")
                    break
    return report
