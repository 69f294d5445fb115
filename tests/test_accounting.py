"""Accounting (issue 13): a run that finds nothing says why, scan predicts send,
and every outcome of every file reaches the journal, locally and with --cluster.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dicom_fastsend.engine.inventory import Inventory
from dicom_fastsend.engine.prepare import Walker, admit
from dicom_fastsend.engine.results import Cause, ExitStatus, FileResult, Outcome
from dicom_fastsend.sink import Sink
from fastsend_cli import fastsend, send_args
from invariants import assert_nothing_lost, load_summary
from peers import PynetdicomSCP, SynthArchive, make_archive

LOOPBACK = "127.0.0.1"


def sink_send(sink: Sink, *inputs: Path, logs: Path, recursive: bool = True) -> Any:
    args = send_args(LOOPBACK, sink.port, "SINK", *map(str, inputs))
    if not recursive:
        args.remove("-r")
    return fastsend(*args, "--log-dir", str(logs))


# ---------------------------------------------------------------- nothing to send


def test_a_folder_of_folders_without_r_sends_nothing_says_why_and_exits_4(
    archive: SynthArchive, sink: Sink, tmp_path: Path
) -> None:
    studies = len({p.parent.parent for p in archive.files})
    logs = tmp_path / "logs"
    run = sink_send(sink, archive.root, logs=logs, recursive=False)
    assert run.returncode == ExitStatus.NOTHING_TO_SEND == 4, run.output
    hint = f"{archive.root}: {studies} subdirectories not searched; add -r to descend"
    assert f"ERROR nothing to send: no files found in the inputs; {hint}" in run.stderr
    assert sink.stats.instances == 0
    summary = load_summary(logs)
    assert summary["exit_code"] == 4
    assert summary["nothing_to_send"].endswith(hint)
    assert summary["unsearched_directories"] == [
        {"path": str(archive.root), "subdirectories": studies, "linked": False}
    ]
    assert_nothing_lost(summary, [], logs)
    # scan says the same, with the same exit status.
    scan = fastsend("scan", "-i", str(archive.root))
    assert scan.returncode == 4, scan.output
    assert hint in scan.stdout


def test_a_folder_of_links_to_folders_says_they_are_not_followed(
    archive: SynthArchive, sink: Sink, tmp_path: Path
) -> None:
    links = tmp_path / "links"
    links.mkdir()
    studies = sorted({p.parent.parent for p in archive.files})
    for study in studies:
        (links / study.name).symlink_to(study, target_is_directory=True)
    logs = tmp_path / "logs"
    run = sink_send(sink, links, logs=logs)
    assert run.returncode == 4, run.output
    hint = f"{links}: {len(studies)} links to directories not followed; give their targets with -i"
    assert f"ERROR nothing to send: no files found in the inputs; {hint}" in run.stderr
    assert load_summary(logs)["unsearched_directories"] == [
        {"path": str(links), "subdirectories": len(studies), "linked": True}
    ]
    assert sink.stats.instances == 0


def test_an_empty_folder_and_a_folder_without_dicom_exit_4(sink: Sink, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    run = sink_send(sink, empty, logs=tmp_path / "logs1")
    assert run.returncode == 4, run.output
    assert "ERROR nothing to send: no files found in the inputs" in run.stderr

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("not DICOM")
    run = sink_send(sink, notes, logs=tmp_path / "logs2")
    assert run.returncode == 4, run.output
    assert "ERROR nothing to send: none of the 1 file found is DICOM" in run.stderr
    assert load_summary(tmp_path / "logs2")["counts"]["skipped"] == 1


def test_files_beside_unsearched_folders_are_sent_and_the_folders_named(
    archive: SynthArchive, sink: Sink, tmp_path: Path
) -> None:
    series = archive.files[0].parent
    (series / "more").mkdir()
    logs = tmp_path / "logs"
    run = sink_send(sink, series, logs=logs, recursive=False)
    in_series = [p for p in archive.files if p.parent == series]
    assert run.returncode == 0, run.output
    assert sink.stats.instances == len(in_series)
    assert f"WARNING {series}: 1 subdirectory not searched; add -r to descend" in run.stderr
    assert load_summary(logs)["nothing_to_send"] is None


def test_a_rerun_with_everything_stored_is_a_success_not_nothing_to_send(
    archive: SynthArchive, sink: Sink, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    assert sink_send(sink, archive.root, logs=logs).returncode == 0
    rerun = sink_send(sink, archive.root, logs=logs)
    assert rerun.returncode == 0, rerun.output
    assert "nothing to send" not in rerun.stderr


# ---------------------------------------------------------------- scan predicts send


def messy_archive(root: Path) -> tuple[SynthArchive, dict[str, Path]]:
    """A synthetic archive plus one file of each kind that is not simply sent."""
    archive = make_archive(root)
    extra = {
        "duplicate": root / "zz_copy_of_first.dcm",
        "not_dicom": root / "notes.txt",
        "truncated": root / "truncated.dcm",
    }
    shutil.copy(archive.files[0], extra["duplicate"])
    extra["not_dicom"].write_text("not DICOM")
    extra["truncated"].write_bytes(archive.files[1].read_bytes()[:-50])
    return archive, extra


def test_scan_predicts_exactly_what_send_does(sink: Sink, tmp_path: Path) -> None:
    archive, _ = messy_archive(tmp_path / "archive")
    logs = tmp_path / "logs"
    # A first run stores one study, so the journal holds some of the archive.
    first_study = archive.files[0].parent.parent
    assert sink_send(sink, first_study, logs=logs).returncode == 0
    already = len([p for p in archive.files if first_study in p.parents])

    destination = ["-a", "SINK", "-H", LOOPBACK, "-p", str(sink.port), "--log-dir", str(logs)]

    def journal_files() -> dict[str, tuple[bytes, int]]:
        return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in logs.glob("*.sqlite*")}

    before = journal_files()
    scan = fastsend("scan", "-i", str(archive.root), "-r", *destination, "--json")
    assert scan.returncode == 1, scan.output  # the truncated file would fail
    predicted = json.loads(scan.stdout)
    assert journal_files() == before  # only read: not changed, no -wal or -shm left beside it

    stored_before = sink.stats.instances
    run = sink_send(sink, archive.root, logs=logs)
    assert run.returncode == 1, run.output
    [newest] = sorted(logs.glob("fastsend_summary_*.json"), key=os.path.getmtime)[-1:]
    summary = json.loads(newest.read_text())
    skipped = summary["skipped"]

    def reasons(prefix: str) -> int:
        return sum(1 for s in skipped if s["reason"].startswith(prefix))

    assert predicted["found"] == summary["counts"]["found"] == len(archive.files) + 3
    assert predicted["files"] == summary["counts"]["stored"] == sink.stats.instances - stored_before
    assert predicted["files"] == len(archive.files) - already
    assert predicted["already_stored"] == summary["counts"]["already_stored"] == already
    assert len(predicted["duplicates"]) == reasons("duplicate SOP Instance UID") == 1
    assert len(predicted["unreadable"]) == summary["counts"]["failed"] == 1
    assert len(predicted["skipped"]) == 1  # not DICOM
    assert summary["counts"]["skipped"] == already + 1 + 1
    assert predicted["journal"] == summary["journal"]


def test_the_walk_and_admission_sort_every_file_by_cause_without_processes(
    tmp_path: Path,
) -> None:
    archive, extra = messy_archive(tmp_path / "archive")
    inventory = Inventory(tmp_path / "inventory.sqlite", "X@h:104", "s1")
    stored_file = archive.files[2]
    status = os.stat(stored_file)
    inventory.record(FileResult(str(stored_file), Outcome.STORED), status.st_size, status.st_mtime)
    causes: dict[str, Cause] = {}
    held: list[int] = []

    def report(result: FileResult, _info: object, cause: Cause) -> None:
        assert result.path not in causes
        causes[result.path] = cause

    missing = tmp_path / "no-such-file.dcm"
    walker = Walker(
        (archive.root, missing), True, inventory, True, report, lambda d, n: held.append(n)
    )
    while walker.step():
        pass
    assert walker.walk.found == len(archive.files) + 4
    assert walker.walk.already_stored == sum(held) == 1
    pending = list(inventory.pending())
    assert str(stored_file) not in {p.path for p in pending}
    sent = admit(pending, inventory, True, report)
    assert causes == {
        # The walk meets the copy at the top first (a directory's files come
        # before its subdirectories), so the original below is the duplicate.
        str(archive.files[0]): Cause.DUPLICATE,
        str(extra["not_dicom"]): Cause.NOT_DICOM,
        str(extra["truncated"]): Cause.UNREADABLE,
        str(missing): Cause.MISSING,
    }
    assert {i.path for i in sent} == {str(p) for p in archive.files[1:]} - {str(stored_file)} | {
        str(extra["duplicate"])
    }


def test_a_rerun_given_the_directory_with_a_trailing_slash_finds_what_is_held(
    tmp_path: Path,
) -> None:
    """ "dir/" and "dir" are one directory: the rows of its own files are found either
    way, so a rerun skips them after one stat instead of reading every header again."""
    archive, _ = messy_archive(tmp_path / "archive")
    root = tmp_path / "flat"
    root.mkdir()
    held = root / "held.dcm"
    os.rename(archive.files[1], held)
    inventory = Inventory(tmp_path / "inventory.sqlite", "X@h:104", "s1")
    status = os.stat(held)
    inventory.record(FileResult(str(held), Outcome.STORED), status.st_size, status.st_mtime)

    def walk(given: str) -> int:
        walker = Walker((given,), True, inventory, True, lambda *_: None)
        while walker.step():
            pass
        return walker.walk.already_stored

    assert walk(str(root) + os.sep) == walk(str(root)) == 1


# ---------------------------------------------------------------- every outcome in the journal


def journal_rows(path: Path) -> dict[str, tuple[str, str]]:
    """path -> (outcome, reason) for every row of a journal."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT dir, name, state, reason FROM files").fetchall()
    return {os.path.join(row[0], row[1]): (row[2], row[3]) for row in rows}


