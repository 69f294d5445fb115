"""The journal: resume skips what is stored, resends what changed or failed, survives SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicom_fastsend.config import PeerConfig, default_journal_path, destination_key
from dicom_fastsend.engine.inventory import Inventory, JournalError
from dicom_fastsend.engine.results import FileResult, Outcome
from dicom_fastsend.sink import Sink
from fastsend_cli import fastsend
from peers import PynetdicomSCP, StoreSCP, SynthArchive, make_archive
from waiting import wait_until


def send(archive: SynthArchive, port: int, ae: str, logs: Path, *options: str) -> dict[str, Any]:
    run = fastsend(
        "send", "-i", str(archive.root), "-r", "-a", ae, "-H", "127.0.0.1", "-p", str(port),
        "--log-dir", str(logs), "--retry-delay", "0.01", *options,
    )  # fmt: skip
    assert run.returncode in (0, 1), run.output
    [newest] = sorted(logs.glob("fastsend_summary_*.json"), key=os.path.getmtime)[-1:]
    summary: dict[str, Any] = json.loads(newest.read_text())
    summary["returncode"] = run.returncode
    return summary


def test_record_and_stored_round_trip(tmp_path: Path) -> None:
    journal = Inventory(tmp_path / "j.sqlite", "PACS@h:104", "s1")
    ok = FileResult("/a.dcm", Outcome.STORED, sop_instance_uid="1.2", sop_class_uid="1.2.3",
                    status=0, attempts=1)  # fmt: skip
    bad = FileResult("/b.dcm", Outcome.FAILED, "0xC000", sop_instance_uid="1.3", attempts=2)
    journal.record(ok, 10, 1.5)
    journal.record(bad, 20, 2.5)
    journal.record(bad, 20, 2.5)  # a second failed session: attempts add up
    assert set(journal.stored()) == {"/a.dcm"}
    assert journal.stored()["/a.dcm"].size == 10
    assert journal.counts() == {"stored": 1, "failed": 1}
    journal.close()
    with sqlite3.connect(tmp_path / "j.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("SELECT attempts FROM files WHERE name='b.dcm'").fetchone() == (4,)
    # One journal, one destination: another one is refused, naming both.
    with pytest.raises(JournalError, match="records the migration to PACS@h:104, not to OTHER"):
        Inventory(tmp_path / "j.sqlite", "OTHER@h:104", "s2")


def test_rerun_skips_stored_and_resends_changed(
    archive: SynthArchive, sink: Sink, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    first = send(archive, sink.port, "SINK", logs)
    assert first["counts"]["stored"] == len(archive.files)
    peer = PeerConfig("127.0.0.1", sink.port, "SINK")
    assert first["journal"] == str(default_journal_path(logs, peer))

    second = send(archive, sink.port, "SINK", logs)
    assert second["returncode"] == 0
    assert second["counts"]["stored"] == 0
    assert second["counts"]["skipped"] == len(archive.files)
    assert second["counts"]["already_stored"] == len(archive.files)
    assert second["skipped"] == []  # counted, not listed: a rerun of millions would list them all
    assert len(sink.stats.received_uids) == len(archive.files)  # nothing sent again

    changed = archive.files[0]
    os.utime(changed, (time.time() + 10, time.time() + 10))
    third = send(archive, sink.port, "SINK", logs)
    assert third["counts"]["stored"] == 1
    assert sink.stats.received_uids[-1] == archive.sop_instance_uids[changed]

    forced = send(archive, sink.port, "SINK", logs, "--no-resume")
    assert forced["counts"]["stored"] == len(archive.files)


def test_failed_instances_are_sent_again_on_the_rerun(
    archive: SynthArchive, pynetdicom_scp_factory: Callable[..., PynetdicomSCP], tmp_path: Path
) -> None:
    target = sorted(archive.uids)[0]
    refusing = {"on": True}

    def answer(ds: Any) -> int:
        return 0xC000 if refusing["on"] and ds.SOPInstanceUID == target else 0x0000

    scp = pynetdicom_scp_factory(status=answer)
    logs = tmp_path / "logs"
    first = send(archive, scp.port, scp.ae_title, logs)
    assert first["returncode"] == 1
    assert [f["sop_instance_uid"] for f in first["failures"]] == [target]
    assert first["failures"][0]["attempts"] == 1  # C000 is not retried

    refusing["on"] = False
    second = send(archive, scp.port, scp.ae_title, logs)
    assert second["returncode"] == 0
    assert second["counts"]["stored"] == 1
    assert scp.records()[-1].sop_instance_uid == target
    journal = Inventory(Path(second["journal"]), destination_key(
        PeerConfig("127.0.0.1", scp.port, scp.ae_title)), "check")  # fmt: skip
    assert journal.counts() == {"stored": len(archive.files)}


def test_duplicate_sop_instance_uid_is_sent_once_and_reported(
    archive: SynthArchive, sink: Sink, tmp_path: Path
) -> None:
    original = archive.files[0]
    copy = archive.root / "zz-copy.dcm"
    shutil.copy(original, copy)
    summary = send(archive, sink.port, "SINK", tmp_path / "logs")
    assert summary["counts"]["stored"] == len(archive.files)
    [skipped] = summary["skipped"]
    # The first one the walk meets is sent: a directory's own files come
    # before its subdirectories, so the copy at the top goes, the original waits.
    assert skipped["path"] == str(original)
    assert f"{copy} has the same one" in skipped["reason"]
    assert Counter(sink.stats.received_uids)[archive.sop_instance_uids[original]] == 1


def test_sigkill_then_rerun_stores_everything_with_at_most_one_duplicate_per_worker(
    tmp_path: Path, storescp_factory: Callable[..., StoreSCP]
) -> None:
    archive = make_archive(
        tmp_path / "archive", explicit_studies=6, implicit_studies=2, instances_per_study=5,
        rows=128, columns=128,
    )  # fmt: skip
    peer = storescp_factory(fork=True, tcp_nodelay=True, extra_args=["+uf"])
    journal = tmp_path / "journal.sqlite"
    command = [
        sys.executable, "-m", "dicom_fastsend", "send", "-i", str(archive.root), "-r",
        "-a", peer.aet, "-H", "127.0.0.1", "-p", str(peer.port), "-P", "2",
        "--journal", str(journal), "--log-dir", str(tmp_path / "logs"), "--max-rate", "0.5",
    ]  # fmt: skip
    # Its own session, so one killpg reaches the coordinator and both workers.
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_until(
            lambda: len(peer.files()) >= 8,
            30,
            "8 files stored by storescp",
            state=lambda: f"{len(peer.files())} stored",
        )
    finally:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    stored_before = len(peer.files())
    assert 0 < stored_before < len(archive.files), "the kill should land mid-run"

    rerun = fastsend(
        "send", "-i", str(archive.root), "-r", "-a", peer.aet, "-H", "127.0.0.1",
        "-p", str(peer.port), "-P", "2", "--journal", str(journal),
        "--log-dir", str(tmp_path / "logs2"),
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.output
    received = Counter(
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in peer.files()
    )
    assert set(received) == archive.uids
    duplicates = sum(n - 1 for n in received.values())
    assert duplicates <= 2, f"{duplicates} instances stored twice; at most one per worker"


def test_failures_csv_feeds_input_list(
    archive: SynthArchive, pynetdicom_scp_factory: Callable[..., PynetdicomSCP], tmp_path: Path
) -> None:
    target = sorted(archive.uids)[-1]
    refusing = {"on": True}

    def answer(ds: Any) -> int:
        return 0xA900 if refusing["on"] and ds.SOPInstanceUID == target else 0x0000

    scp = pynetdicom_scp_factory(status=answer)
    logs = tmp_path / "logs"
    first = send(archive, scp.port, scp.ae_title, logs, "--no-resume")
    [csv_path] = logs.glob("fastsend_failures_*.csv")
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "path,sop_instance_uid,status,reason,attempts"
    assert len(rows) == 2 and target in rows[1] and "0xA900" in rows[1]
    assert first["failures"][0]["path"] in rows[1]

    refusing["on"] = False
    before = len(scp.records())
    run = fastsend(
        "send", "--input-list", str(csv_path), "-a", scp.ae_title, "-H", "127.0.0.1",
        "-p", str(scp.port), "--log-dir", str(tmp_path / "logs2"),
    )  # fmt: skip
    assert run.returncode == 0, run.output
    assert [r.sop_instance_uid for r in scp.records()[before:]] == [target]
    assert "1 files: 1 stored" in run.stderr


def test_a_worker_connection_never_checkpoints_and_the_coordinators_does(tmp_path: Path) -> None:
    """Workers open the journal with checkpoint=False, so an fsync never stalls them
    between two C-STOREs; the coordinator's connection checkpoints instead."""
    path = tmp_path / "journal.sqlite"
    coordinator = Inventory(path, "STORE@127.0.0.1:104", "s")
    worker = Inventory(path, "STORE@127.0.0.1:104", "s", checkpoint=False)
    empty = path.stat().st_size
    # About 3 WAL pages an outcome: past the 1,000 pages at which SQLite's
    # automatic checkpoint would have copied them into the database file.
    for number in range(600):
        result = FileResult(f"/archive/{number:06d}.dcm", Outcome.STORED, "", 0, f"1.2.{number}")
        worker.record(result, 10, 1.0)
    assert path.stat().st_size == empty  # everything is still in the WAL
    coordinator.checkpoint()
    assert path.stat().st_size > empty
    assert len(coordinator.stored()) == 600
    worker.close()
    coordinator.close()


