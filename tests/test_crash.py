"""Nothing lost, at scale (issue 14): kill -9, then a rerun; a journal that cannot be used.

README, "Resume, retries, failures": after a crash or ``kill -9`` and a rerun
with the same journal, every file ends stored, and the only instances sent
twice are those in flight (at most two per worker: the one in flight and the
one answered just before it); found = stored + warning + failed + skipped
holds for every run, and the journal (the inventory) agrees. A journal that
cannot be used stops the run before anything is sent, naming the file (exit
3); one that can no longer be written stops the run, naming it.

Real processes and peers: `fastsend send` in a session of its own, killed
with SIGKILL (the whole process group, or the coordinator alone); DCMTK
storescp with --fork and +uf, which writes every instance it receives to a
file of its own (so an instance received twice is two files); fastsend's own
sink where the test needs a slow peer; a Dask LocalCluster on loopback; a
read-only bind mount and a small tmpfs in a mount namespace of their own.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from dicom_fastsend import synth
from dicom_fastsend.config import PeerConfig, destination_key
from dicom_fastsend.engine.cluster import FLUSH_INTERVAL
from dicom_fastsend.engine.inventory import Inventory
from dicom_fastsend.engine.results import FileResult, Outcome
from dicom_fastsend.engine.worker import REPORT_EVERY
from dicom_fastsend.sink import Sink
from fastsend_cli import fastsend
from invariants import assert_nothing_lost, journal_already_stored, load_summary
from peers import StoreSCP

LOOPBACK = "127.0.0.1"
WORKERS = 2  # -P for the local runs
DASK_THREADS = 2  # the cluster: two Dask workers of one thread each
# README: a kill -9 sends again at most the outcomes a worker had queued and
# not journaled yet (REPORT_EVERY) and the instance in flight, per worker.
TWICE_PER_WORKER = REPORT_EVERY + 1

# The archive's SOP Instance UIDs: one arc of the synthetic root, then "1" and
# eight digits (a UID component has no leading zero, PS3.5 9.1), so every UID
# has the same length and the template's bytes can be patched in place.
UID_PREFIX = f"{synth.SYNTH_UID_PREFIX}14."
_UID = re.compile(re.escape(UID_PREFIX.encode()) + rb"1\d{8}")


# ---------------------------------------------------------------- the archive


def write_archive(root: Path, directories: int, per_directory: int) -> dict[str, str]:
    """``directories`` x ``per_directory`` small CT instances; {path as the walk spells it: UID}.

    One instance is built with pydicom; every file is its bytes with the SOP
    Instance UID (in the File Meta group and the data set) replaced by one of
    the same length: 4,000 files take about a second.
    """
    placeholder = f"{UID_PREFIX}1{0:08d}"
    template = synth.make_instance(
        study_uid=synth.synth_uid("crash", "study"),
        series_uid=synth.synth_uid("crash", "series"),
        instance_number=1,
        rows=16,
        columns=16,
    )
    template.SOPInstanceUID = placeholder
    template.file_meta.MediaStorageSOPInstanceUID = placeholder
    buffer = io.BytesIO()
    template.save_as(buffer, enforce_file_format=True)
    parts = buffer.getvalue().split(placeholder.encode())
    assert len(parts) == 3, "the UID should appear in the File Meta group and the data set"
    archive: dict[str, str] = {}
    number = 0
    for directory in range(directories):
        folder = root / f"series{directory:04d}"
        folder.mkdir(parents=True)
        for instance in range(per_directory):
            uid = f"{UID_PREFIX}1{number:08d}"
            path = folder / f"{instance:03d}.dcm"
            path.write_bytes(uid.encode().join(parts))
            archive[os.path.join(str(root), folder.name, path.name)] = uid
            number += 1
    return archive


def files_in(directory: Path) -> int:
    return sum(1 for entry in os.scandir(directory) if entry.is_file())


def received(peer: StoreSCP) -> Counter[str]:
    """SOP Instance UIDs storescp wrote, with how many times (+uf: a copy per store)."""
    uids: Counter[str] = Counter()
    for path in peer.files():
        match = _UID.search(path.read_bytes())
        assert match is not None, f"{path}: no SOP Instance UID of the archive in it"
        uids[match[0].decode()] += 1
    return uids


def twice(uids: Counter[str]) -> int:
    """Instances stored more than once (each extra copy counts)."""
    return sum(count - 1 for count in uids.values())


# ---------------------------------------------------------------- running fastsend


def send_args(
    root: Path, port: int, aet: str, journal: Path, logs: Path, *options: str
) -> list[str]:
    return [
        "send", "-i", str(root), "-r", "-a", aet, "-H", LOOPBACK, "-p", str(port),
        "--journal", str(journal), "--log-dir", str(logs), "--no-progress", *options,
    ]  # fmt: skip


def start(args: list[str], output: Path) -> subprocess.Popen[bytes]:
    """`fastsend ARGS` in a session of its own: one killpg reaches it and its workers."""
    environment = dict(os.environ)
    environment.pop("FASTSEND_PURE_PYTHON", None)
    with output.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "dicom_fastsend", *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until it holds; the seconds it took, or fail naming ``what``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what}: not after {timeout:g} s")
        time.sleep(0.002)
    return time.monotonic() - started


def gone(process: psutil.Process) -> bool:
    """Ended: no longer there, or a zombie (reparented to an init that does not reap)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def reap() -> Iterator[list[psutil.Process]]:
    """Processes a test started and must not leave behind, even when it fails."""
    started: list[psutil.Process] = []
    yield started
    for process in started:
        if not gone(process):
            process.kill()