def summary_outcomes(summary: dict[str, Any], inputs: list[str]) -> dict[str, tuple[str, str]]:
    """path -> (outcome, reason) for every input, as the run's summary has it."""
    outcomes = {p: ("stored", "") for p in inputs}
    for key, outcome in (("warnings", "warning"), ("failures", "failed"), ("skipped", "skipped")):
        for entry in summary[key]:
            outcomes[entry["path"]] = (outcome, entry["reason"])
    return outcomes


def assert_journal_has_every_outcome(summary: dict[str, Any], inputs: list[str]) -> None:
    expected = summary_outcomes(summary, inputs)
    rows = journal_rows(Path(summary["journal"]))
    missing = sorted(set(expected) - set(rows))
    assert not missing, f"outcomes not in the journal: {missing}"
    for path, (outcome, reason) in expected.items():
        if reason.startswith("already stored"):
            assert rows[path][0] in ("stored", "warning"), (path, rows[path])
        elif outcome == "stored":
            assert rows[path][0] == "stored", (path, rows[path])
        else:
            assert rows[path] == (outcome, reason), path


def status_by_instance(dataset: Any) -> int:
    """0xB000 (warning) for instance 2 of a series, 0xC000 (failure) for 3, else success."""
    return {"2": 0xB000, "3": 0xC000}.get(str(dataset.InstanceNumber), 0x0000)


