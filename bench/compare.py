"""The benchmark of issues 5 and 15: fastsend against DCMTK, pynetdicom and a raw TCP pump.

``run_compare`` (``python bench/run.py``): DCMTK storescu, pynetdicom's
storescu, a raw TCP pump and fastsend, to DCMTK storescp (at its best, with
TCP_NODELAY=1 and 128 KB PDUs; with TCP_NODELAY=1 and its default 16 KB PDUs;
and stock), a stock Orthanc and the built-in sink, on the same synthetic
files, each figure the median of several runs of the whole command, with the
CPU time of each sender's whole process tree per file; plus the header scan
against pydicom, one large multi-frame file, and a set of many small files
(bench/scale_data.py's). It needs DCMTK's storescu and storescp; Orthanc and
pynetdicom are measured when installed.

Tooling of a checkout, not of the package: it imports dicom_fastsend for the
synthetic data and the header scan, and runs the installed `fastsend` as a
user would (``python -m dicom_fastsend``). tests/peers.py finds DCMTK and
configures Orthanc with the same functions.
"""

from __future__ import annotations

import compileall
import contextlib
import dataclasses
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dicom_fastsend
from delayproxy import start_in_thread
from scale_data import SetShape
from scale_data import generate as generate_scale_set
from scale_measure import run_measured

LOOPBACK = "127.0.0.1"
DCMTK_TOOLS = ("storescu", "storescp")
DCMTK_INSTALL = "apt-get install dcmtk"
ORTHANC_INSTALL = "apt-get install orthanc"
STARTUP_TIMEOUT = 30.0
README_BEGIN = "<!-- bench:begin -->"
README_END = "<!-- bench:end -->"
RAW_PUMP = "raw pump (sendfile)"
STORESCU = "DCMTK storescu"
# The PDU size DCMTK's tools are given at their best, both sides (PS3.8 D.1:
# each side states the largest P-DATA-TF PDU it receives; storescp's default is 16 KB).
MAX_PDU = 131072

Say = Callable[[str], None]


# ====================================================================== tools


