"""The multiprocess engine end to end: real worker processes, real peers.

Every run here checks the summary against the JSON schema kept in the
package, and that its counts add up to the files found.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import psutil
import pytest

from dicom_fastsend.report import SUMMARY_SCHEMA
from dicom_fastsend.sink import Sink
from invariants import log_says
from peers import Orthanc, PynetdicomSCP, StoreSCP, SynthArchive, make_archive
from waiting import wait_until


@pytest.fixture
def big_archive(tmp_path: Path) -> SynthArchive:
    """8 CT studies in Explicit VR LE and 2 MR studies in Implicit VR LE, 4 instances each."""
    return make_archive(
        tmp_path / "archive",
        explicit_studies=8,
        implicit_studies=2,
        instances_per_study=4,
        rows=128,
        columns=128,
    )


def start_fastsend(
    archive: SynthArchive, port: int, ae_title: str, log_dir: Path, *options: str
) -> subprocess.Popen[str]:
    command = [
        sys.executable, "-m", "dicom_fastsend", "send", "-i", str(archive.root), "-r",
        "-a", ae_title, "-H", "127.0.0.1", "-p", str(port), "--log-dir", str(log_dir), *options,
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


def load_summary(log_dir: Path) -> dict[str, Any]:
    """The run's summary, validated, with its counts checked to add up."""
    [path] = log_dir.glob("fastsend_summary_*.json")
    summary = json.loads(path.read_text())
    jsonschema.validate(summary, json.loads(SUMMARY_SCHEMA.read_text()))
    counts = summary["counts"]
    assert counts["found"] == sum(counts[k] for k in ("stored", "warning", "failed", "skipped"))
    session = summary["session_id"]
    assert (log_dir / f"fastsend_{session}.log").exists()
    return summary


def worker_pids(process: subprocess.Popen[str], expected: int, timeout: float = 30) -> list[int]:
    """PIDs of the worker processes: forked, so they share the coordinator's command
    line (multiprocessing's resource tracker, also a child, has its own)."""

    def workers() -> list[int]:
        try:
            coordinator = psutil.Process(process.pid)
            found = [c.pid for c in coordinator.children() if c.cmdline() == coordinator.cmdline()]
        except psutil.Error:
            return []
        return found if len(found) >= expected else []

    return wait_until(workers, timeout, f"{expected} worker processes of pid {process.pid}")


def sink_has(sink: Sink, instances: int, timeout: float = 30) -> None:
    """Wait until the sink has received `instances` C-STOREs: the run is under way."""
    wait_until(
        lambda: sink.stats.instances >= instances,
        timeout,
        f"{instances} C-STOREs at the sink",
        state=lambda: f"{sink.stats.instances} arrived",
    )


def test_four_processes_store_every_instance_exactly_once_in_storescp(
    big_archive: SynthArchive, storescp_factory: Callable[..., StoreSCP], tmp_path: Path
) -> None:
    # --fork: one storescp child per association; +uf: a second store of the
    # same instance would land in a second file instead of overwriting.
    peer = storescp_factory(fork=True, extra_args=["+uf"])
    code, stderr = finish(
        start_fastsend(big_archive, peer.port, peer.aet, tmp_path / "logs", "-P", "4")
    )
    assert code == 0, stderr + peer.output()
    files = peer.files()
    assert len(files) == len(big_archive.files), "an instance was stored twice or not at all"
    assert peer.sop_instance_uids() == big_archive.uids
    summary = load_summary(tmp_path / "logs")
    assert summary["counts"]["stored"] == len(files)
    assert len(summary["workers"]) == 4
    assert all(w["exit"] == "finished" for w in summary["workers"])
    assert sum(w["files"] for w in summary["workers"]) == len(files)
    assert summary["associations"]["opened"] >= 1
    assert summary["latency_ms"]["count"] == len(files)


def test_four_processes_to_orthanc(
    big_archive: SynthArchive, orthanc: Orthanc, tmp_path: Path
) -> None:
    code, stderr = finish(
        start_fastsend(big_archive, orthanc.dicom_port, orthanc.aet, tmp_path / "logs", "-t", "4")
    )
    assert code == 0, stderr
    assert orthanc.sop_instance_uids() == big_archive.uids
    summary = load_summary(tmp_path / "logs")
    assert summary["counts"]["stored"] == int(orthanc.statistics()["CountInstances"])
    assert summary["configuration"]["processes"] == 4


def test_a_killed_worker_loses_nothing(
    big_archive: SynthArchive, sink: Sink, tmp_path: Path
) -> None:
    # --max-rate slows the run (about 1.4 MB at 0.7 MB/s: 2 s) so a worker
    # can be killed in the middle.
    process = start_fastsend(
        big_archive, sink.port, "SINK", tmp_path / "logs", "-P", "2", "--max-rate", "0.7"
    )
    victim = worker_pids(process, 2)[0]
    # Killed once the run is storing, with most of the 40 files still to go.
    sink_has(sink, 4)
    os.kill(victim, signal.SIGKILL)
    code, stderr = finish(process)
    assert code == 0, stderr
    received = Counter(sink.stats.received_uids)
    assert set(received) == big_archive.uids
    # Only the instance in flight at the kill, and the one answered just
    # before it (its outcome is reported while the next is sent), may arrive twice.
    assert sum(n - 1 for n in received.values()) <= 2
    summary = load_summary(tmp_path / "logs")
    assert summary["counts"]["stored"] == len(big_archive.files)
    assert any(f"pid {victim}) died (killed by signal 9)" in e for e in summary["events"])
    assert any(w["exit"] == "died (killed by signal 9)" for w in summary["workers"])
    assert "died (killed by signal 9)" in stderr


