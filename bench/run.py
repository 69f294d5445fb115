"""Benchmark fastsend against DCMTK storescu, pynetdicom and a raw TCP pump, in one run.

    python bench/run.py              # the full set (about 10 minutes on 2 cores)
    python bench/run.py --quick      # a smaller set to try the harness
    python bench/run.py --readme     # also rewrite the table in README.md

Every figure is the median of --runs runs (3 by default) of a whole command,
start-up and indexing included, on the same files, against receivers this
script starts on 127.0.0.1. Results go to bench/results.json; a Markdown
table naming the machine goes to stdout (and into README.md with --readme).

Receivers: DCMTK `storescp --ignore --fork` with TCP_NODELAY=1 (DCMTK at its
best), the same with DCMTK's defaults (Nagle on, as most PACS run, DCMTK FAQ
#48), and `fastsend sink`. Senders: DCMTK `storescu` (with TCP_NODELAY=1
toward the fast receiver), pynetdicom's storescu, fastsend with 1, 2 and 4
processes, and a raw pump (sendfile of the same files to a reader that
discards them: the ceiling).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # reuse the tests' peer launchers

import delayproxy  # noqa: E402

from dicom_fastsend.synth import write_archive  # noqa: E402
from peers import find_dcmtk, free_port, start_storescp  # noqa: E402

README_BEGIN = "<!-- bench:begin -->"
README_END = "<!-- bench:end -->"


@dataclass
class Measurement:
    receiver: str
    sender: str
    files: int
    bytes: int
    seconds: list[float] = field(default_factory=list)
    peak_rss_bytes: list[int] = field(default_factory=list)
    failed: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")

    @property
    def files_per_second(self) -> float:
        return self.files / self.median if self.seconds else 0.0

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes / 1e6 / self.median if self.seconds else 0.0


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def _sample_peak_rss(pid: int, stop: threading.Event, peak: list[int]) -> None:
    """Largest RSS of any one process in the tree under ``pid``, sampled every 10 ms.

    Sampling, because a forked child's kernel high-water mark starts with the
    memory of the parent it was forked from (this script), which would hide
    the sender's own figure.
    """
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.Error:
        return
    while not stop.is_set():
        try:
            for process in [root, *root.children(recursive=True)]:
                peak[0] = max(peak[0], process.memory_info().rss)
        except psutil.Error:
            pass
        stop.wait(0.01)


def run_timed(command: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """(wall seconds, sampled peak RSS of one process of the tree, output); raises on failure."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
    )
    stop, peak = threading.Event(), [0]
    sampler = threading.Thread(target=_sample_peak_rss, args=(process.pid, stop, peak))
    sampler.start()
    output, _ = process.communicate()
    elapsed = time.perf_counter() - started
    stop.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} exited {process.returncode}: {output[-2000:]}")
    return elapsed, peak[0], output


def environment(tcp_nodelay: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)
    if tcp_nodelay:
        env["TCP_NODELAY"] = "1"
    return env


# ------------------------------------------------------------------ senders


def storescu(
    port: int, aet: str, directory: Path, tcp_nodelay: bool
) -> Callable[[], tuple[float, int]]:
    binary = find_dcmtk("storescu")
    assert binary is not None

    def run() -> tuple[float, int]:
        command = [binary, "-aec", aet, "+sd", "+r", "--max-pdu", "131072",
                   "127.0.0.1", str(port), str(directory)]  # fmt: skip
        seconds, rss, _ = run_timed(command, environment(tcp_nodelay))
        return seconds, rss

    return run


def pynetdicom_storescu(port: int, aet: str, directory: Path) -> Callable[[], tuple[float, int]]:
    def run() -> tuple[float, int]:
        command = [sys.executable, "-m", "pynetdicom", "storescu", "-q", "-r", "-aec", aet,
                   "127.0.0.1", str(port), str(directory)]  # fmt: skip
        seconds, rss, _ = run_timed(command)
        return seconds, rss

    return run