def find_dcmtk(tool: str, directories: Sequence[str] | None = None) -> str | None:
    """The path of DCMTK's `tool` in `directories` (default: PATH, /usr/bin, /usr/local/bin).

    pynetdicom installs console scripts called ``storescp``/``storescu`` too,
    which can come first on PATH (under pyenv they are shims); only a binary
    that reports a DCMTK version counts.
    """
    if directories is None:
        directories = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin", "/usr/local/bin"]
    candidates: list[str] = []
    for directory in directories:
        path = os.path.join(directory, tool)
        if os.path.isfile(path) and os.access(path, os.X_OK) and path not in candidates:
            candidates.append(path)
    for path in candidates:
        try:
            out = subprocess.run(
                [path, "--version"], capture_output=True, timeout=10, check=False
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        if b"$dcmtk:" in out:
            return path
    return None


def find_orthanc() -> str | None:
    for candidate in (shutil.which("Orthanc"), "/usr/sbin/Orthanc", "/usr/bin/Orthanc"):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


class ToolMissing(RuntimeError):
    """The comparison cannot run: a reference tool is not installed."""


def require_dcmtk(find: Callable[[str], str | None] | None = None) -> dict[str, str]:
    """DCMTK's storescu and storescp by name, or ToolMissing naming what to install."""
    # Looked up when called, not bound as a default: tests replace find_dcmtk.
    find = find or find_dcmtk
    found = {tool: find(tool) for tool in DCMTK_TOOLS}
    missing = [tool for tool, path in found.items() if path is None]
    if missing:
        raise ToolMissing(
            f"the comparison needs DCMTK's {' and '.join(missing)}, which were not found "
            f"(a storescu/storescp from pynetdicom does not count): {DCMTK_INSTALL}"
        )
    return {tool: path for tool, path in found.items() if path is not None}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


# ====================================================================== the comparison: runs


@dataclass
class Measurement:
    receiver: str
    sender: str
    files: int
    bytes: int
    dataset: str = ""  # which data set (CompareSizes field): rows compare within one
    seconds: list[float] = field(default_factory=list)
    peak_rss_bytes: list[int] = field(default_factory=list)
    # Of the peak RSS, what was not file-backed (mapped file pages count in RSS too).
    peak_anon_rss_bytes: list[int] = field(default_factory=list)
    # fastsend's own MB/s from its summary line: the send alone, start-up excluded.
    reported_mb_s: list[float] = field(default_factory=list)
    failed: str = ""
    # CPU seconds of each run: the sender's whole process tree (wait4), or for
    # the in-process raw pump its sending thread.
    cpu_user_seconds: list[float] = field(default_factory=list)
    cpu_system_seconds: list[float] = field(default_factory=list)
    # The sum over the tree's processes of their CPU as last sampled (every
    # 0.1 s): a lower bound of what wait4 must count, a check that it counted
    # every process (see cpu_notes).
    cpu_sampled_seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")

    @property
    def files_per_second(self) -> float:
        return self.files / self.median if self.seconds else 0.0

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes / 1e6 / self.median if self.seconds else 0.0

    @property
    def cpu_us_per_file(self) -> tuple[float, float] | None:
        """(user, system) CPU microseconds per file of the run of median CPU, if measured.

        One run's user and system, not the median of each, so that they add up
        to the median total.
        """
        runs = list(zip(self.cpu_user_seconds, self.cpu_system_seconds, strict=True))
        if not runs or not self.files:
            return None
        # The lower median: with an even number of runs, a run that took place.
        user, system = sorted(runs, key=sum)[(len(runs) - 1) // 2]
        return user / self.files * 1e6, system / self.files * 1e6


@dataclass
class IndexingMeasurement:
    indexer: str
    files: int
    seconds: list[float] = field(default_factory=list)

    @property
    def files_per_second(self) -> float:
        return self.files / statistics.median(self.seconds) if self.seconds else 0.0


@dataclass(frozen=True, slots=True)
class Timed:
    seconds: float
    peak_rss_bytes: int = 0
    peak_anon_rss_bytes: int = 0
    reported_mb_s: float | None = None
    cpu_user: float | None = None
    cpu_system: float | None = None
    # CPU seconds of each role in the tree ("sender" for the command itself,
    # "worker" for a forked copy of it...) as last sampled, every 0.1 s.
    cpu_sampled: dict[str, float] = field(default_factory=dict)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def run_timed(command: Sequence[str], env: dict[str, str] | None = None) -> tuple[Timed, str]:
    """Run a command to its end: its timing, CPU and sampled memory, and its output.

    The CPU is the whole process tree's, from wait4(2) on the command: Linux
    adds to a process's usage that of every descendant it waited for, and a
    fastsend coordinator joins its forked workers. The peak RSS is the largest
    of any one process of the tree, sampled every 10 ms, because a forked
    child's kernel high-water mark starts with the memory of its parent.
    Raises RuntimeError with the output's tail when it exits non-zero.
    """
    with tempfile.TemporaryDirectory(prefix="fastsend-bench-run-") as temporary:
        log = Path(temporary) / "output"
        measured = run_measured(command, role="sender", output=log, env=env)
        output = log.read_text(errors="replace")
    if measured.returncode != 0:
        raise RuntimeError(f"{command[0]} exited {measured.returncode}: {output[-2000:]}")
    peak = max(measured.processes, key=lambda process: process.rss_bytes, default=None)
    sampled: dict[str, float] = {}
    for process in measured.processes:
        sampled[process.role] = sampled.get(process.role, 0.0) + process.cpu_seconds
    timed = Timed(
        measured.seconds,
        peak.rss_bytes if peak else 0,
        peak.anon_bytes if peak else 0,
        cpu_user=measured.cpu_user,
        cpu_system=measured.cpu_system,
        cpu_sampled=sampled,
    )
    return timed, output


def environment(tcp_nodelay: bool) -> dict[str, str]:
    """This environment with TCP_NODELAY=1 (DCMTK's switch, FAQ #48) set or removed."""
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)
    if tcp_nodelay:
        env["TCP_NODELAY"] = "1"
    return env


Run = Callable[[], Timed]


def storescu(binary: str, port: int, aet: str, directory: Path, tcp_nodelay: bool) -> Run:
    def run() -> Timed:
        command = [binary, "-aec", aet, "+sd", "+r", "--max-pdu", str(MAX_PDU),
                   LOOPBACK, str(port), str(directory)]  # fmt: skip
        return run_timed(command, environment(tcp_nodelay))[0]

    return run


def pynetdicom_storescu(port: int, aet: str, directory: Path) -> Run:
    def run() -> Timed:
        command = [sys.executable, "-m", "pynetdicom", "storescu", "-q", "-r", "-aec", aet,
                   LOOPBACK, str(port), str(directory)]  # fmt: skip
        return run_timed(command)[0]

    return run


def fastsend(
    port: int, aet: str, directory: Path, processes: int, log_dir: Path, *options: str
) -> Run:
    count = sum(1 for _ in directory.rglob("*.dcm"))

    def run() -> Timed:
        # --no-resume: every run sends every file (the journal would otherwise
        # skip what an earlier run stored, and time nothing).
        command = [sys.executable, "-m", "dicom_fastsend", "send", "-i", str(directory), "-r",
                   "-a", aet, "-H", LOOPBACK, "-p", str(port), "-P", str(processes),
                   "--no-progress", "--no-resume", "--log-dir", str(log_dir), *options]  # fmt: skip
        timed, output = run_timed(command)
        if f"{count} files: {count} stored" not in output:
            raise RuntimeError(f"fastsend did not store all {count} files: {output[-2000:]}")
        reported = re.search(r"files/s, ([0-9.]+) MB/s\)", output)
        return dataclasses.replace(
            timed, reported_mb_s=float(reported.group(1)) if reported else None
        )

    return run


class DiscardingReader:
    """A TCP server that reads and throws away everything: the raw pump's far end."""

    def __init__(self) -> None:
        self.server = socket.create_server((LOOPBACK, 0))
        self.port = self.server.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            buffer = bytearray(1 << 20)
            with connection:
                while connection.recv_into(buffer):
                    pass

    def close(self) -> None:
        self.server.close()


def raw_pump(reader: DiscardingReader, files: Sequence[Path]) -> Run:
    """sendfile() of the files, back to back on one connection: the ceiling."""

    def run() -> Timed:
        # In this process: its CPU is the sending thread's (the reader's is another thread's).
        before = resource.getrusage(resource.RUSAGE_THREAD)
        started = time.perf_counter()
        with socket.create_connection((LOOPBACK, reader.port)) as connection:
            for path in files:
                with path.open("rb") as handle:
                    connection.sendfile(handle)
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_THREAD)
        return Timed(
            elapsed,
            cpu_user=after.ru_utime - before.ru_utime,
            cpu_system=after.ru_stime - before.ru_stime,
        )

    return run


# ====================================================================== receivers

# Receivers by name, as the table's rows and the headline's ratios name them.
# FAST is DCMTK at its best, the headline's reference.
FAST = f"storescp --ignore TCP_NODELAY=1 --max-pdu {MAX_PDU}"
FAST_16K = "storescp --ignore TCP_NODELAY=1 (16 KB PDU)"
STOCK = "storescp --ignore (Nagle on)"
ORTHANC = "Orthanc (stock, Nagle on)"
SINK = "fastsend sink"
LATENCY = "fastsend sink via 20 ms RTT proxy"
RAW_TCP = "raw TCP (discard)"


@dataclass
class Receiver:
    name: str
    port: int
    aet: str
    stop: Callable[[], None]
    # Called before each run (outside the timing) and after it (a check that raises).
    before_run: Callable[[], None] = lambda: None
    after_run: Callable[[int], None] = lambda files: None