def outcome_mix(tmp_path: Path) -> tuple[SynthArchive, list[str]]:
    """An archive whose send ends in every outcome: the inputs as fastsend spells them."""
    archive, extra = messy_archive(tmp_path / "archive")
    missing = tmp_path / "gone.dcm"
    inputs = [str(p) for p in archive.files] + [str(p) for p in extra.values()]
    return archive, inputs + [str(missing)]


def run_mix(
    archive: SynthArchive, port: int, logs: Path, missing: str, *options: str
) -> dict[str, Any]:
    run = fastsend(
        *send_args(LOOPBACK, port, "PYNETDICOM", str(archive.root), missing),
        "--log-dir", str(logs), "--retries", "0", *options,
    )  # fmt: skip
    assert run.returncode == 1, run.output
    return load_summary(logs)


def assert_every_kind(summary: dict[str, Any]) -> None:
    counts = summary["counts"]
    assert counts["stored"] and counts["warning"] and counts["failed"] >= 3, counts
    reasons = [s["reason"] for s in summary["skipped"]]
    assert any(r.startswith("duplicate SOP Instance UID") for r in reasons), reasons
    assert len(reasons) == 2, reasons  # the duplicate and the text file


def test_every_outcome_reaches_the_journal_locally(
    pynetdicom_scp_factory: Callable[..., PynetdicomSCP], tmp_path: Path
) -> None:
    scp = pynetdicom_scp_factory(status=status_by_instance)
    archive, inputs = outcome_mix(tmp_path)
    logs = tmp_path / "logs"
    summary = run_mix(archive, scp.port, logs, inputs[-1], "-P", "2")
    assert_every_kind(summary)
    assert_nothing_lost(summary, inputs, logs)
    assert_journal_has_every_outcome(summary, inputs)