def test_a_new_journal_opened_while_another_connection_holds_its_lock_waits(
    tmp_path: Path,
) -> None:
    """The coordinator and a worker open a new journal at the same moment.

    PRAGMA journal_mode=WAL fails at once ("database is locked") while another
    connection holds a lock on a journal not yet in WAL mode; it skips the busy
    handler. Inventory must wait for the lock like any other statement does.
    """
    path = tmp_path / "journal.sqlite"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE earlier (x)")
    other.execute("BEGIN IMMEDIATE")  # a RESERVED lock, in rollback-journal mode
    other.execute("INSERT INTO earlier VALUES (1)")
    release = threading.Timer(0.3, other.execute, ("COMMIT",))
    release.start()
    started = time.monotonic()
    try:
        journal = Inventory(path, "STORE@127.0.0.1:104", "s")
    finally:
        release.join()
        other.close()
    assert time.monotonic() - started >= 0.25  # it waited for the lock
    journal.record(FileResult("/a.dcm", Outcome.STORED, "", 0, "1.2.3", "1.2.4"), 10, 1.0)
    assert set(journal.stored()) == {"/a.dcm"}
    journal.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.parametrize("kind", ["not-sqlite", "under-a-file"])
def test_a_journal_that_cannot_be_used_stops_the_run_naming_it(
    kind: str, archive: SynthArchive, sink: Sink, tmp_path: Path
) -> None:
    if kind == "not-sqlite":
        journal = tmp_path / "journal.sqlite"
        journal.write_bytes(b"these are not the bytes of an SQLite database\n" * 100)
        why = "file is not a database"
    else:  # its directory would have to be a regular file (refused even to root)
        (tmp_path / "a-file").write_text("not a directory")
        journal = tmp_path / "a-file" / "journal.sqlite"
        why = "[Errno 17] File exists"
    for resume in ((), ("--no-resume",)):
        run = fastsend(
            "send", "-i", str(archive.root), "-r", "-a", "SINK", "-H", "127.0.0.1",
            "-p", str(sink.port), "--journal", str(journal), *resume,
        )  # fmt: skip
        assert run.returncode == 3, run.output
        assert f"cannot use the journal {journal}: {why}" in run.stderr
        assert "give --journal" in run.stderr
        assert "Traceback" not in run.stderr
    assert sink.stats.associations == 0  # nothing sent
    if kind == "not-sqlite":
        assert journal.read_bytes().startswith(b"these are not")  # the file left as it was