def _stop_group(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Stop a receiver and what it forked (it runs in its own process group)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    # storescp --fork children may outlive their parent briefly.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _start(
    name: str,
    command: list[str],
    ports: Sequence[int],
    log: Path,
    env: dict[str, str] | None = None,
    ready: Callable[[], bool] = lambda: True,
) -> subprocess.Popen[bytes]:
    """Start a receiver in its own process group; wait until its ports accept connections."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not (all(_accepts(port) for port in ports) and ready()):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop_group(process)
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{name} did not start: {' '.join(command)}\n{tail}")
        time.sleep(0.05)
    return process


def storescp_receiver(
    binary: str, workdir: Path, tcp_nodelay: bool, max_pdu: int | None = None
) -> Receiver:
    """DCMTK storescp --ignore --fork: receives and discards, one process per association.

    ``max_pdu``: its --max-pdu, the largest P-DATA-TF PDU it receives (PS3.8 D.1); None
    leaves DCMTK's default of 16 KB.
    """
    directory = workdir / f"storescp-{'nodelay' if tcp_nodelay else 'stock'}-{max_pdu or 'default'}"
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [binary, "-od", str(directory), "-aet", "STORESCP", "--fork", "--ignore"]
    if max_pdu is not None:
        command += ["--max-pdu", str(max_pdu)]
    command.append(str(port))
    process = _start("storescp", command, [port], directory / "storescp.log",
                     environment(tcp_nodelay))  # fmt: skip
    if tcp_nodelay:
        name = (
            FAST_16K if max_pdu is None else f"storescp --ignore TCP_NODELAY=1 --max-pdu {max_pdu}"
        )
    else:
        name = STOCK if max_pdu is None else f"storescp --ignore --max-pdu {max_pdu} (Nagle on)"
    return Receiver(name, port, "STORESCP", lambda: _stop_group(process))


class OrthancREST:
    def __init__(self, port: int) -> None:
        self.url = f"http://{LOOPBACK}:{port}"

    def call(self, method: str, path: str, timeout: float = 60.0) -> Any:
        request = urllib.request.Request(self.url + path, method=method)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
        return json.loads(payload) if payload else None

    def answers(self) -> bool:
        try:
            self.call("GET", "/system", timeout=2.0)
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return True

    def instances(self) -> int:
        return int(self.call("GET", "/statistics")["CountInstances"])

    def clear(self) -> None:
        for patient in self.call("GET", "/patients"):
            self.call("DELETE", f"/patients/{patient}")


def orthanc_config(
    workdir: Path, *, dicom_port: int, http_port: int, aet: str = "ORTHANC", **overrides: Any
) -> dict[str, Any]:
    """A self-contained Orthanc configuration: nothing shared with a system service.

    Its DICOM side is Orthanc's defaults (Nagle on, its own PDU size), so the
    bench measures a stock Orthanc; the tests' peers pass ``overrides``.
    """
    config: dict[str, Any] = {
        "Name": f"fastsend-{dicom_port}",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "Plugins": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "OrthancExplorerEnabled": False,
        "WebDavEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomModalities": {},
        "OrthancPeers": {},
        "SaveJobs": False,
        "StorageCompression": False,
        "HttpThreadsCount": 8,
    }
    config.update(overrides)
    return config


def orthanc_receiver(binary: str, workdir: Path) -> Receiver:
    """A stock Orthanc (its defaults: Nagle on, its own PDU size), storing to disk.

    Emptied before each run, so that every run stores new instances rather
    than the duplicates of the previous one; each run is checked to have
    stored every file.
    """
    directory = workdir / "orthanc"
    directory.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    config = orthanc_config(directory, dicom_port=dicom_port, http_port=http_port)
    config_path = directory / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    rest = OrthancREST(http_port)
    process = _start("Orthanc", [binary, "--no-jobs", str(config_path)],
                     [dicom_port, http_port], directory / "orthanc.log",
                     ready=rest.answers)  # fmt: skip

    def check(files: int) -> None:
        stored = rest.instances()
        if stored != files:
            raise RuntimeError(f"Orthanc holds {stored} instances after a run of {files} files")

    return Receiver(ORTHANC, dicom_port, "ORTHANC",
                    lambda: _stop_group(process), rest.clear, check)  # fmt: skip


def sink_receiver(workdir: Path) -> Receiver:
    """`fastsend sink` in its own process, as a user would run it."""
    port = free_port()
    command = [sys.executable, "-m", "dicom_fastsend", "sink", "-p", str(port), "-a", "SINK"]
    process = _start("fastsend sink", command, [port], workdir / "sink.log")

    def stop() -> None:
        # SIGINT: the sink's own way to stop (it prints its counts).
        process.send_signal(signal.SIGINT)
        # A sink that has not stopped 10 s later is terminated rather than
        # failing the whole comparison at its end (seen once, not reproduced).
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        _stop_group(process)

    return Receiver(SINK, port, "SINK", stop)


# ====================================================================== measuring


def measure(
    results: list[Measurement],
    receiver: str,
    sender: str,
    dataset: str,
    files: Sequence[Path],
    run: Run,
    runs: int,
    say: Say,
    before: Callable[[], None] = lambda: None,
    after: Callable[[int], None] = lambda files: None,
) -> Measurement:
    m = Measurement(receiver, sender, len(files), sum(p.stat().st_size for p in files), dataset)
    for _ in range(runs):
        try:
            before()
            timed = run()
            after(len(files))
        except (RuntimeError, OSError, urllib.error.URLError) as exc:
            m.failed = str(exc)[:500]
            break
        m.seconds.append(timed.seconds)
        m.peak_rss_bytes.append(timed.peak_rss_bytes)
        m.peak_anon_rss_bytes.append(timed.peak_anon_rss_bytes)
        if timed.reported_mb_s is not None:
            m.reported_mb_s.append(timed.reported_mb_s)
        if timed.cpu_user is not None and timed.cpu_system is not None:
            m.cpu_user_seconds.append(timed.cpu_user)
            m.cpu_system_seconds.append(timed.cpu_system)
            m.cpu_sampled_seconds.append(sum(timed.cpu_sampled.values()))
    results.append(m)
    shown = f"{m.files_per_second:9.1f} files/s {m.megabytes_per_second:8.1f} MB/s"
    cpu = m.cpu_us_per_file
    if cpu:
        shown += f"  CPU {sum(cpu):.0f} us/file"
    if any(m.peak_rss_bytes):
        shown += f"  peak RSS {max(m.peak_rss_bytes) / 1e6:.0f} MB"
    say(f"  {receiver:<46} {sender:<26} {m.failed or shown}")
    return m


def measure_indexing(files: Sequence[Path], runs: int, say: Say) -> list[IndexingMeasurement]:
    """fastsend's compiled header scan against pydicom's dcmread(stop_before_pixels=True).

    Both in this process over the same list of files, after one untimed pass
    of each so that the page cache is warm and the imports are done.
    """
    import pydicom

    from dicom_fastsend.io.header import read_header
    from dicom_fastsend.protocol.hotpath import IMPLEMENTATION

    def header_scan() -> None:
        for path in files:
            read_header(path)

    def pydicom_read() -> None:
        for path in files:
            pydicom.dcmread(path, stop_before_pixels=True)

    indexers = (
        (f"fastsend read_header ({IMPLEMENTATION} hot path)", header_scan),
        ("pydicom dcmread(stop_before_pixels=True)", pydicom_read),
    )
    measured: list[IndexingMeasurement] = []
    for name, index in indexers:
        index()  # warm-up
        m = IndexingMeasurement(name, len(files))
        for _ in range(runs):
            started = time.perf_counter()
            index()
            m.seconds.append(time.perf_counter() - started)
        measured.append(m)
        say(f"  indexing: {name:<46} {m.files_per_second:9.0f} files/s")
    return measured


# ====================================================================== reporting


def receiver_of(m: Measurement) -> str:
    """The receiver's name of a row, without the files (``"<receiver>, <files>"``)."""
    return m.receiver.rsplit(", ", 1)[0]