def test_interrupted_files_reach_the_journal_and_a_skip_keeps_a_stored_row(
    pynetdicom_scp_factory: Callable[..., PynetdicomSCP], tmp_path: Path
) -> None:
    def slow(dataset: Any) -> int:
        time.sleep(0.2)  # the peer's own pace, so that Ctrl-C finds files queued
        return 0x0000

    scp = pynetdicom_scp_factory(status=slow)
    archive = make_archive(tmp_path / "archive", explicit_studies=4, instances_per_study=5)
    logs = tmp_path / "logs"
    args = send_args(LOOPBACK, scp.port, "PYNETDICOM", str(archive.root))
    # First, one study is stored, so the interrupted run below meets a stored row.
    first_study = archive.files[0].parent.parent
    done = fastsend(*send_args(LOOPBACK, scp.port, "PYNETDICOM", str(first_study)),
                    "--log-dir", str(logs))  # fmt: skip
    assert done.returncode == 0, done.output
    process = subprocess.Popen(
        [sys.executable, "-m", "dicom_fastsend", *args, "--log-dir", str(logs), "--no-resume"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stored_before = len(scp.received)
    deadline = time.monotonic() + 30
    while len(scp.received) < stored_before + 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(scp.received) >= stored_before + 2, "the second run stored nothing in 30 s"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr.decode()
    [summary_path] = [
        p for p in logs.glob("fastsend_summary_*.json") if json.loads(p.read_text())["interrupted"]
    ]
    summary = json.loads(summary_path.read_text())
    inputs = [str(p) for p in archive.files]
    interrupted = [s for s in summary["skipped"] if s["reason"].startswith("not sent")]
    assert interrupted, "Ctrl-C came too late to leave files unsent"
    rows = journal_rows(Path(summary["journal"]))
    first = {str(p) for p in archive.files if first_study in p.parents}
    for entry in interrupted:
        if entry["path"] in first:
            # Stored by the first run: being skipped now does not undo that.
            assert rows[entry["path"]][0] == "stored", entry
        else:
            assert rows[entry["path"]] == ("skipped", entry["reason"]), entry
    assert_nothing_lost(summary, inputs, logs)
    # A rerun sends exactly what has no stored row.
    rerun = fastsend(*args, "--log-dir", str(logs))
    assert rerun.returncode == 0, rerun.output
    assert len({r.sop_instance_uid for r in scp.received}) == len(archive.files)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host=LOOPBACK,
        dashboard_address=f"{LOOPBACK}:0",
        silence_logs=logging.ERROR,
    ) as running:
        yield running


def test_every_outcome_reaches_the_journal_with_cluster(
    cluster: Any, pynetdicom_scp_factory: Callable[..., PynetdicomSCP], tmp_path: Path
) -> None:
    scp = pynetdicom_scp_factory(status=status_by_instance)
    archive, inputs = outcome_mix(tmp_path)
    logs = tmp_path / "logs"
    summary = run_mix(archive, scp.port, logs, inputs[-1], "--cluster", cluster.scheduler_address)
    assert summary["cluster"] is not None
    assert_every_kind(summary)
    assert_nothing_lost(summary, inputs, logs)
    assert_journal_has_every_outcome(summary, inputs)