# ---------------------------------------------------------------- the inventory


def inventory(journal: Path) -> dict[str, tuple[str, str | None]]:
    """{path: (state, what the destination holds)} for every row of the journal."""
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT dir, name, state, held_outcome FROM files").fetchall()
    return {os.path.join(directory, name): (state, held) for directory, name, state, held in rows}


def assert_inventory_complete(
    journal: Path, archive: dict[str, str], summary: dict[str, object]
) -> None:
    """Every input has a row the destination holds, none is pending or in flight, and the
    rows add up to the rerun's counts: those it stored and those it skipped as stored."""
    rows = inventory(journal)
    missing = sorted(set(archive) - set(rows))
    assert not missing, f"{len(missing)} inputs have no row in the journal, e.g. {missing[:3]}"
    unfinished = sorted(p for p, (state, _) in rows.items() if state in ("pending", "in_flight"))
    assert not unfinished, f"{len(unfinished)} rows still pending or in flight: {unfinished[:3]}"
    not_held = sorted(p for p in archive if "stored" not in rows[p])
    assert not not_held, f"{len(not_held)} inputs not recorded as stored, e.g. {not_held[:3]}"
    counts = summary["counts"]
    assert isinstance(counts, dict)
    states = Counter(rows[p][0] for p in archive)
    assert states == {"stored": counts["stored"] + counts["already_stored"]}, (states, counts)


def stored_rows(journal: Path) -> dict[str, float]:
    """{path: when its row was last written} for the rows the destination holds."""
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT dir, name, last_at FROM files WHERE held_outcome IS NOT NULL")
        return {os.path.join(directory, name): when for directory, name, when in rows}


def row_count(journal: Path) -> int:
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
        count: int = db.execute("SELECT COUNT(*) FROM files").fetchone()[0]
    return count


def check_rerun(
    logs: Path, journal: Path, archive: dict[str, str]
) -> tuple[dict[str, object], set[str]]:
    """The rerun's summary holds the invariant, and so does the journal it leaves."""
    summary = load_summary(logs)
    already = journal_already_stored(summary, journal)
    stored = assert_nothing_lost(summary, archive, logs, already)
    assert len(stored) + len(already) == len(archive)
    assert_inventory_complete(journal, archive, summary)
    return summary, already


# ---------------------------------------------------------------- local backend