def fastsend(
    port: int, aet: str, directory: Path, processes: int, log_dir: Path, *options: str
) -> Callable[[], tuple[float, int]]:
    count = sum(1 for _ in directory.rglob("*.dcm"))

    def run() -> tuple[float, int]:
        # --no-resume: every run sends every file (the journal would otherwise
        # skip what an earlier run stored, and time nothing).
        command = [sys.executable, "-m", "dicom_fastsend", "send", "-i", str(directory), "-r",
                   "-a", aet, "-H", "127.0.0.1", "-p", str(port), "-P", str(processes),
                   "--no-progress", "--no-resume", "--log-dir", str(log_dir), *options]  # fmt: skip
        seconds, rss, output = run_timed(command)
        if f"{count} files: {count} stored" not in output:
            raise RuntimeError(f"fastsend did not store all {count} files: {output[-2000:]}")
        return seconds, rss

    return run


class DiscardingReader:
    """A TCP server that reads and throws away everything: the raw pump's far end."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
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


def raw_pump(files: Sequence[Path]) -> Callable[[], tuple[float, int]]:
    reader = DiscardingReader()

    def run() -> tuple[float, int]:
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", reader.port)) as connection:
            for path in files:
                with path.open("rb") as handle:
                    connection.sendfile(handle)
        return time.perf_counter() - started, 0

    return run


# ------------------------------------------------------------------ receivers


class Receiver:
    def __init__(self, name: str, port: int, aet: str, stop: Callable[[], None]) -> None:
        self.name, self.port, self.aet, self._stop = name, port, aet, stop

    def stop(self) -> None:
        self._stop()


def storescp_receiver(workdir: Path, tcp_nodelay: bool) -> Receiver:
    peer = start_storescp(
        workdir / f"storescp-{'nodelay' if tcp_nodelay else 'stock'}",
        aet="STORESCP", fork=True, ignore=True, tcp_nodelay=tcp_nodelay,
    )  # fmt: skip
    name = "storescp --ignore" + (" TCP_NODELAY=1" if tcp_nodelay else " (Nagle on)")
    return Receiver(name, peer.port, peer.aet, peer.stop)


def sink_receiver() -> Receiver:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "dicom_fastsend", "sink", "-p", str(port), "-a", "SINK"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)

    def stop() -> None:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)

    return Receiver("fastsend sink", port, "SINK", stop)


# ------------------------------------------------------------------ the run


def measure(
    results: list[Measurement], receiver: str, sender: str, files: Sequence[Path],
    run: Callable[[], tuple[float, int]], runs: int,
) -> Measurement:  # fmt: skip
    m = Measurement(receiver, sender, len(files), sum(p.stat().st_size for p in files))
    for _ in range(runs):
        try:
            seconds, rss = run()
        except (RuntimeError, OSError) as exc:
            m.failed = str(exc)[:500]
            break
        m.seconds.append(seconds)
        m.peak_rss_bytes.append(rss)
    results.append(m)
    shown = f"{m.files_per_second:9.1f} files/s {m.megabytes_per_second:8.1f} MB/s"
    print(f"  {receiver:<34} {sender:<26} {m.failed or shown}", flush=True)
    return m


def table(results: list[Measurement], description: str) -> str:
    def find(receiver: str, sender: str) -> Measurement | None:
        return next((m for m in results if m.receiver == receiver and m.sender == sender), None)

    lines = [
        f"Machine: {machine()}. {description}",
        "",
        "| receiver | sender | files | files/s | MB/s | vs storescu | vs raw pump | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    pump = next((m for m in results if m.sender == "raw pump (sendfile)"), None)
    for m in results:
        if m.failed:
            lines.append(f"| {m.receiver} | {m.sender} | {m.files} | failed | | | | |")
            continue
        reference = find(m.receiver, "DCMTK storescu")
        ratio = (
            f"{m.files_per_second / reference.files_per_second:.2f}x"
            if reference and reference.seconds and reference.files == m.files
            else ""
        )
        pumped = (
            f"{m.megabytes_per_second / pump.megabytes_per_second:.0%}"
            if pump and pump.seconds
            else ""
        )
        rss = f"{max(m.peak_rss_bytes) / 1e6:.0f}" if any(m.peak_rss_bytes) else ""
        lines.append(
            f"| {m.receiver} | {m.sender} | {m.files} | {m.files_per_second:.0f} | "
            f"{m.megabytes_per_second:.0f} | {ratio} | {pumped} | {rss} |"
        )
    return "\n".join(lines)


def headline(results: list[Measurement]) -> list[str]:
    """The ratios the project's targets are stated in (issue #5), where measured."""

    def rate(receiver_prefix: str, sender: str, files: int) -> float | None:
        for m in results:
            if m.receiver.startswith(receiver_prefix) and m.sender == sender and m.files == files:
                return m.files_per_second if m.seconds else None
        return None

    latency = "fastsend sink via 20 ms RTT proxy"
    lat_files = next((m.files for m in results if m.receiver.startswith(latency)), 0)
    full = max((m.files for m in results), default=0)
    small = min((m.files for m in results if not m.receiver.startswith(latency)), default=0)
    fast, stock, sink = (
        "storescp --ignore TCP_NODELAY=1",
        "storescp --ignore (Nagle on)",
        "fastsend sink",
    )
    pairs = [
        (
            "fastsend -P 1 / storescu, fast storescp",
            rate(fast, "fastsend -P 1", full),
            rate(fast, "DCMTK storescu", full),
        ),
        (
            "fastsend -P 2 / storescu, fast storescp",
            rate(fast, "fastsend -P 2", full),
            rate(fast, "DCMTK storescu", full),
        ),
        (
            "fastsend -P 2 / fastsend -P 1, fast storescp",
            rate(fast, "fastsend -P 2", full),
            rate(fast, "fastsend -P 1", full),
        ),
        (
            "fastsend -P 4 / fastsend -P 1, fast storescp",
            rate(fast, "fastsend -P 4", full),
            rate(fast, "fastsend -P 1", full),
        ),
        (
            "fastsend -P 1 / storescu, stock storescp (Nagle on)",
            rate(stock, "fastsend -P 1", small),
            rate(stock, "DCMTK storescu", small),
        ),
        (
            "fastsend -P 1 / pynetdicom storescu",
            rate(fast, "fastsend -P 1", small),
            rate(fast, "pynetdicom storescu", small),
        ),
        (
            "20 ms RTT: fastsend -P 8 / fastsend -P 1",
            rate(latency, "fastsend -P 8", lat_files),
            rate(latency, "fastsend -P 1", lat_files),
        ),
        (
            "20 ms RTT: fastsend --max-ops 8 / --max-ops 1",
            rate(latency, "fastsend -P 1 --max-ops 8", lat_files),
            rate(latency, "fastsend -P 1", lat_files),
        ),
        (
            "20 ms RTT: fastsend -P 1 --max-ops 8 / storescu",
            rate(latency, "fastsend -P 1 --max-ops 8", lat_files),
            rate(latency, "DCMTK storescu", lat_files),
        ),
        (
            "storescu to fastsend sink / storescu to storescp",
            rate(sink, "DCMTK storescu", full),
            rate(fast, "DCMTK storescu", full),
        ),
    ]
    return [f"- {name}: **{a / b:.2f}x**" for name, a, b in pairs if a and b]


