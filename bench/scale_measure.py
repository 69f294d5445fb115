"""Measuring one command for bench/scale.py: the machine, the page cache, the receiver.

- run_measured(): wall time, CPU time of the whole process tree (wait4),
  and the peak RSS of every process in it (TreeSampler, every 10 ms);
- storescp(): DCMTK's receiver at its best, on a free port of 127.0.0.1;
- drop_caches(), warm_up(): the cold and the warm page cache;
- find_dcmtk(), machine(): what runs where.

Nothing here knows fastsend: the senders are in bench/scale.py.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

LOOPBACK = "127.0.0.1"
RECEIVER_AE = "STORESCP"
MAX_PDU = 131072
SAMPLE_INTERVAL = 0.01
CPU_SAMPLE_EVERY = 10  # samples: CPU times every 0.1 s
STARTUP_TIMEOUT = 30.0
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def find_dcmtk(tool: str) -> str | None:
    """DCMTK's `tool` on PATH, /usr/bin or /usr/local/bin.

    pynetdicom installs console scripts named storescp/storescu too, often
    first on PATH in a virtualenv; only a binary whose --version names DCMTK
    counts (the same rule as tests/peers.py).
    """
    directories = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin", "/usr/local/bin"]
    seen: set[str] = set()
    for directory in directories:
        path = os.path.join(directory, tool)
        if path in seen or not (os.path.isfile(path) and os.access(path, os.X_OK)):
            continue
        seen.add(path)
        try:
            out = subprocess.run([path, "--version"], capture_output=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        if b"$dcmtk:" in out:
            return path
    return None


def machine() -> dict[str, Any]:
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def describe_machine(info: dict[str, Any]) -> str:
    return (
        f"{info['cores']} cores ({info['cpu']}), {info['memory_gib']:.0f} GiB, "
        f"Linux {info['kernel']}, Python {info['python']}"
    )


def drop_caches() -> str | None:
    """`sync; echo 3 > /proc/sys/vm/drop_caches`: None if done, else why not."""
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError as exc:
        return f"cannot drop the page cache ({DROP_CACHES}: {exc.strerror}); run as root"
    return None


def warm_up(tree: Path) -> float:
    """Read every file once so a warm run finds the set in the page cache."""
    started = time.perf_counter()
    stack = [str(tree)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    with open(entry.path, "rb") as file:
                        while file.read(1 << 20):
                            pass
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def stop_group(process: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    """Stop a process started with start_new_session and everything it forked."""
    if process.returncode is None and process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)
    # storescp --fork children may outlive their parent briefly.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def dcmtk_environment() -> dict[str, str]:
    """TCP_NODELAY=1: DCMTK leaves Nagle on without it (DCMTK FAQ #48)."""
    return {**os.environ, "TCP_NODELAY": "1"}


@contextlib.contextmanager
def storescp(binary: str, workdir: Path) -> Iterator[int]:
    """DCMTK storescp at its best on 127.0.0.1, discarding; yields its port."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "storescp.log"
    for _attempt in range(5):
        port = free_port()
        command = [binary, "--fork", "--ignore", "--max-pdu", str(MAX_PDU),
                   "-aet", RECEIVER_AE, "-od", str(workdir), str(port)]  # fmt: skip
        with log.open("wb") as output:
            process = subprocess.Popen(
                command,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=dcmtk_environment(),
                start_new_session=True,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while process.poll() is None and not _accepts(port):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if process.poll() is None and _accepts(port):
            try:
                yield port
            finally:
                stop_group(process)
            return
        stop_group(process)  # most likely the port was taken meanwhile: try another
    raise RuntimeError(
        f"storescp did not start: {' '.join(command)}\n{log.read_text(errors='replace')[-2000:]}"
    )


# ====================================================================== one command


@dataclass(slots=True)
class ProcessPeak:
    """The largest memory one process of a sender's tree was seen using, and its CPU time."""

    pid: int
    role: str
    rss_bytes: int = 0
    anon_bytes: int = 0  # RSS minus file-backed and shared pages (statm's "shared")
    # User + system as last sampled (every 0.1 s): the split between the
    # coordinator and the workers; the tree's total comes from wait4.
    cpu_seconds: float = 0.0


class TreeSampler:
    """Samples the RSS of every process under `pid` every 10 ms, in a thread.

    Sampling rather than the kernel's high-water mark (ru_maxrss): a process
    forked from another starts with that one's mark, which would hide its own.
    The list of processes is refreshed less often than the memory (each scan
    reads every /proc entry) after the first second, often enough to see
    workers start.
    """

    def __init__(self, pid: int, root_role: str) -> None:
        self.pid = pid
        self.root_role = root_role
        self.peaks: dict[int, ProcessPeak] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _role(self, process: psutil.Process, root_command: list[str]) -> str:
        try:
            command = process.cmdline()
        except psutil.Error:
            return "child"
        if any("resource_tracker" in part for part in command):
            return "resource tracker"
        # multiprocessing's fork start method: a worker has its parent's command line.
        if command == root_command:
            return "worker"
        return os.path.basename(command[0]) if command else "child"

    def _run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        root_command: list[str] = []
        processes: dict[int, psutil.Process] = {self.pid: root}
        self.peaks[self.pid] = ProcessPeak(self.pid, self.root_role)
        started = time.monotonic()
        next_scan = started
        samples = 0
        while True:
            now = time.monotonic()
            if now >= next_scan:
                # Read before each scan, not once: just after Popen returns,
                # the command may still be in execve(2), and /proc gives an
                # empty command line; no child would then be seen as a worker.
                with contextlib.suppress(psutil.Error):
                    root_command = root.cmdline() or root_command
                with contextlib.suppress(psutil.Error):
                    for child in root.children(recursive=True):
                        if child.pid not in self.peaks:
                            processes[child.pid] = child
                            self.peaks[child.pid] = ProcessPeak(
                                child.pid, self._role(child, root_command)
                            )
                # Every sample (10 ms) for the first second: a worker of a
                # small run can start and end between two scans 50 ms apart
                # now that the command starts in about 70 ms of CPU.
                elapsed = now - started
                next_scan = now + (0.0 if elapsed < 1 else 0.05 if elapsed < 3 else 0.25)
            gone = []
            for pid, process in processes.items():
                peak = self.peaks[pid]
                try:
                    info = process.memory_info()
                    if samples % CPU_SAMPLE_EVERY == 0:
                        times = process.cpu_times()
                        peak.cpu_seconds = times.user + times.system
                except psutil.Error:
                    gone.append(pid)  # its figures so far stay
                    continue
                if info.rss > peak.rss_bytes:
                    peak.rss_bytes = info.rss
                peak.anon_bytes = max(peak.anon_bytes, info.rss - info.shared)
            for pid in gone:
                del processes[pid]
            samples += 1
            if self._stop.wait(SAMPLE_INTERVAL):
                return


@dataclass(slots=True)
class Measured:
    """One command, run to its end."""

    seconds: float
    started_wall: float  # time.time() just before the process was started
    returncode: int
    cpu_user: float
    cpu_system: float
    processes: list[ProcessPeak]
    timed_out: bool = False


def run_measured(
    command: Sequence[str],
    *,
    role: str,
    output: Path,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> Measured:
    """Run `command` with its output to `output`; time, sample and account for it.

    CPU time comes from wait4(2) on the command's process: Linux adds to it
    the usage of every descendant it waited for (a fastsend coordinator joins
    its workers), so it is the whole tree's.
    """
    with output.open("wb") as sink:
        started_wall = time.time()
        started = time.perf_counter()
        process = subprocess.Popen(
            list(command),
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, expire) if timeout else None
    if timer:
        timer.start()
    with TreeSampler(process.pid, role) as sampler:
        # Not process.wait(): that reaps the child without its rusage.
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
    if timer:
        timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # nothing of it may run on into the next command
    return Measured(
        seconds=elapsed,
        started_wall=started_wall,
        returncode=process.returncode,
        cpu_user=usage.ru_utime,
        cpu_system=usage.ru_stime,
        processes=sorted(sampler.peaks.values(), key=lambda peak: peak.pid),
        timed_out=timed_out.is_set(),
    )


def tail(path: Path, limit: int = 2000) -> str:
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - limit))
            return file.read().decode(errors="replace")
    except OSError:
        return "<no output>"