def _find(results: Sequence[Measurement], dataset: str, receiver: str, sender: str
          ) -> Measurement | None:  # fmt: skip
    """The measured row of `sender` to the receiver named `receiver`.

    The whole name, not a prefix: the storescp receivers' names differ only
    in the options they end with.
    """
    for m in results:
        if m.dataset == dataset and receiver_of(m) == receiver and m.sender == sender and m.seconds:
            return m
    return None


# Subsets of the same 512x512 CT files: MB/s compares with the pump over the full set.
PUMP_REFERENCE = {"ct_subset": "ct", "orthanc": "ct"}


TABLE_COLUMNS = (
    "receiver", "sender", "files", "files/s", "MB/s", "vs storescu", "vs raw pump",
    "CPU us/file (user+sys)", "user us/file", "sys us/file", "peak RSS MB",
)  # fmt: skip


def table(results: Sequence[Measurement], description: str) -> str:
    lines = [
        f"Machine: {machine()}. {description}",
        "",
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|---|---|" + "---:|" * (len(TABLE_COLUMNS) - 2),
    ]
    for m in results:
        if m.failed:
            empty = " |" * (len(TABLE_COLUMNS) - 4)
            lines.append(f"| {m.receiver} | {m.sender} | {m.files} | failed |{empty}")
            continue
        reference = _find(results, m.dataset, receiver_of(m), STORESCU)
        ratio = (
            f"{m.files_per_second / reference.files_per_second:.2f}x"
            if reference and reference.files == m.files
            else ""
        )
        pumped_set = PUMP_REFERENCE.get(m.dataset, m.dataset)
        pump = next(
            (p for p in results if p.dataset == pumped_set and p.sender == RAW_PUMP and p.seconds),
            None,
        )
        pumped = f"{m.megabytes_per_second / pump.megabytes_per_second:.0%}" if pump else ""
        rss = f"{max(m.peak_rss_bytes) / 1e6:.0f}" if any(m.peak_rss_bytes) else ""
        cpu = m.cpu_us_per_file
        cpu_cells = f"{sum(cpu):.0f} | {cpu[0]:.0f} | {cpu[1]:.0f}" if cpu else " | "
        lines.append(
            f"| {m.receiver} | {m.sender} | {m.files} | {m.files_per_second:.0f} | "
            f"{m.megabytes_per_second:.0f} | {ratio} | {pumped} | {cpu_cells} | {rss} |"
        )
    return "\n".join(lines)


def cpu_notes(results: Sequence[Measurement]) -> list[str]:
    """Rows whose tree CPU (wait4) is below what their processes were seen to use.

    wait4 counts a descendant only once its parent has waited for it; a
    process left to run on, or reaped by someone else, would be missing from
    the figure, and its last sample shows it.
    """
    notes = []
    for m in results:
        for run, (user, system, sampled) in enumerate(
            zip(m.cpu_user_seconds, m.cpu_system_seconds, m.cpu_sampled_seconds, strict=True)
        ):
            # Samples are in clock ticks (10 ms) of each process; wait4 is exact.
            if user + system < sampled * 0.98 - 0.02:
                notes.append(
                    f"{m.sender} to {m.receiver}, run {run + 1}: wait4 counted {user + system:.2f}"
                    f" s of CPU, its processes were seen using {sampled:.2f} s: a process of the"
                    " tree was not waited for, its CPU per file is too low"
                )
    return notes


def indexing_table(indexing: Sequence[IndexingMeasurement], description: str) -> str:
    if not indexing:
        return ""
    reference = indexing[-1]
    lines = [
        f"Indexing {description}:",
        "",
        "| indexer | files | files/s | vs pydicom |",
        "|---|---:|---:|---:|",
    ]
    for m in indexing:
        ratio = m.files_per_second / reference.files_per_second if reference.seconds else 0.0
        lines.append(f"| {m.indexer} | {m.files} | {m.files_per_second:.0f} | {ratio:.1f}x |")
    return "\n".join(lines)