@pytest.mark.parametrize("moment", ["walk", "sending"])
def test_kill_9_of_the_whole_run_then_a_rerun_stores_everything(
    moment: str, tmp_path: Path, storescp_factory: Callable[..., StoreSCP]
) -> None:
    """kill -9 of the coordinator and its workers (one process group), then a rerun.

    "walk": as soon as the first instance has arrived, while the walk of
    1,000 directories is still going (the journal has fewer rows than the
    archive has files). "sending": with the walk over, 1,000 files in.
    """
    archive = write_archive(tmp_path / "archive", directories=1000, per_directory=4)
    peer = storescp_factory(fork=True, tcp_nodelay=True, extra_args=["+uf"])
    journal = tmp_path / "journal.sqlite"
    root = tmp_path / "archive"
    args = send_args(root, peer.port, peer.aet, journal, tmp_path / "logs1", "-P", str(WORKERS))
    process = start(args, tmp_path / "first.txt")
    threshold = 1 if moment == "walk" else 1000

    def moment_reached() -> bool:
        if files_in(peer.output_dir) < threshold:
            return False
        # "sending" means the walk is over too: the sender can now store 1,000
        # files before the walk has committed its 4,000 rows.
        return moment == "walk" or row_count(journal) == len(archive)

    try:
        waited = wait_until(moment_reached, 60, f"{threshold} instance(s) stored")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    at_kill = files_in(peer.output_dir)
    rows = row_count(journal)  # what the walk had committed when it was killed
    if moment == "walk":
        assert rows < len(archive), f"the walk was over ({rows} rows) when the kill came"
    else:
        assert rows == len(archive)
    assert at_kill < len(archive), "the kill came after the last instance"

    logs = tmp_path / "logs2"
    rerun = fastsend(*send_args(root, peer.port, peer.aet, journal, logs, "-P", str(WORKERS)))
    assert rerun.returncode == 0, rerun.output
    uids = received(peer)
    assert set(uids) == set(archive.values()), "an instance never arrived"
    duplicates = twice(uids)
    summary, already = check_rerun(logs, journal, archive)
    print(
        f"kill -9 during the {moment}: {waited:.2f} s in, {rows} of {len(archive)} rows, "
        f"{at_kill} instances stored; the rerun skipped {len(already)} as already stored "
        f"and stored {summary['counts']['stored']}; {duplicates} instance(s) stored twice"
    )
    assert duplicates <= TWICE_PER_WORKER * WORKERS, f"{duplicates} instances stored twice"


def test_orphaned_workers_stop_after_their_file_in_flight_and_record_it(
    tmp_path: Path, storescp_factory: Callable[..., StoreSCP], reap: list[psutil.Process]
) -> None:
    """kill -9 of the coordinator alone, during sending: its workers are orphans.

    Their pipe to the coordinator reaches its end: each finishes the file in
    flight, records it in the journal, releases its association and exits; it
    neither goes on sending nor waits forever for a batch. Since every outcome
    is recorded before it is reported, the rerun sends nothing twice.
    """
    archive = write_archive(tmp_path / "archive", directories=100, per_directory=10)
    peer = storescp_factory(fork=True, tcp_nodelay=True, extra_args=["+uf"])
    journal = tmp_path / "journal.sqlite"
    root = tmp_path / "archive"
    args = send_args(root, peer.port, peer.aet, journal, tmp_path / "logs1", "-P", str(WORKERS))
    process = start(args, tmp_path / "first.txt")
    coordinator = psutil.Process(process.pid)
    reap.append(coordinator)
    try:
        wait_until(lambda: files_in(peer.output_dir) >= 300, 60, "300 instances stored")
        workers = coordinator.children()
        reap.extend(workers)
        assert len(workers) == WORKERS, workers
    finally:
        os.kill(process.pid, signal.SIGKILL)  # the coordinator alone
        process.wait(timeout=10)
        dead = time.time()  # reaped: its end of every pipe is closed by now
    ended = wait_until(
        lambda: all(gone(worker) for worker in workers), 10, "the orphaned workers exit"
    )
    # Each worker sent after the coordinator's death at most the file in
    # flight, or that one and the next, which it began before it noticed.
    # What the receiver wrote after the death says so (storescp writes each
    # instance as it arrives); the journal's times would not, since queued
    # outcomes of files stored before are recorded after it.
    late = [p for p in peer.output_dir.rglob("*") if p.is_file() and p.stat().st_mtime > dead]
    assert len(late) <= 2 * WORKERS, f"the orphaned workers went on: {sorted(late)}"
    recorded = {path: when for path, when in stored_rows(journal).items() if when > dead}
    # Every file a worker sent is recorded as stored.
    assert len(stored_rows(journal)) == files_in(peer.output_dir)

    logs = tmp_path / "logs2"
    rerun = fastsend(*send_args(root, peer.port, peer.aet, journal, logs, "-P", str(WORKERS)))
    assert rerun.returncode == 0, rerun.output
    uids = received(peer)
    assert set(uids) == set(archive.values()), "an instance never arrived"
    summary, already = check_rerun(logs, journal, archive)
    print(
        f"kill -9 of the coordinator alone: the workers exited {ended:.2f} s later, having "
        f"recorded {len(recorded)} more as stored; the rerun skipped {len(already)} and "
        f"stored {summary['counts']['stored']}; {twice(uids)} instance(s) stored twice"
    )
    assert twice(uids) == 0, "an instance the journal should have recorded was sent again"