def update_readme(text: str) -> None:
    readme = REPO / "README.md"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 CT files instead of 2,000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data", type=Path, default=REPO / "bench" / ".data")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    args = parser.parse_args()
    if find_dcmtk("storescu") is None:
        sys.exit("DCMTK is needed: apt-get install dcmtk (or run bash tests/run.sh once)")

    count = 200 if args.quick else 2000
    ct_dir = args.data / f"ct{count}"
    if not ct_dir.exists():
        print(f"generating {count} CT files of 512x512x16 bit in {ct_dir} ...", flush=True)
        write_archive(ct_dir, studies=count // 100, instances_per_study=100, rows=512, columns=512)
    ct_files = sorted(ct_dir.rglob("*.dcm"))
    # Senders that take 40 ms per file, or pynetdicom, get a subset so that a
    # run ends in minutes; their ratios compare the same subset.
    small_dir = args.data / f"ct64_{count // 2}"
    if not small_dir.exists():
        write_archive(small_dir, studies=count // 200, instances_per_study=100, rows=64, columns=64)
    subset_count = min(count, 500)
    subset_dir = args.data / f"ct{subset_count}"
    if not subset_dir.exists():
        write_archive(
            subset_dir, studies=subset_count // 100, instances_per_study=100, rows=512, columns=512
        )
    subset_files = sorted(subset_dir.rglob("*.dcm"))

    results: list[Measurement] = []
    full = f"{len(ct_files)} files"
    small = f"{len(subset_files)} files"
    with tempfile.TemporaryDirectory(prefix="fastsend-bench-") as temporary:
        work = Path(temporary)
        logs = work / "logs"
        print(f"machine: {machine()}")

        def row(receiver: Receiver, label: str, sender: str, files: list[Path],
                run: Callable[[], tuple[float, int]]) -> None:  # fmt: skip
            measure(results, f"{receiver.name}, {label}", sender, files, run, args.runs)

        measure(results, f"raw TCP (discard), {full}", "raw pump (sendfile)", ct_files,
                raw_pump(ct_files), args.runs)  # fmt: skip

        fast = storescp_receiver(work, tcp_nodelay=True)
        try:
            row(fast, full, "DCMTK storescu", ct_files,
                storescu(fast.port, fast.aet, ct_dir, tcp_nodelay=True))  # fmt: skip
            for processes in (1, 2, 4):
                row(fast, full, f"fastsend -P {processes}", ct_files,
                    fastsend(fast.port, fast.aet, ct_dir, processes, logs))  # fmt: skip
            row(fast, small, "DCMTK storescu", subset_files,
                storescu(fast.port, fast.aet, subset_dir, tcp_nodelay=True))  # fmt: skip
            row(fast, small, "pynetdicom storescu", subset_files,
                pynetdicom_storescu(fast.port, fast.aet, subset_dir))  # fmt: skip
            row(fast, small, "fastsend -P 1", subset_files,
                fastsend(fast.port, fast.aet, subset_dir, 1, logs))  # fmt: skip
        finally:
            fast.stop()

        stock = storescp_receiver(work, tcp_nodelay=False)
        try:
            row(stock, small, "DCMTK storescu", subset_files,
                storescu(stock.port, stock.aet, subset_dir, tcp_nodelay=False))  # fmt: skip
            row(stock, small, "fastsend -P 1", subset_files,
                fastsend(stock.port, stock.aet, subset_dir, 1, logs))  # fmt: skip
        finally:
            stock.stop()

        sink = sink_receiver()
        try:
            row(sink, full, "DCMTK storescu", ct_files,
                storescu(sink.port, sink.aet, ct_dir, tcp_nodelay=True))  # fmt: skip
            for processes in (1, 2):
                row(sink, full, f"fastsend -P {processes}", ct_files,
                    fastsend(sink.port, sink.aet, ct_dir, processes, logs))  # fmt: skip
            # Latency: the same sink behind a proxy adding 10 ms each way
            # (20 ms RTT), with small files so the round trips dominate.
            proxy_port = free_port()
            delayproxy.start_in_thread(proxy_port, ("127.0.0.1", sink.port), 0.010)
            behind = Receiver(
                "fastsend sink via 20 ms RTT proxy", proxy_port, sink.aet, lambda: None
            )
            small_files = sorted(small_dir.rglob("*.dcm"))
            label = f"{len(small_files)} files of 64x64"
            row(behind, label, "DCMTK storescu", small_files,
                storescu(proxy_port, sink.aet, small_dir, tcp_nodelay=True))  # fmt: skip
            for processes, options in ((1, ()), (1, ("--max-ops", "8")), (8, ())):
                name = f"fastsend -P {processes}" + (" --max-ops 8" if options else "")
                send = fastsend(proxy_port, sink.aet, small_dir, processes, logs, *options)
                row(behind, label, name, small_files, send)
        finally:
            sink.stop()

    description = (
        f"{len(ct_files)} CT files of 512x512x16 bit "
        f"({sum(p.stat().st_size for p in ct_files) / 1e6:.0f} MB), "
        f"warm page cache, loopback, median of {args.runs} runs of each whole command. "
        f"Rows marked {len(subset_files)} files use a subset, for senders that need a minute "
        "per 1,000 files. Ratios compare with DCMTK storescu to the same "
        "receiver on the same files."
    )
    text = table(results, description) + "\n\n" + "\n".join(headline(results))
    print()
    print(text)
    args.out.write_text(
        json.dumps(
            {
                "machine": machine(),
                "description": description,
                "results": [asdict(m) for m in results],
            },
            indent=2,
        )
        + "\n"
    )
    if args.readme:
        update_readme(text)


if __name__ == "__main__":
    main()