def test_first_ctrl_c_finishes_in_flight_and_writes_the_summary(
    big_archive: SynthArchive, sink: Sink, tmp_path: Path
) -> None:
    process = start_fastsend(
        big_archive, sink.port, "SINK", tmp_path / "logs", "-P", "2", "--max-rate", "0.5"
    )
    worker_pids(process, 2)
    sink_has(sink, 2)  # some files stored, most still to go
    process.send_signal(signal.SIGINT)
    code, stderr = finish(process)
    assert code == 130, stderr
    summary = load_summary(tmp_path / "logs")
    assert summary["interrupted"] is True
    counts = summary["counts"]
    assert 0 < counts["stored"] < len(big_archive.files)
    assert counts["failed"] == 0
    assert counts["stored"] + counts["skipped"] == len(big_archive.files)
    assert all(s["reason"] == "not sent: the run was interrupted" for s in summary["skipped"])
    # What the summary calls stored is what the receiver got, no more, no less.
    assert len(set(sink.stats.received_uids)) == counts["stored"]
    assert all(w["exit"] == "interrupted" for w in summary["workers"])
    assert summary["associations"]["aborted"] == 0  # released, not aborted
    assert "interrupted" in stderr


def test_second_ctrl_c_aborts_and_still_writes_the_summary(
    big_archive: SynthArchive,
    pynetdicom_scp_factory: Callable[..., PynetdicomSCP],
    tmp_path: Path,
) -> None:
    def stall(dataset: Any) -> int:
        time.sleep(5)  # every C-STORE-RSP comes 5 s late
        return 0x0000

    scp = pynetdicom_scp_factory(status=stall)
    process = start_fastsend(big_archive, scp.port, scp.ae_title, tmp_path / "logs", "-P", "2")
    worker_pids(process, 2)
    scp.wait_for(1, timeout=30)  # a C-STORE is in flight
    process.send_signal(signal.SIGINT)
    # Python runs a signal's handler once for signals that arrive before it
    # gets to run: the second Ctrl-C must come after the first was handled.
    logs = tmp_path / "logs"
    wait_until(lambda: log_says(logs, "interrupted (Ctrl-C)"), 30, "the first Ctrl-C in the log")
    interrupted = time.monotonic()
    process.send_signal(signal.SIGINT)
    code, stderr = finish(process, timeout=30)
    assert time.monotonic() - interrupted < 4, "the abort waited for the stalled response"
    assert code == 130, stderr
    summary = load_summary(tmp_path / "logs")
    assert summary["interrupted"] is True
    assert any(w["exit"] == "aborted" for w in summary["workers"]), summary["workers"]
    assert summary["associations"]["aborted"] >= 1
    assert summary["counts"]["found"] == len(big_archive.files)
    in_flight = [f for f in summary["failures"] if "in flight" in f["reason"]]
    assert 1 <= len(in_flight) <= 2  # at most one per worker


def test_max_rate_limits_all_workers_together(
    big_archive: SynthArchive, sink: Sink, tmp_path: Path
) -> None:
    total = sum(path.stat().st_size for path in big_archive.files)
    rate = 1.0  # MB/s
    started = time.monotonic()
    code, stderr = finish(
        start_fastsend(big_archive, sink.port, "SINK", tmp_path / "logs", "-P", "2",
                       "--max-rate", str(rate))
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert code == 0, stderr
    # A lower bound only: the limiter must not let 2 workers double the rate.
    assert elapsed >= 0.8 * total / (rate * 1e6), f"{total} bytes in {elapsed:.2f} s"
    assert load_summary(tmp_path / "logs")["configuration"]["max_rate_mb_s"] == rate


def test_rate_budget_survives_a_holder_killed_mid_update(tmp_path: Path) -> None:
    """A worker SIGKILLed while it holds the --max-rate lock must not stall the others."""
    import fcntl
    import multiprocessing

    from dicom_fastsend.engine.worker import RateLimiter

    lock_path = tmp_path / "rate.lock"
    lock_path.touch()
    shared = multiprocessing.get_context("fork").RawValue("d", 0.0)
    ready = multiprocessing.get_context("fork").Event()

    def hold_forever() -> None:
        fd = os.open(lock_path, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        ready.set()
        time.sleep(60)

    holder = multiprocessing.get_context("fork").Process(target=hold_forever)
    holder.start()
    assert ready.wait(10)
    os.kill(holder.pid or 0, signal.SIGKILL)
    holder.join(10)
    limiter = RateLimiter(shared, str(lock_path), bytes_per_second=1e9)
    started = time.monotonic()
    limiter.acquire(1000)  # would block forever on a lock the dead holder kept
    assert time.monotonic() - started < 5
    assert shared.value > 0