# ---------------------------------------------------------------- Dask backend


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A Dask LocalCluster on loopback: two worker processes of one thread each."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=DASK_THREADS,
        threads_per_worker=1,
        processes=True,
        host=LOOPBACK,
        dashboard_address=f"{LOOPBACK}:0",
        silence_logs=logging.ERROR,
    ) as running:
        yield running.scheduler_address


def wait_until_quiet(sink: Sink, quiet: float, timeout: float) -> float:
    """Wait until the sink has received nothing for ``quiet`` seconds; when it last did."""
    deadline = time.monotonic() + timeout
    count, last = sink.stats.instances, time.monotonic()
    while time.monotonic() - last < quiet:
        assert time.monotonic() < deadline, f"the sink still receives after {timeout:g} s"
        time.sleep(0.01)
        if sink.stats.instances != count:
            count, last = sink.stats.instances, time.monotonic()
    return last


def test_kill_9_of_the_coordinator_with_cluster_then_a_rerun(cluster: str, tmp_path: Path) -> None:
    """kill -9 of `fastsend send --cluster` during sending, then a rerun with --cluster.

    The coordinator alone writes the journal with --cluster, so what its
    tasks stored and it had not recorded yet is sent again by the rerun. The
    tasks learn from the scheduler that the client that submitted them is
    gone (it releases their keys) and stop after the file in flight, so that
    is what they stored in the last FLUSH_INTERVAL before the kill (not yet
    published to the coordinator) and the file in flight, per worker thread,
    rather than the rest of each running batch (up to 256 files).
    """
    archive = write_archive(tmp_path / "archive", directories=40, per_directory=15)
    delay = 0.02  # seconds per C-STORE: 50 files a second per Dask worker thread
    journal = tmp_path / "journal.sqlite"
    root = tmp_path / "archive"
    with Sink(ae_title="SINK", response_delay=delay) as sink:
        args = send_args(root, sink.port, "SINK", journal, tmp_path / "logs1", "--cluster", cluster)
        process = start(args, tmp_path / "first.txt")
        try:
            wait_until(lambda: sink.stats.instances >= 150, 60, "150 instances stored")
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            killed = time.monotonic()
            process.wait(timeout=10)
        at_kill = sink.stats.instances
        # The tasks that were running go on until they stop; then the rerun.
        last = wait_until_quiet(sink, quiet=1.0, timeout=30)
        after = sink.stats.instances - at_kill
        sink.response_delay = 0.0
        logs = tmp_path / "logs2"
        rerun = fastsend(*send_args(root, sink.port, "SINK", journal, logs, "--cluster", cluster))
        uids = Counter(sink.stats.received_uids)
    assert rerun.returncode == 0, rerun.output
    assert set(uids) == set(archive.values()), "an instance never arrived"
    summary, already = check_rerun(logs, journal, archive)
    duplicates = twice(uids)
    print(
        f"kill -9 of the coordinator with --cluster, {at_kill} instances in: the tasks stored "
        f"{after} more in the {max(0.0, last - killed):.2f} s after it; the rerun skipped "
        f"{len(already)} and stored {summary['counts']['stored']}; {duplicates} instance(s) "
        "stored twice"
    )
    # Per worker thread: the files stored in the last FLUSH_INTERVAL before the
    # kill (a task publishes its outcomes that often), as much again for the
    # delivery of its last events and the coordinator's next write, the file
    # in flight, and the one that began before the scheduler's release
    # reached the task. Without the release check, each task went on to the
    # end of its batch: 133 more files, 149 stored twice.
    per_thread = math.ceil(2 * FLUSH_INTERVAL / delay) + 2
    assert after <= DASK_THREADS * 2, f"the tasks went on after the kill: {after} more files"
    assert duplicates <= DASK_THREADS * per_thread, f"{duplicates} instances stored twice"