BEST = f"storescp at its best (TCP_NODELAY=1, {MAX_PDU // 1024} KB PDU)"
DEFAULT_PDU = "storescp TCP_NODELAY=1, 16 KB PDU"


def headline(results: Sequence[Measurement], indexing: Sequence[IndexingMeasurement]) -> list[str]:
    """The ratios the project's targets are stated in (issues 5 and 15), where measured.

    Against storescu the reference is DCMTK at its best (FAST: TCP_NODELAY=1,
    128 KB PDUs on both sides), the 16 KB receiver a second line.
    """

    def rate(dataset: str, receiver: str, sender: str) -> float | None:
        m = _find(results, dataset, receiver, sender)
        return m.files_per_second if m else None

    pairs = [
        (f"fastsend -P 1 / storescu, {BEST}", ("ct", FAST, "fastsend -P 1"),
         ("ct", FAST, STORESCU)),
        (f"fastsend -P 2 / storescu, {BEST}", ("ct", FAST, "fastsend -P 2"),
         ("ct", FAST, STORESCU)),
        (f"fastsend -P 2 / fastsend -P 1, {BEST}", ("ct", FAST, "fastsend -P 2"),
         ("ct", FAST, "fastsend -P 1")),
        (f"fastsend -P 4 / fastsend -P 1, {BEST}", ("ct", FAST, "fastsend -P 4"),
         ("ct", FAST, "fastsend -P 1")),
        (f"fastsend -P 1 / storescu, {DEFAULT_PDU}", ("ct", FAST_16K, "fastsend -P 1"),
         ("ct", FAST_16K, STORESCU)),
        (f"fastsend -P 2 / storescu, {DEFAULT_PDU}", ("ct", FAST_16K, "fastsend -P 2"),
         ("ct", FAST_16K, STORESCU)),
        (f"storescu to {BEST} / to {DEFAULT_PDU}", ("ct", FAST, STORESCU),
         ("ct", FAST_16K, STORESCU)),
        (f"MR: fastsend -P 1 / storescu, {BEST}", ("mr", FAST, "fastsend -P 1"),
         ("mr", FAST, STORESCU)),
        (f"MR: fastsend -P 2 / storescu, {BEST}", ("mr", FAST, "fastsend -P 2"),
         ("mr", FAST, STORESCU)),
        ("fastsend -P 1 / storescu, stock storescp (Nagle on)",
         ("ct_subset", STOCK, "fastsend -P 1"), ("ct_subset", STOCK, STORESCU)),
        ("fastsend -P 1 / storescu, stock Orthanc (Nagle on)",
         ("orthanc", ORTHANC, "fastsend -P 1"), ("orthanc", ORTHANC, STORESCU)),
        ("fastsend -P 2 / storescu, stock Orthanc (Nagle on)",
         ("orthanc", ORTHANC, "fastsend -P 2"), ("orthanc", ORTHANC, STORESCU)),
        ("fastsend -P 4 / storescu, stock Orthanc (Nagle on)",
         ("orthanc", ORTHANC, "fastsend -P 4"), ("orthanc", ORTHANC, STORESCU)),
        ("64x64: fastsend -P 1 / storescu, stock Orthanc (Nagle on)",
         ("orthanc_small", ORTHANC, "fastsend -P 1"), ("orthanc_small", ORTHANC, STORESCU)),
        ("64x64: fastsend -P 2 / storescu, stock Orthanc (Nagle on)",
         ("orthanc_small", ORTHANC, "fastsend -P 2"), ("orthanc_small", ORTHANC, STORESCU)),
        ("fastsend -P 1 / pynetdicom storescu", ("ct_subset", FAST, "fastsend -P 1"),
         ("ct_subset", FAST, "pynetdicom storescu")),
        ("20 ms RTT: fastsend -P 8 / fastsend -P 1", ("small", LATENCY, "fastsend -P 8"),
         ("small", LATENCY, "fastsend -P 1")),
        ("20 ms RTT: fastsend --max-ops 8 / --max-ops 1",
         ("small", LATENCY, "fastsend -P 1 --max-ops 8"), ("small", LATENCY, "fastsend -P 1")),
        ("20 ms RTT: fastsend -P 1 --max-ops 8 / storescu",
         ("small", LATENCY, "fastsend -P 1 --max-ops 8"), ("small", LATENCY, STORESCU)),
        (f"storescu to fastsend sink / storescu to {BEST}", ("ct", SINK, STORESCU),
         ("ct", FAST, STORESCU)),
    ]  # fmt: skip
    lines = []
    for name, (a_set, a_receiver, a_sender), (b_set, b_receiver, b_sender) in pairs:
        a, b = rate(a_set, a_receiver, a_sender), rate(b_set, b_receiver, b_sender)
        if a and b:
            lines.append(f"- {name}: **{a / b:.2f}x**")
    reference = _find(results, "scale", FAST, STORESCU)
    for processes in (1, 2, 4):
        sent = _find(results, "scale", FAST, f"fastsend -P {processes}")
        if sent and reference:
            lines.append(
                f"- {sent.files} files of {sent.bytes / sent.files / 1e3:.1f} KB: fastsend"
                f" -P {processes} / storescu, {BEST}:"
                f" **{sent.files_per_second / reference.files_per_second:.2f}x**"
            )
    # Issue 15: the CPU of the sender's whole process tree per file, against storescu's.
    for dataset, what in (("ct", "CT 512x512"), ("scale", "64x64 set")):
        reference = _find(results, dataset, FAST, STORESCU)
        for processes in (1, 2):
            sent = _find(results, dataset, FAST, f"fastsend -P {processes}")
            mine = sent.cpu_us_per_file if sent else None
            theirs = reference.cpu_us_per_file if reference else None
            if mine and theirs:
                lines.append(
                    f"- CPU per file (user+sys, whole process tree), {what}: fastsend"
                    f" -P {processes} / storescu, {BEST}: **{sum(mine) / sum(theirs):.2f}x**"
                )
    pump = _find(results, "multiframe", RAW_TCP, RAW_PUMP)
    for receiver, to in ((FAST, BEST), (SINK, "fastsend sink")):
        sent = _find(results, "multiframe", receiver, "fastsend -P 1")
        if not (sent and pump):
            continue
        lines.append(
            f"- multi-frame file to the {to}, fastsend -P 1 / raw pump MB/s: "
            f"**{sent.megabytes_per_second / pump.megabytes_per_second:.0%}**"
        )
        if sent.reported_mb_s:
            streaming = statistics.median(sent.reported_mb_s)
            lines.append(
                f"- multi-frame file to the {to}, fastsend's send phase alone (its summary,"
                f" start-up excluded) / raw pump MB/s: "
                f"**{streaming / pump.megabytes_per_second:.0%}**"
            )
        anonymous = max(sent.peak_anon_rss_bytes, default=0)
        lines.append(
            f"- multi-frame file to the {to}, fastsend peak RSS of one process: "
            f"**{max(sent.peak_rss_bytes) / 1e6:.0f} MB** (of which not file-backed: "
            f"{anonymous / 1e6:.0f} MB)"
        )
    if len(indexing) == 2 and all(m.seconds for m in indexing):
        ratio = indexing[0].files_per_second / indexing[1].files_per_second
        lines.append(f"- indexing, header scan / pydicom dcmread: **{ratio:.1f}x**")
    return lines


