"""`fastsend status`: what the inventory says, read-only, during and after real sends."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from dicom_fastsend.config import PeerConfig, default_journal_path
from dicom_fastsend.sink import Sink
from dicom_fastsend.status import STATUS_SCHEMA
from fastsend_cli import Run, fastsend, send_args
from peers import PynetdicomSCP, SynthArchive, make_archive

LOOPBACK = "127.0.0.1"
SIDE_FILES = ("", "-wal", "-shm")


def status(*args: str) -> Run:
    return fastsend("status", *args)


def status_json(*args: str) -> dict[str, Any]:
    run = status(*args, "--json")
    assert run.returncode == 0, run.output
    report: dict[str, Any] = json.loads(run.stdout)
    jsonschema.validate(report, json.loads(STATUS_SCHEMA.read_text(encoding="utf-8")))
    return report


def summary_of(run: Run) -> dict[str, Any]:
    """The JSON summary a send says it wrote (a log dir may hold several)."""
    match = re.search(r"^summary: (\S+)$", run.stderr, re.MULTILINE)
    assert match is not None, run.output
    summary: dict[str, Any] = json.loads(Path(match[1]).read_text(encoding="utf-8"))
    return summary


def files_on_disk(journal: Path) -> dict[str, tuple[int, str] | None]:
    """The journal and its -wal and -shm: (mtime in ns, SHA-256 of the bytes), None if absent."""
    state: dict[str, tuple[int, str] | None] = {}
    for suffix in SIDE_FILES:
        path = Path(f"{journal}{suffix}")
        state[suffix] = (
            (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
            if path.exists()
            else None
        )
    return state


def counts_of_send(summary: dict[str, Any]) -> dict[str, int]:
    """The rows a send leaves in the journal, from its summary's counts.

    Files skipped as already stored are counted in the summary but keep the
    row of the session that stored them.
    """
    counts = summary["counts"]
    return {
        "pending": 0,
        "in_flight": 0,
        "stored": counts["stored"],
        "warning": counts["warning"],
        "failed": counts["failed"],
        "skipped": counts["skipped"] - counts["already_stored"],
        "total": counts["found"] - counts["already_stored"],
    }


def with_failures(root: Path) -> tuple[SynthArchive, Path, Path]:
    """The synthetic archive plus a file cut short and one that is not DICOM."""
    archive = make_archive(root)
    cut = root / "cut.dcm"
    data = archive.files[0].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    notes = root / "notes.txt"
    notes.write_text("not DICOM\n")
    return archive, cut, notes


# ---------------------------------------------------------------- after a send


def test_status_of_a_finished_send_adds_up_to_its_summary(sink: Sink, tmp_path: Path) -> None:
    archive, cut, _ = with_failures(tmp_path / "archive")
    logs = tmp_path / "logs"
    destination = ("-a", "SINK", "-H", LOOPBACK, "-p", str(sink.port), "--log-dir", str(logs))
    send = send_args(LOOPBACK, sink.port, "SINK", str(archive.root))
    run = fastsend(*send, "--log-dir", str(logs))
    assert run.returncode == 1, run.output
    summary = summary_of(run)

    report = status_json(*destination)
    assert report["destination"] == f"SINK@{LOOPBACK}:{sink.port}"
    assert report["journal"] == summary["journal"]
    session = report["session"]
    assert session["session_id"] == summary["session_id"]
    assert (session["state"], session["exit_code"]) == ("finished", 1)
    assert report["session_count"] == 1
    assert report["session_counts"] == counts_of_send(summary)
    assert report["counts"] == report["session_counts"]  # one session: every row is its
    assert report["held"] == {
        "files": len(archive.files),
        "bytes": sum(p.stat().st_size for p in archive.files),
    }
    assert report["remaining"] == {"files": 0, "bytes": 0} and report["eta_seconds"] is None
    [failure] = summary["failures"]
    assert report["failures"] == {
        "files": 1,
        "reasons": 1,
        "by_reason": [
            {"reason": failure["reason"], "status": None, "files": 1, "example": str(cut)}
        ],
    }
    files_per_study = Counter(archive.study_uids.values())
    studies = report["studies"]
    assert (studies["count"], studies["complete"]) == (len(files_per_study), len(files_per_study))
    assert {s["study_instance_uid"]: s["files"] for s in studies["listed"]} == files_per_study
    assert all(s["stored"] == s["files"] and s["remaining"] == 0 for s in studies["listed"])
    # The cut file (unreadable) and the text file (not DICOM) were never read as DICOM.
    assert studies["without_study_uid"] == {
        "files": 2,
        "stored": 0,
        "failed": 1,
        "skipped": 1,
        "remaining": 0,
    }
    text = status(*destination, "--studies", "2")
    assert text.returncode == 0, text.output
    assert f"session      {summary['session_id']}, started" in text.stdout
    assert "exit 1 (some files failed)" in text.stdout
    assert f"  stored    {len(archive.files):>14,}{len(archive.files):>14,}" in text.stdout
    assert f"        1  {failure['reason']}  (e.g. {cut})" in text.stdout
    assert "studies: 4, all complete; 2 of them:" in text.stdout

    # A rerun skips what is stored: counted in its summary, rows of the first session.
    again = fastsend(*send, "--log-dir", str(logs))
    assert again.returncode == 1, again.output
    second = summary_of(again)
    assert second["counts"]["already_stored"] == len(archive.files)
    report = status_json(*destination)
    assert report["session"]["session_id"] == second["session_id"]
    assert report["session_count"] == 2
    assert report["session_counts"] == counts_of_send(second)
    assert report["counts"] == counts_of_send(summary)
    # --session: the first one now holds only the rows no later session wrote.
    first = status_json(*destination, "--session", summary["session_id"])
    assert first["session_counts"]["stored"] == len(archive.files)
    assert first["session_counts"]["total"] == len(archive.files)


def test_failures_by_dicom_status_and_the_study_with_them_first(
    pynetdicom_scp_factory: Any, tmp_path: Path
) -> None:
    archive = make_archive(tmp_path / "archive", explicit_studies=3, instances_per_study=4)
    # Two instances of one study refused for good (PS3.4 B.2.3: C000 "Cannot
    # understand", a failure, not retried), one more of another study.
    refused = sorted(archive.files)[1:3] + [sorted(archive.files)[-1]]
    refused_uids = {archive.sop_instance_uids[p] for p in refused}
    scp: PynetdicomSCP = pynetdicom_scp_factory(
        status=lambda dataset: 0xC000 if dataset.SOPInstanceUID in refused_uids else 0
    )
    logs = tmp_path / "logs"
    run = fastsend(
        *send_args(LOOPBACK, scp.port, scp.ae_title, str(archive.root)), "--log-dir", str(logs)
    )
    assert run.returncode == 1, run.output
    summary = summary_of(run)
    report = status_json("--journal", summary["journal"], "--studies", "0")
    assert report["session_counts"] == counts_of_send(summary)
    reasons = {f["reason"] for f in summary["failures"]}
    assert len(reasons) == 1, reasons
    reasons_text = reasons.pop()
    assert report["failures"]["by_reason"] == [
        {"reason": reasons_text, "status": "0xC000", "files": 3, "example": min(map(str, refused))}
    ]
    listed = report["studies"]["listed"]
    assert len(listed) == report["studies"]["count"] == 4  # --studies 0: all
    worst = archive.study_uids[refused[0]]
    assert listed[0] == {
        "study_instance_uid": worst,
        "files": 4,
        "stored": 2,
        "failed": 2,
        "skipped": 0,
        "remaining": 0,
    }
    assert listed[1]["study_instance_uid"] == archive.study_uids[refused[-1]]
    assert listed[1]["failed"] == 1
    assert report["studies"]["complete"] == 2
    assert report["studies"]["without_study_uid"] is None
    text = status("--journal", summary["journal"], "--studies", "1")
    assert "studies: 4, 2 complete; the 1 with the most files not stored:" in text.stdout
    assert f"        4        2        2        0        0  {worst}" in text.stdout
    assert f"        3  {reasons_text}  (e.g. {min(map(str, refused))})" in text.stdout


# ---------------------------------------------------------------- during a send


@pytest.fixture
def slow_sink() -> Iterator[Sink]:
    """The sink, answering each C-STORE 50 ms late: a send of 100 files takes seconds."""
    with Sink(ae_title="SLOW", response_delay=0.05) as receiver:
        yield receiver


def stored_in(journal: Path) -> int:
    """Files the journal records as stored (0 before it exists), read-only."""
    if not journal.exists():
        return 0
    with closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as db:
        count: int = db.execute("SELECT COUNT(*) FROM files WHERE state = 'stored'").fetchone()[0]
    return count


def wait_until(condition: Any, what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.02)


def test_status_of_a_running_send_then_of_the_killed_one(slow_sink: Sink, tmp_path: Path) -> None:
    archive = make_archive(
        tmp_path / "archive", explicit_studies=5, implicit_studies=0, instances_per_study=20
    )
    logs = tmp_path / "logs"
    destination = ("-a", "SLOW", "-H", LOOPBACK, "-p", str(slow_sink.port), "--log-dir", str(logs))
    journal = default_journal_path(logs, PeerConfig(LOOPBACK, slow_sink.port, "SLOW"))
    command = [
        sys.executable, "-m", "dicom_fastsend",
        *send_args(LOOPBACK, slow_sink.port, "SLOW", str(archive.root)),
        "--log-dir", str(logs), "--no-progress",
    ]  # fmt: skip
    # A session of its own, so that the kill below takes the workers too.
    send = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_until(lambda: slow_sink.stats.instances >= 5, "the send to store 5 files")
        # Workers record outcomes in groups (every 32 files or 0.25 s, see
        # "Resume, retries, failures"): the first lands in the journal a
        # moment after the sink has the files.
        wait_until(lambda: stored_in(journal) >= 1, "the first outcome in the journal")
        report = status_json(*destination)
        session = report["session"]
        assert (session["state"], session["pid"]) == ("running", send.pid)
        assert session["finished_at"] is None and session["exit_code"] is None
        counts = report["session_counts"]
        assert counts["stored"] >= 1
        assert report["remaining"]["files"] == counts["pending"] + counts["in_flight"] > 0
        assert report["rate"]["recent_files_per_second"] > 0
        assert report["eta_seconds"] is not None and report["eta_seconds"] > 0
        text = status(*destination)
        assert text.returncode == 0, text.output
        assert f"running (pid {send.pid} on {socket.gethostname()})" in text.stdout
        assert "ETA: " in text.stdout
        assert slow_sink.stats.instances < len(archive.files), "the send ended too soon"
    finally:
        os.killpg(send.pid, signal.SIGKILL)
        send.wait(timeout=30)
    # Killed: the session never ends, and its process is gone.
    before = files_on_disk(journal)
    report = status_json(*destination)
    assert report["session"]["state"] == "crashed"
    assert report["session"]["finished_at"] is None
    assert report["eta_seconds"] is None
    assert report["remaining"]["files"] > 0
    text = status(*destination)
    assert "interrupted or crashed: not finished, and pid" in text.stdout
    assert "run the same send again to finish it" in text.stdout
    assert files_on_disk(journal) == before


# ---------------------------------------------------------------- read-only


def test_status_writes_nothing_beside_a_finished_journal(sink: Sink, tmp_path: Path) -> None:
    archive, _, _ = with_failures(tmp_path / "archive")
    logs = tmp_path / "logs"
    run = fastsend(
        *send_args(LOOPBACK, sink.port, "SINK", str(archive.root)), "--log-dir", str(logs)
    )
    journal = Path(summary_of(run)["journal"])
    before = files_on_disk(journal)
    # The send's last connection checkpointed and removed its -wal and -shm.
    assert before["-wal"] is None and before["-shm"] is None
    assert status("--journal", str(journal)).returncode == 0
    status_json("--journal", str(journal), "--studies", "0")
    assert files_on_disk(journal) == before


def test_status_reads_the_wal_of_a_killed_run_and_changes_none_of_its_files(
    sink: Sink, tmp_path: Path
) -> None:
    archive = make_archive(tmp_path / "archive")
    logs = tmp_path / "logs"
    run = fastsend(
        *send_args(LOOPBACK, sink.port, "SINK", str(archive.root)), "--log-dir", str(logs)
    )
    journal = Path(summary_of(run)["journal"])
    # A run killed just after it began its session: the session row is
    # committed to the -wal only, beside the -shm, with no connection left.
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, signal, sys\n"
            "from pathlib import Path\n"
            "from dicom_fastsend.engine.inventory import Inventory\n"
            "inventory = Inventory(Path(sys.argv[1]), sys.argv[2], 'killed_session')\n"
            "inventory.begin_session()\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n",
            str(journal),
            f"SINK@{LOOPBACK}:{sink.port}",
        ],
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL
    assert Path(f"{journal}-wal").exists() and Path(f"{journal}-shm").exists()
    db = sqlite3.connect(f"{journal.as_uri()}?mode=ro&immutable=1", uri=True)
    in_the_file = {row[0] for row in db.execute("SELECT session_id FROM sessions")}
    db.close()
    assert "killed_session" not in in_the_file, "the session should be in the -wal only"
    before = files_on_disk(journal)

    report = status_json("--journal", str(journal))
    assert report["session"]["session_id"] == "killed_session"  # read through the WAL
    assert report["session"]["state"] == "crashed"
    assert report["session_count"] == 2
    assert report["counts"]["stored"] == len(archive.files)
    assert status("--journal", str(journal)).returncode == 0
    # Neither checkpointed into the file, nor the -shm rebuilt, nor the -wal removed.
    assert files_on_disk(journal) == before


# ---------------------------------------------------------------- no usable journal


def test_no_journal_is_exit_3_naming_the_path_and_what_to_do(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    run = status("-a", "NEWPACS", "-H", "pacs", "-p", "104", "--log-dir", str(logs))
    assert run.returncode == 3, run.output
    expected = default_journal_path(logs, PeerConfig("pacs", 104, "NEWPACS"))
    assert f"ERROR no journal at {expected}:" in run.stderr
    assert "run `fastsend send` first" in run.stderr and "or give --journal" in run.stderr
    assert not logs.exists()  # nothing created
    missing = tmp_path / "missing.sqlite"
    run = status("--journal", str(missing))
    assert run.returncode == 3 and f"ERROR no journal at {missing}:" in run.stderr
    assert not missing.exists()


def test_a_file_that_is_not_a_journal_is_exit_3_naming_it(tmp_path: Path) -> None:
    notes = tmp_path / "notes.sqlite"
    notes.write_text("these are my notes, not a database\n" * 100)
    run = status("--journal", str(notes))
    assert run.returncode == 3, run.output
    assert f"ERROR cannot read {notes} as a fastsend journal: file is not a database" in run.stderr
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE patients (name TEXT)")
    run = status("--journal", str(other))
    assert run.returncode == 3, run.output
    assert f"ERROR {other} is not a fastsend journal (an SQLite file with the tables patients)" in (
        run.stderr
    )


def test_a_journal_of_an_earlier_version_says_so_and_a_send_takes_it_over(
    sink: Sink, tmp_path: Path
) -> None:
    archive = make_archive(tmp_path / "archive", explicit_studies=1, implicit_studies=0)
    journal = tmp_path / "old.sqlite"
    destination = f"SINK@{LOOPBACK}:{sink.port}"
    stored = archive.files[0]
    with sqlite3.connect(journal) as db:
        # The journal table of earlier versions (before the inventory).
        db.execute(
            "CREATE TABLE instances (destination TEXT, path TEXT, size INTEGER, mtime REAL,"
            " sop_instance_uid TEXT, sop_class_uid TEXT, outcome TEXT, status INTEGER,"
            " reason TEXT, attempts INTEGER, first_at REAL, last_at REAL, session_id TEXT,"
            " PRIMARY KEY (destination, path))"
        )
        db.execute(
            "INSERT INTO instances VALUES (?, ?, ?, ?, ?, '', 'stored', 0, '', 1, 1, 1, 'old')",
            (
                destination,
                str(stored),
                stored.stat().st_size,
                stored.stat().st_mtime,
                archive.sop_instance_uids[stored],
            ),
        )
    db.close()
    before = files_on_disk(journal)
    run = status("--journal", str(journal))
    assert run.returncode == 3, run.output
    assert f"ERROR the journal {journal} was written by an earlier version of fastsend" in (
        run.stderr
    )
    assert "run `fastsend send` of this version to the same destination once" in run.stderr
    assert files_on_disk(journal) == before  # status did not migrate it
    # What the message says to do works.
    send = fastsend(
        *send_args(LOOPBACK, sink.port, "SINK", str(archive.root)),
        "--journal", str(journal), "--log-dir", str(tmp_path / "logs"),
    )  # fmt: skip
    assert send.returncode == 0, send.output
    report = status_json("--journal", str(journal))
    assert report["destination"] == destination
    assert report["counts"]["stored"] == len(archive.files)
    assert report["session_counts"]["stored"] == len(archive.files) - 1  # one already stored


def test_a_journal_of_another_destination_is_refused_naming_both(
    sink: Sink, tmp_path: Path
) -> None:
    archive = make_archive(tmp_path / "archive", explicit_studies=1, implicit_studies=0)
    logs = tmp_path / "logs"
    run = fastsend(
        *send_args(LOOPBACK, sink.port, "SINK", str(archive.root)), "--log-dir", str(logs)
    )
    journal = summary_of(run)["journal"]
    other = status("--journal", journal, "-a", "OTHER", "-H", LOOPBACK, "-p", str(sink.port))
    assert other.returncode == 3, other.output
    assert (
        f"records the migration to SINK@{LOOPBACK}:{sink.port}, not to OTHER@{LOOPBACK}:"
        f"{sink.port}" in other.stderr
    )