# ---------------------------------------------------------------- a journal that cannot be used


def run_in_mount_namespace(script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``sh -c script`` in a mount namespace of its own: its mounts vanish with it."""
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def mounts(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip unless this process may mount (root, or CAP_SYS_ADMIN, and unshare(1))."""
    point = tmp_path_factory.mktemp("mount-check")
    try:
        probe = run_in_mount_namespace(f"mount -t tmpfs -o size=64k tmpfs {point}", timeout=30)
    except FileNotFoundError:
        pytest.skip("unshare(1) is not installed: no mount namespace for the journal")
    if probe.returncode != 0:
        pytest.skip(f"cannot mount in a mount namespace here: {probe.stderr.strip()}")


def fastsend_line(*args: str) -> str:
    """`fastsend ARGS` as a shell command line, with this interpreter."""
    return shlex.join([sys.executable, "-m", "dicom_fastsend", *args])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def earlier_journal(path: Path, sink: Sink, archive: dict[str, str]) -> None:
    """A journal of an earlier run to this sink, which recorded one file as stored."""
    journal = Inventory(path, destination_key(PeerConfig(LOOPBACK, sink.port, "SINK")), "earlier")
    journal.begin_session()
    stored, uid = next(iter(archive.items()))
    result = FileResult(stored, Outcome.STORED, "", 0, uid, synth.CT_IMAGE_STORAGE)
    journal.record(result, os.path.getsize(stored), os.path.getmtime(stored))
    journal.end_session(0)
    journal.close()


@pytest.mark.parametrize("kind", ["read-only mount", "read-only mount, new", "immutable", "full"])
def test_a_journal_that_cannot_be_written_stops_the_run_before_anything_is_sent(
    kind: str, mounts: None, tmp_path: Path, sink: Sink
) -> None:
    """Read-only (a read-only bind mount; chattr +i, which stops root too) or on a full
    disk (a tmpfs with 8 kB free): exit 3 naming the file and what to do, before any
    association; the journal is left as it was."""
    archive = write_archive(tmp_path / "archive", directories=3, per_directory=4)
    directory = tmp_path / "journal"
    directory.mkdir()
    journal = directory / "journal.sqlite"
    if kind != "read-only mount, new":
        earlier_journal(journal, sink, archive)
    before = digest(journal) if journal.exists() else None
    run = fastsend_line(
        *send_args(tmp_path / "archive", sink.port, "SINK", journal, tmp_path / "logs")
    )
    if kind.startswith("read-only mount"):
        script = f"mount --bind -o ro {directory} {directory}\n{run}"
        why = "its file system is mounted read-only"
    elif kind == "immutable":
        if subprocess.run(["chattr", "+i", str(journal)], check=False).returncode != 0:
            pytest.skip(f"chattr +i is not supported on the file system of {tmp_path}")
        script = f"{run} || status=$?; chattr -i {journal}; exit ${{status:-0}}"
        why = "attempt to write a readonly database (the file is not writable)"
    else:
        # The journal on a tmpfs of 256 kB, filled but for 8 kB.
        script = (
            f"mount -t tmpfs -o size=256k tmpfs {directory}\n"
            f"head -c {248 * 1024} /dev/zero > {directory}/filler\n{run}"
        )
        why = "kB free)"
    done = run_in_mount_namespace(script)
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"cannot use the journal {journal}: " in done.stderr, done.stderr
    assert why in done.stderr, done.stderr
    assert "give --journal a writable path" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert sink.stats.associations == 0, "something was sent"
    assert (digest(journal) if journal.exists() else None) == before  # left as it was
    summary = load_summary(tmp_path / "logs")
    assert summary["exit_code"] == 3 and f"cannot use the journal {journal}" in summary["error"]
    assert summary["counts"]["found"] == 0


def test_a_disk_that_fills_during_the_run_stops_it_and_the_rerun_stores_everything(
    mounts: None, tmp_path: Path, storescp_factory: Callable[..., StoreSCP]
) -> None:
    """The journal's file system fills up while the run sends (the test fills it).

    The run stops dispatching at the first write that fails (the
    coordinator's or a worker's), lets the files in flight finish, writes its
    summary and exits 3 naming the journal. With the space freed, the same
    command sends everything the journal does not record as stored: an
    instance arrives twice only if it was in flight, or answered and not yet
    recorded, when the journal failed (two per worker at most).
    """
    archive = write_archive(tmp_path / "archive", directories=100, per_directory=20)
    peer = storescp_factory(fork=True, tcp_nodelay=True, extra_args=["+uf"])
    directory = tmp_path / "journal"
    directory.mkdir()
    journal = directory / "journal.sqlite"
    kept, first_journal = tmp_path / "kept", tmp_path / "first" / "journal.sqlite"
    kept.mkdir()
    first_journal.parent.mkdir()
    root = tmp_path / "archive"
    first, rerun = (
        fastsend_line(*send_args(root, peer.port, peer.aet, journal, logs, "-P", str(WORKERS)))
        for logs in (tmp_path / "logs1", tmp_path / "logs2")
    )
    out, files = tmp_path / "run", peer.output_dir
    out.mkdir()
    # Everything in one namespace: the tmpfs (and the journal on it) vanishes
    # with it, so the journal is copied out at the end. The disk is filled
    # once 20 instances have arrived (at most 30 s later); then the filler
    # goes and the same command runs again.
    script = f"""
mount -t tmpfs -o size=32m tmpfs {directory}
{first} > {out}/first.out 2>&1 & pid=$!
i=0
while [ "$(ls {files} | wc -l)" -lt 20 ] && kill -0 $pid && [ $i -lt 3000 ]; do
    sleep 0.01; i=$((i + 1))
done
ls {files} | wc -l > {out}/filled_at
cat /dev/zero > {directory}/filler 2>/dev/null || true
wait $pid || echo $? > {out}/first.status
ls {files} | wc -l > {out}/stopped_at
cp {directory}/journal.sqlite* {first_journal.parent}/
rm {directory}/filler
{rerun} > {out}/rerun.out 2>&1 || echo $? > {out}/rerun.status
cp {directory}/journal.sqlite* {kept}/
"""
    done = run_in_mount_namespace(script)
    assert done.returncode == 0, done.stdout + done.stderr
    output = (out / "first.out").read_text()
    assert (out / "first.status").read_text().strip() == "3", output
    assert f"cannot write the journal {journal}: database or disk is full" in output, output
    assert "run the same command again" in output
    assert "Traceback" not in output, output
    filled_at = int((out / "filled_at").read_text())
    stopped_at = int((out / "stopped_at").read_text())
    assert 20 <= filled_at <= stopped_at < len(archive), (filled_at, stopped_at)

    # The first run: every file it met has one outcome; those it had not sent
    # say why; after the failure, only the files in flight were stored.
    summary = load_summary(tmp_path / "logs1")
    assert summary["exit_code"] == 3
    assert f"cannot write the journal {journal}" in summary["error"]
    counts = summary["counts"]
    assert counts["found"] == sum(counts[k] for k in ("stored", "warning", "failed", "skipped"))
    assert counts["stored"] > 0 and counts["failed"] == 0
    reasons = Counter(s["reason"] for s in summary["skipped"])
    assert set(reasons) == {"not sent: the run stopped, the journal cannot be written"}, reasons
    # What the peer holds and the journal does not know: stored after the
    # journal failed, or answered just before and not recorded.
    unrecorded = stopped_at - sum(1 for _, held in inventory(first_journal).values() if held)
    assert 0 <= unrecorded <= TWICE_PER_WORKER * WORKERS, f"{unrecorded} stored, not recorded"

    rerun_output = (out / "rerun.out").read_text()
    assert not (out / "rerun.status").exists(), rerun_output
    uids = received(peer)
    assert set(uids) == set(archive.values()), "an instance never arrived"
    summary, already = check_rerun(tmp_path / "logs2", kept / "journal.sqlite", archive)
    print(
        f"the journal's disk filled {filled_at} instances in, the run stopped at {stopped_at} "
        f"({unrecorded} not recorded); the rerun skipped {len(already)} and stored "
        f"{summary['counts']['stored']}; {twice(uids)} instance(s) stored twice"
    )
    assert twice(uids) <= TWICE_PER_WORKER * WORKERS, f"{twice(uids)} instances stored twice"