def update_readme(readme: Path, text: str) -> None:
    """Replace the block between the bench markers in `readme` with `text`."""
    content = readme.read_text()
    block = f"{README_BEGIN}\n{text}\n{README_END}"
    if README_BEGIN in content:
        content = re.sub(
            re.escape(README_BEGIN) + ".*?" + re.escape(README_END), lambda _: block, content,
            flags=re.S,
        )  # fmt: skip
    else:
        content += f"\n## Benchmark\n\n{block}\n"
    readme.write_text(content)


# ====================================================================== the comparison


@dataclass(frozen=True, slots=True)
class CompareSizes:
    """How big each data set is; ``quick()`` is the smaller set for trying the harness."""

    ct: int = 2000  # 512x512 CT, for the fast receivers
    ct_subset: int = 500  # for slow senders (pynetdicom) and the stock storescp
    small: int = 1000  # 64x64 CT, for the 20 ms RTT rows
    mr: int = 5000  # 256x256 MR, sending and the indexing comparison
    multiframe_mb: int = 500  # one multi-frame file of about this many MB
    # CT files to the stock Orthanc: the whole CT set, as for the other
    # receivers. storescu takes ~100 s a run there (~19 files/s), but with
    # 200 files fastsend's ~0.2 s start-up was a third of its time, which no
    # migration of an archive sees.
    orthanc: int = 2000
    # 64x64 CT files to the stock Orthanc: what it costs to store a file there
    # (an fsync, an SQLite commit) bounds how much any sender can gain.
    orthanc_small: int = 200
    # Many small files (64x64 CT, 9.2 KB, 100 to a study; bench/scale_data.py's
    # set) to storescp at its best: the per-file cost of each sender (issue 15).
    # 0 leaves the set out.
    scale: int = 100_000

    @classmethod
    def quick(cls) -> CompareSizes:
        return cls(
            ct=200, ct_subset=200, small=100, mr=500, multiframe_mb=50, orthanc=30,
            orthanc_small=30, scale=5000,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class CompareOptions:
    data: Path  # generated files, kept between runs
    out: Path  # results JSON
    sizes: CompareSizes = CompareSizes()
    runs: int = 3


@dataclass(frozen=True, slots=True)
class CompareResult:
    text: str  # the Markdown table and the headline ratios
    document: dict[str, Any]  # what went into the JSON file


def _generate(directory: Path, make: Callable[[Path], object], say: Say, what: str) -> Path:
    """`directory`, made by `make` under a temporary name first if it does not exist yet.

    The rename makes an interrupted generation start again rather than leave a
    partial data set that a later run would measure.
    """
    if not directory.exists():
        say(f"generating {what} in {directory} ...")
        partial = directory.with_name(directory.name + ".part")
        shutil.rmtree(partial, ignore_errors=True)
        make(partial)
        partial.rename(directory)
    return directory


def _archive(directory: Path, count: int, modality: str, size: int, say: Say) -> list[Path]:
    """About `count` files in studies of up to 100 (the first multiple of the study count)."""
    from dicom_fastsend.synth import write_archive

    studies = max(1, -(-count // 100))
    per_study = max(1, count // studies)
    _generate(
        directory,
        lambda target: write_archive(target, studies=studies, instances_per_study=per_study,
                                     modality=modality, rows=size, columns=size),
        say, f"{studies * per_study} {modality} files of {size}x{size}x16 bit",
    )  # fmt: skip
    return sorted(directory.rglob("*.dcm"))


def _multiframe(directory: Path, megabytes: int, say: Say) -> list[Path]:
    from dicom_fastsend.synth import write_multiframe

    frames = max(1, round(megabytes * 1e6 / (512 * 512 * 2)))
    _generate(
        directory,
        lambda target: write_multiframe(target / "multiframe.dcm", frames=frames),
        say, f"one multi-frame file of {frames} frames of 512x512x16 bit",
    )  # fmt: skip
    return sorted(directory.rglob("*.dcm"))


def _as_json(m: Measurement) -> dict[str, Any]:
    """A row with its derived figures, as the table shows them."""
    cpu = m.cpu_us_per_file
    return {
        **asdict(m),
        "files_per_second": m.files_per_second,
        "megabytes_per_second": m.megabytes_per_second,
        "cpu_us_per_file": (
            {"user": cpu[0], "system": cpu[1], "total": sum(cpu)} if cpu is not None else None
        ),
    }


def _pynetdicom_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("pynetdicom") is not None


@contextlib.contextmanager
def _running(receiver: Receiver) -> Iterator[Receiver]:
    try:
        yield receiver
    finally:
        receiver.stop()


def run_compare(options: CompareOptions, say: Say = print) -> CompareResult:
    """The whole comparison; writes ``options.out`` and returns the table."""
    dcmtk = require_dcmtk()
    orthanc_binary = find_orthanc()
    sizes, runs = options.sizes, options.runs
    data = options.data
    data.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []

    ct = _archive(data / f"ct{sizes.ct}", sizes.ct, "CT", 512, say)
    ct_dir = data / f"ct{sizes.ct}"
    subset = _archive(data / f"ct{sizes.ct_subset}", sizes.ct_subset, "CT", 512, say)
    subset_dir = data / f"ct{sizes.ct_subset}"
    small = _archive(data / f"ct64_{sizes.small}", sizes.small, "CT", 64, say)
    small_dir = data / f"ct64_{sizes.small}"
    mr = _archive(data / f"mr{sizes.mr}", sizes.mr, "MR", 256, say)
    mr_dir = data / f"mr{sizes.mr}"
    multiframe = _multiframe(data / f"multiframe{sizes.multiframe_mb}mb", sizes.multiframe_mb, say)
    multiframe_dir = multiframe[0].parent
    orthanc_set = _archive(data / f"ct{sizes.orthanc}", sizes.orthanc, "CT", 512, say)
    orthanc_dir = data / f"ct{sizes.orthanc}"
    orthanc_small_set = _archive(
        data / f"ct64_{sizes.orthanc_small}", sizes.orthanc_small, "CT", 64, say
    )
    orthanc_small_dir = data / f"ct64_{sizes.orthanc_small}"
    scale_dir: Path | None = None
    scale: list[Path] = []
    if sizes.scale:
        say(f"the set of {sizes.scale} small files in {data / f'scale{sizes.scale}'} ...")
        generated = generate_scale_set(data / f"scale{sizes.scale}", SetShape(files=sizes.scale))
        scale_dir = generated.tree
        scale = sorted(scale_dir.rglob("*.dcm"))

    # Bytecode for fastsend's modules, as `pip install` writes it: from a
    # source checkout under PYTHONDONTWRITEBYTECODE=1 every timed command would
    # otherwise compile them anew (about 70 ms), which no installed copy does.
    compileall.compile_dir(Path(dicom_fastsend.__file__).parent, quiet=1)
    results: list[Measurement] = []
    say(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="fastsend-bench-") as temporary:
        work = Path(temporary)
        logs = work / "logs"

        def label(files: Sequence[Path], what: str = "files") -> str:
            return f"{len(files)} {what}"

        def row(receiver: Receiver, dataset: str, files: list[Path], sender: str, run: Run,
                what: str = "files") -> None:  # fmt: skip
            measure(results, f"{receiver.name}, {label(files, what)}", sender, dataset, files,
                    run, runs, say, receiver.before_run, receiver.after_run)  # fmt: skip

        reader = DiscardingReader()
        try:
            for dataset, files, what in (
                ("ct", ct, "files"),
                ("mr", mr, "MR files of 256x256"),
                ("multiframe", multiframe, f"multi-frame file of {sizes.multiframe_mb} MB"),
            ):
                measure(results, f"raw TCP (discard), {label(files, what)}", RAW_PUMP, dataset,
                        files, raw_pump(reader, files), runs, say)  # fmt: skip
        finally:
            reader.close()

        def to_storescp(receiver: Receiver) -> None:
            """The CT, MR and multi-frame rows to a storescp with TCP_NODELAY=1."""

            def send(directory: Path) -> Run:
                return storescu(dcmtk["storescu"], receiver.port, receiver.aet, directory, True)

            row(receiver, "ct", ct, STORESCU, send(ct_dir))
            for processes in (1, 2, 4):
                row(receiver, "ct", ct, f"fastsend -P {processes}",
                    fastsend(receiver.port, receiver.aet, ct_dir, processes, logs))  # fmt: skip
            what = "MR files of 256x256"
            row(receiver, "mr", mr, STORESCU, send(mr_dir), what)
            for processes in (1, 2):
                row(receiver, "mr", mr, f"fastsend -P {processes}",
                    fastsend(receiver.port, receiver.aet, mr_dir, processes, logs),
                    what)  # fmt: skip
            what = f"multi-frame file of {sizes.multiframe_mb} MB"
            row(receiver, "multiframe", multiframe, STORESCU, send(multiframe_dir), what)
            row(receiver, "multiframe", multiframe, "fastsend -P 1",
                fastsend(receiver.port, receiver.aet, multiframe_dir, 1, logs), what)  # fmt: skip

        # DCMTK at its best, both sides with 128 KB PDUs: the headline.
        fast_receiver = storescp_receiver(dcmtk["storescp"], work, tcp_nodelay=True,
                                          max_pdu=MAX_PDU)  # fmt: skip
        with _running(fast_receiver) as fast:
            to_storescp(fast)
            row(fast, "ct_subset", subset, STORESCU,
                storescu(dcmtk["storescu"], fast.port, fast.aet, subset_dir, True))  # fmt: skip
            if _pynetdicom_available():
                row(fast, "ct_subset", subset, "pynetdicom storescu",
                    pynetdicom_storescu(fast.port, fast.aet, subset_dir))  # fmt: skip
            else:
                notes.append("pynetdicom is not installed: its storescu was not measured")
            row(fast, "ct_subset", subset, "fastsend -P 1",
                fastsend(fast.port, fast.aet, subset_dir, 1, logs))  # fmt: skip
            if scale_dir is not None:
                what = "files of 64x64"
                row(fast, "scale", scale, STORESCU,
                    storescu(dcmtk["storescu"], fast.port, fast.aet, scale_dir, True),
                    what)  # fmt: skip
                for processes in (1, 2):
                    row(fast, "scale", scale, f"fastsend -P {processes}",
                        fastsend(fast.port, fast.aet, scale_dir, processes, logs),
                        what)  # fmt: skip

        # The same rows to storescp's default 16 KB PDUs (what earlier benches measured).
        with _running(storescp_receiver(dcmtk["storescp"], work, tcp_nodelay=True)) as fast_16k:
            to_storescp(fast_16k)

        with _running(storescp_receiver(dcmtk["storescp"], work, tcp_nodelay=False)) as stock:
            row(stock, "ct_subset", subset, STORESCU,
                storescu(dcmtk["storescu"], stock.port, stock.aet, subset_dir, False))  # fmt: skip
            row(stock, "ct_subset", subset, "fastsend -P 1",
                fastsend(stock.port, stock.aet, subset_dir, 1, logs))  # fmt: skip

        if orthanc_binary is None:
            notes.append(f"Orthanc is not installed ({ORTHANC_INSTALL}): it was not measured")
        else:
            with _running(orthanc_receiver(orthanc_binary, work)) as orthanc:
                row(orthanc, "orthanc", orthanc_set, STORESCU,
                    storescu(dcmtk["storescu"], orthanc.port, orthanc.aet, orthanc_dir,
                             False))  # fmt: skip
                # Orthanc stores several associations' files at once: what
                # -P adds over one association is its parallelism.
                for processes in (1, 2, 4):
                    sender = fastsend(orthanc.port, orthanc.aet, orthanc_dir, processes, logs)
                    row(orthanc, "orthanc", orthanc_set, f"fastsend -P {processes}", sender)
                row(orthanc, "orthanc_small", orthanc_small_set, STORESCU,
                    storescu(dcmtk["storescu"], orthanc.port, orthanc.aet, orthanc_small_dir,
                             False), "files of 64x64")  # fmt: skip
                for processes in (1, 2):
                    row(orthanc, "orthanc_small", orthanc_small_set, f"fastsend -P {processes}",
                        fastsend(orthanc.port, orthanc.aet, orthanc_small_dir, processes, logs),
                        "files of 64x64")  # fmt: skip

        with _running(sink_receiver(work)) as sink:
            row(sink, "ct", ct, STORESCU,
                storescu(dcmtk["storescu"], sink.port, sink.aet, ct_dir, True))  # fmt: skip
            for processes in (1, 2):
                row(sink, "ct", ct, f"fastsend -P {processes}",
                    fastsend(sink.port, sink.aet, ct_dir, processes, logs))  # fmt: skip
            # The multi-frame file again, to a receiver that storescp's ~400-600
            # MB/s does not cap, so the row shows what the sender can stream.
            what = f"multi-frame file of {sizes.multiframe_mb} MB"
            row(sink, "multiframe", multiframe, STORESCU,
                storescu(dcmtk["storescu"], sink.port, sink.aet, multiframe_dir, True),
                what)  # fmt: skip
            row(sink, "multiframe", multiframe, "fastsend -P 1",
                fastsend(sink.port, sink.aet, multiframe_dir, 1, logs), what)  # fmt: skip
            # Latency: the same sink behind a proxy adding 10 ms each way
            # (20 ms RTT), with small files so the round trips dominate.
            proxy_port = free_port()
            start_in_thread(proxy_port, (LOOPBACK, sink.port), 0.010)
            behind = Receiver(LATENCY, proxy_port, sink.aet, lambda: None)
            what = "files of 64x64"
            row(behind, "small", small, STORESCU,
                storescu(dcmtk["storescu"], proxy_port, sink.aet, small_dir, True),
                what)  # fmt: skip
            for processes, extra in ((1, ()), (1, ("--max-ops", "8")), (8, ())):
                name = f"fastsend -P {processes}" + (" --max-ops 8" if extra else "")
                row(behind, "small", small, name,
                    fastsend(proxy_port, sink.aet, small_dir, processes, logs, *extra),
                    what)  # fmt: skip

    say("indexing the MR files (in this process, warm page cache):")
    indexing = measure_indexing(mr, runs, say)

    ct_mb = sum(p.stat().st_size for p in ct) / 1e6
    orthanc_subset = "" if len(orthanc_set) == len(ct) else f", and {len(orthanc_set)} for Orthanc"
    scale_set = (
        f", {len(scale)} CT files of 64x64x16 bit ({scale[0].stat().st_size / 1e3:.1f} KB each, "
        "100 to a study)"
        if scale
        else ""
    )
    description = (
        f"{len(ct)} CT files of 512x512x16 bit ({ct_mb:.0f} MB), {len(mr)} MR files of "
        f"256x256x16 bit, one multi-frame file of {sizes.multiframe_mb} MB{scale_set}; warm "
        f"page cache, loopback, median of {runs} runs of each whole command. DCMTK storescu "
        f"always sends with --max-pdu {MAX_PDU}; storescp at its best receives with "
        f"--max-pdu {MAX_PDU} too, the 16 KB PDU rows with its default. Rows marked "
        f"{len(subset)} files use a subset, for senders that need a minute per 1,000 files"
        f"{orthanc_subset}. Ratios compare with DCMTK storescu to the same "
        "receiver on the same files. CPU per file is user and system time of the sender's "
        "whole process tree (wait4(2) of the command: it and every process it waited for, "
        "fastsend's forked workers included), of the run of median CPU, divided by the "
        "files; for the raw pump, which runs in the bench's own process, that of its "
        "sending thread. Peak RSS is the largest of any one process of the "
        "sender, sampled every 10 ms, mapped file pages included."
    )
    notes.extend(cpu_notes(results))
    text = "\n\n".join(
        part
        for part in (
            table(results, description),
            indexing_table(indexing, f"of the {len(mr)} MR files, warm cache, in one process"),
            "\n".join(headline(results, indexing)),
            "\n".join(f"- {note}" for note in notes),
        )
        if part
    )
    document = {
        "machine": machine(),
        "description": description,
        "sizes": asdict(sizes),
        "runs": runs,
        "results": [_as_json(m) for m in results],
        "indexing": [asdict(m) for m in indexing],
        "notes": notes,
    }
    options.out.parent.mkdir(parents=True, exist_ok=True)
    partial = options.out.with_name(options.out.name + ".part")
    partial.write_text(json.dumps(document, indent=2) + "\n")
    partial.replace(options.out)
    return CompareResult(text, document)
