"""The inventory (SQLite): pending rows, dispatch, claims, outcomes, migration. No processes."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dicom_fastsend.engine.inventory import (
    HOT_QUERIES,
    VERIFICATION_COLUMNS,
    Inventory,
    JournalError,
    Known,
    Pending,
    State,
    join,
    split,
)
from dicom_fastsend.engine.results import FileResult, Outcome
from dicom_fastsend.io.header import FileInfo

DEST = "PACS@h:104"
CT = "1.2.840.10008.5.1.4.1.1.2"
EVRLE = "1.2.840.10008.1.2.1"


def info(path: str, uid: str, size: int = 100, mtime: float = 1.0) -> FileInfo:
    return FileInfo(path, size, mtime, CT, uid, EVRLE, "1.9", 132, "1.9.1")


def state_of(inventory_path: Path, path: str) -> str:
    directory, _, name = path.rpartition("/")
    with sqlite3.connect(inventory_path) as db:
        row = db.execute(
            "SELECT state FROM files WHERE dir = ? AND name = ?", (directory, name)
        ).fetchone()
    return str(row[0])


def test_pending_files_are_taken_in_path_order_within_the_limits(tmp_path: Path) -> None:
    inventory = Inventory(tmp_path / "i.sqlite", DEST, "s1")
    files = [Pending(f"/a/{n:02d}.dcm", 10 * (n + 1), 1.0) for n in range(5)]
    inventory.add_pending(list(reversed(files)))
    first = inventory.take_pending(max_files=2, max_bytes=10**9)
    assert first == files[:2]
    # 30 + 40 > 50: the byte cap stops the batch after one file ...
    assert inventory.take_pending(max_files=10, max_bytes=50) == [files[2]]
    # ... but a file larger than the cap still goes, alone.
    assert inventory.take_pending(max_files=10, max_bytes=1) == [files[3]]
    assert state_of(tmp_path / "i.sqlite", "/a/00.dcm") == State.IN_FLIGHT.value
    # Another session's pending rows are not this one's to send.
    other = Inventory(tmp_path / "i.sqlite", DEST, "s2")
    assert other.take_pending(10, 10**9) == []
    assert list(inventory.pending()) == [files[4]]


_PATHS = st.text(alphabet="/ab.\u00e9", max_size=12)


@given(_PATHS, _PATHS)
@example("/", "a")
@example("", "a")
@example("//", "a")
@example("a//b//", "c")
@example("a", "/b")
def test_the_inventory_key_of_a_path_is_what_os_path_gives(first: str, second: str) -> None:
    # split and join are written out for speed: they must be posixpath's.
    assert split(first) == os.path.split(first)
    assert join(first, second) == os.path.join(first, second)


def test_the_walk_records_a_directory_s_files_as_add_pending_does(tmp_path: Path) -> None:
    by_paths = Inventory(tmp_path / "a.sqlite", DEST, "s1")
    by_names = Inventory(tmp_path / "b.sqlite", DEST, "s1")
    found = [(f"{n:02d}.dcm", 10 + n, 1.5 + n) for n in range(3)]
    for directory in ("/data/study", "/", "relative"):
        by_paths.add_pending([Pending(join(directory, n), s, m) for n, s, m in found])
        by_names.add_pending_in(directory, found)
    taken = by_names.take_pending(100, 10**9)
    assert taken == by_paths.take_pending(100, 10**9)
    assert {p.path for p in taken} >= {"/data/study/00.dcm", "/00.dcm", "relative/02.dcm"}


def test_known_rows_tell_a_rerun_what_is_held_and_unchanged(tmp_path: Path) -> None:
    inventory = Inventory(tmp_path / "i.sqlite", DEST, "s1")
    stored = FileResult("/a/1.dcm", Outcome.STORED, sop_instance_uid="1.1", attempts=1)
    failed = FileResult("/a/2.dcm", Outcome.FAILED, "0xC000", attempts=1)
    inventory.record_many([(stored, 100, 5.0), (failed, 200, 6.0)])
    # The failed file is not held; the walk skips a file only with this exact version.
    assert inventory.known("/a") == {("1.dcm", 100, 5.0)}
    assert inventory.known_path("/a/1.dcm") == Known(100, 5.0, "stored")
    assert inventory.known_path("/a/2.dcm") is None
    assert inventory.known_path("/a/3.dcm") is None


def test_what_the_destination_holds_survives_a_resend_that_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "i.sqlite"
    inventory = Inventory(path, DEST, "s1")
    inventory.record(FileResult("/a/1.dcm", Outcome.WARNING, "0xB000", attempts=1), 10, 1.0)
    # --no-resume sends it again: pending, in flight, then Ctrl-C skips it.
    again = Inventory(path, DEST, "s2")
    again.add_pending([Pending("/a/1.dcm", 10, 1.0)])
    assert again.take_pending(10, 10**9) == [Pending("/a/1.dcm", 10, 1.0)]
    again.record(FileResult("/a/1.dcm", Outcome.SKIPPED, "not sent: interrupted"), 10, 1.0)
    assert state_of(path, "/a/1.dcm") == "warning"
    assert again.known("/a") == {("1.dcm", 10, 1.0)}
    assert again.known_path("/a/1.dcm") == Known(10, 1.0, "warning")
    # A changed file that fails: the destination still holds the older version,
    # which the walk will not take for this one (its size differs).
    again.record(FileResult("/a/1.dcm", Outcome.FAILED, "0xC000", attempts=1), 11, 2.0)
    assert state_of(path, "/a/1.dcm") == "failed"
    assert again.known("/a") == {("1.dcm", 10, 1.0)}  # not (11, 2.0): the walk sends it


def test_a_skip_never_replaces_a_stored_row_and_attempts_add_up(tmp_path: Path) -> None:
    path = tmp_path / "i.sqlite"
    inventory = Inventory(path, DEST, "s1")
    inventory.record(FileResult("/a/1.dcm", Outcome.FAILED, "0xA700", attempts=2), 1, 1.0)
    inventory.record(FileResult("/a/1.dcm", Outcome.STORED, attempts=1), 1, 1.0)
    inventory.record(FileResult("/a/1.dcm", Outcome.SKIPPED, "not sent: interrupted"), 1, 1.0)
    assert state_of(path, "/a/1.dcm") == "stored"
    [row] = inventory.rows([State.STORED])
    assert row.attempts == 3
    inventory.record(FileResult("/a/2.dcm", Outcome.SKIPPED, "duplicate"), 1, 1.0)
    assert state_of(path, "/a/2.dcm") == "skipped"
    assert inventory.counts() == {"stored": 1, "skipped": 1}


def test_claims_find_duplicates_held_or_in_flight_under_another_path(tmp_path: Path) -> None:
    path = tmp_path / "i.sqlite"
    first = Inventory(path, DEST, "s1")
    first.record(FileResult("/old/x.dcm", Outcome.STORED, sop_instance_uid="1.1"), 1, 1.0)
    first.record(FileResult("/old/y.dcm", Outcome.FAILED, sop_instance_uid="1.2"), 1, 1.0)
    # Another worker's connection: the claims of one are seen by the other.
    second = Inventory(path, DEST, "s1")
    assert first.claim([info("/new/a.dcm", "1.3")]) == {}
    duplicates = second.claim(
        [
            info("/new/b.dcm", "1.1"),  # held at the destination as /old/x.dcm
            info("/new/c.dcm", "1.2"),  # only a failed copy: send this one
            info("/new/d.dcm", "1.3"),  # in flight on the other worker
            info("/new/e.dcm", "1.4"),
            info("/new/f.dcm", "1.4"),  # the same UID twice in one batch
        ]
    )
    assert duplicates == {
        "/new/b.dcm": "/old/x.dcm",
        "/new/d.dcm": "/new/a.dcm",
        "/new/f.dcm": "/new/e.dcm",
    }
    assert state_of(path, "/new/c.dcm") == "in_flight"
    assert [r.study_instance_uid for r in second.rows([State.IN_FLIGHT])] == ["1.9"] * 3
    # --no-resume: what earlier sessions stored is not a reason to skip.
    third = Inventory(path, DEST, "s2")
    assert third.claim([info("/new/g.dcm", "1.1")], resume=False) == {}


def test_a_journal_of_an_earlier_version_is_migrated_for_its_destination(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE instances (destination TEXT, path TEXT, size INTEGER, mtime REAL,"
            " sop_instance_uid TEXT, sop_class_uid TEXT, outcome TEXT, status INTEGER,"
            " reason TEXT, attempts INTEGER, first_at REAL, last_at REAL, session_id TEXT,"
            " PRIMARY KEY (destination, path))"
        )
        db.executemany(
            "INSERT INTO instances VALUES (?, ?, 10, 2.5, ?, ?, ?, 0, '', 1, 1, 1, 'old')",
            [
                (DEST, "/a/1.dcm", "1.1", CT, "stored"),
                (DEST, "/a/2.dcm", "1.2", CT, "failed"),
                ("OTHER@h:104", "/a/3.dcm", "1.3", CT, "stored"),
            ],
        )
    inventory = Inventory(path, DEST, "new")
    assert inventory.known("/a") == {("1.dcm", 10, 2.5)}
    assert inventory.counts() == {"stored": 1, "failed": 1}
    inventory.close()
    with pytest.raises(JournalError, match=r"records the migration to PACS@h:104, not to OTHER"):
        Inventory(path, "OTHER@h:104", "new")


def test_a_file_that_is_not_sqlite_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite"
    path.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(JournalError, match=rf"cannot use the journal {path}: file is not a"):
        Inventory(path, DEST, "s1")
    assert path.read_text().startswith("these are my notes")


def test_the_queries_of_a_run_use_an_index_not_a_scan(tmp_path: Path) -> None:
    # A scan per file is invisible on a test archive and ruinous on an archive
    # of millions (it was: the duplicate check once read the whole table).
    path = tmp_path / "i.sqlite"
    Inventory(path, DEST, "s1").close()
    with sqlite3.connect(path) as db:
        for query in HOT_QUERIES:
            plan = db.execute("EXPLAIN QUERY PLAN " + query, ("x",) * query.count("?"))
            details = [row[3] for row in plan]
            assert not [d for d in details if d.startswith("SCAN files")], (query, details)


def test_claims_record_each_study_once_from_its_first_header(tmp_path: Path) -> None:
    inventory = Inventory(tmp_path / "i.sqlite", DEST, "s1")
    first = replace(info("/a/1.dcm", "1.1"), patient_id="P1", accession_number="A1",
                    study_date="20240101", study_time="0800")  # fmt: skip
    second = replace(info("/a/2.dcm", "1.2"), patient_id="other")
    inventory.claim([first, second])
    inventory.claim([replace(info("/b/1.dcm", "2.1"), study_instance_uid="2.9")])
    with sqlite3.connect(tmp_path / "i.sqlite") as db:
        rows = db.execute(
            "SELECT study_instance_uid, patient_id, accession_number, study_date, study_time"
            " FROM studies ORDER BY 1"
        ).fetchall()
    assert rows == [("1.9", "P1", "A1", "20240101", "0800"), ("2.9", "", "", "", "")]


def test_an_inventory_of_schema_2_gains_the_verification_columns(tmp_path: Path) -> None:
    path = tmp_path / "i.sqlite"
    inventory = Inventory(path, DEST, "s1")
    stored = FileResult("/a/1.dcm", Outcome.STORED, sop_instance_uid="1.1", attempts=1)
    inventory.record(stored, 100, 5.0)
    inventory.close()
    with sqlite3.connect(path) as db:  # back to schema 2, as an earlier version left it
        for name, _ in VERIFICATION_COLUMNS:
            db.execute(f"ALTER TABLE files DROP COLUMN {name}")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    Inventory(path, DEST, "s2").close()
    with sqlite3.connect(path) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(files)")}
        row = db.execute("SELECT state, commit_state, commit_reason, find_state FROM files")
        schema = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        assert row.fetchall() == [("stored", None, "", None)]
    assert {name for name, _ in VERIFICATION_COLUMNS} <= columns
    assert schema == ("3",)


def _stored(inventory: Inventory, path: str, uid: str, study: str, series: str) -> None:
    """A file claimed (its header: UIDs) and stored, as a send records it."""
    header = replace(info(path, uid), study_instance_uid=study, series_instance_uid=series)
    assert inventory.claim([header]) == {}
    inventory.record(FileResult(path, Outcome.STORED, sop_instance_uid=uid, attempts=1), 100, 1.0)


def test_held_instances_come_by_study_and_series(tmp_path: Path) -> None:
    inventory = Inventory(tmp_path / "i.sqlite", DEST, "s1")
    _stored(inventory, "/a/3.dcm", "1.3", "2.2", "2.2.1")
    _stored(inventory, "/a/1.dcm", "1.1", "2.1", "2.1.2")
    _stored(inventory, "/a/2.dcm", "1.2", "2.1", "2.1.1")
    inventory.record(FileResult("/a/4.dcm", Outcome.FAILED, "0xC000", attempts=1), 100, 1.0)
    groups = [(study, [i.path for i in group]) for study, group in inventory.held_by_study()]
    assert groups == [("2.1", ["/a/2.dcm", "/a/1.dcm"]), ("2.2", ["/a/3.dcm"])]
    later = Inventory(tmp_path / "i.sqlite", DEST, "s2")
    _stored(later, "/a/5.dcm", "1.5", "2.3", "2.3.1")
    assert [i.path for i in later.held_instances("s2")] == ["/a/5.dcm"]
    assert len(list(later.held_instances())) == 4


def test_verification_outcomes_change_what_a_rerun_sends(tmp_path: Path) -> None:
    """Missing or commit failed: no longer held (a send takes the file again), still checked."""
    from dicom_fastsend.engine.inventory import CommitState, FindState

    path = tmp_path / "i.sqlite"
    inventory = Inventory(path, DEST, "s1")
    for n in range(1, 5):
        _stored(inventory, f"/a/{n}.dcm", f"1.{n}", "2.1", "2.1.1")
    inventory.record_find([("/a/1.dcm", FindState.FOUND), ("/a/2.dcm", FindState.MISSING)])
    inventory.record_commit(
        [
            ("/a/1.dcm", CommitState.COMMITTED, ""),
            ("/a/3.dcm", CommitState.COMMIT_FAILED, "0x0112 No such object instance"),
            ("/a/4.dcm", CommitState.UNCOMMITTED, "no N-EVENT-REPORT within 1 s"),
        ]
    )
    assert {name for name, _, _ in inventory.known("/a")} == {"1.dcm", "4.dcm"}
    with sqlite3.connect(path) as db:
        rows = dict(
            (name, rest)
            for name, *rest in db.execute(
                "SELECT name, find_state, commit_state, commit_reason, state,"
                " verified_at IS NOT NULL FROM files"
            )
        )
    assert rows == {
        "1.dcm": ["found", "committed", "", "stored", 1],
        "2.dcm": ["missing", None, "", "stored", 1],
        "3.dcm": [None, "commit_failed", "0x0112 No such object instance", "stored", 1],
        "4.dcm": [None, "uncommitted", "no N-EVENT-REPORT within 1 s", "stored", 1],
    }
    # The next verification still checks them all, and finding one again restores it.
    assert len(list(inventory.held_instances())) == 4
    inventory.record_find([("/a/2.dcm", FindState.FOUND)])
    assert inventory.known_path("/a/2.dcm") == Known(100, 1.0, "stored")


def test_coercions_are_recorded_with_the_stored_outcome_and_replaced_on_resend(
    tmp_path: Path,
) -> None:
    """--coerce: one row per element changed, only for what the destination holds; a later
    coerced send of the same file replaces them all."""
    inventory = Inventory(tmp_path / "i.sqlite", DEST, "s1")
    first = FileResult(
        "/a/1.dcm", Outcome.STORED, sop_instance_uid="1.1", attempts=1,
        coerced=(("PatientID", "OLD", "NEW"), ("IssuerOfPatientID", None, "H")),
    )  # fmt: skip
    failed = FileResult("/a/2.dcm", Outcome.FAILED, "0xA700", coerced=(("PatientID", "X", "Y"),))
    plain = FileResult("/a/3.dcm", Outcome.STORED, sop_instance_uid="1.3")
    inventory.record(first, 10, 1.0)
    inventory.record_many([(failed, 10, 1.0), (plain, 10, 1.0)])
    assert inventory.coercions("/a/1.dcm") == {
        "PatientID": ("OLD", "NEW"),
        "IssuerOfPatientID": (None, "H"),
    }
    assert inventory.coercions("/a/2.dcm") == {}  # not held: nothing was changed there
    assert inventory.coercions("/a/3.dcm") == {}
    assert state_of(tmp_path / "i.sqlite", "/a/2.dcm") == State.FAILED.value
    again = replace(first, coerced=(("PatientBirthDate", "19700101", None),))
    inventory.record(again, 10, 1.0)
    assert inventory.coercions("/a/1.dcm") == {"PatientBirthDate": ("19700101", None)}
    # Stored again without --coerce: the destination now holds the file as it
    # is, and what an earlier send changed in it is forgotten.
    inventory.record(replace(first, coerced=()), 10, 1.0)
    assert inventory.coercions("/a/1.dcm") == {}
    inventory.close()


def revision_of(path: Path) -> int:
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
    return 0 if row is None else int(row[0])


def test_the_revision_counts_transactions_that_change_rows_and_no_other(tmp_path: Path) -> None:
    """What lets a rerun know that the last audit report still holds (audit.report_that_holds)."""
    from dicom_fastsend.engine.inventory import FindState

    path = tmp_path / "i.sqlite"
    inventory = Inventory(path, DEST, "s1")
    inventory.begin_session()
    start = revision_of(path)
    # Nothing to write, nothing taken, a claim of nothing: no change, no new revision.
    inventory.add_pending([])
    assert inventory.take_pending(10, 10**9) == []
    assert inventory.claim([]) == {}
    assert revision_of(path) == start
    inventory.add_pending([Pending("/a/1.dcm", 100, 1.0), Pending("/a/2.dcm", 100, 1.0)])
    assert revision_of(path) == start + 1
    assert len(inventory.take_pending(10, 10**9)) == 2
    assert revision_of(path) == start + 2
    inventory.claim([info("/a/1.dcm", "1.1"), info("/a/2.dcm", "1.2")])
    assert revision_of(path) == start + 3
    stored = [FileResult(f"/a/{n}.dcm", Outcome.STORED, sop_instance_uid=f"1.{n}") for n in (1, 2)]
    inventory.record_many([(r, 100, 1.0) for r in stored])
    assert revision_of(path) == start + 4
    # A verification writes rows too, from any connection.
    Inventory(path, DEST, "verify").record_find([("/a/1.dcm", FindState.FOUND)])
    assert revision_of(path) == start + 5
    # The session's own row is not what an audit report counts files from.
    inventory.end_session(0)
    assert revision_of(path) == start + 5
