"""The audit report: what a migration's inventory proves of every study, for people and tools.

For each study the inventory knows (patient, accession and date come from the
first header read of the study): files found, stored, committed by the
destination (Storage Commitment, PS3.4 Annex J), found there by C-FIND
(PS3.4 Annex C), failed, skipped, not sent yet, missing at the destination,
and its most frequent reasons. Three files, written side by side:

- ``fastsend_audit_<session>.csv``: one row per study, for a spreadsheet;
- ``fastsend_audit_<session>.json``: the same with totals and a throughput
  series (its schema: audit.schema.json beside this module);
- ``fastsend_audit_<session>.html``: one self-contained page (inline CSS and
  SVG, no script, a Content-Security-Policy that forbids any fetch) with the
  totals, a chart of files stored over time, a chart of outcomes, and the
  per-study table.

The inventory is read through the read-only connection of `fastsend status`
(engine.inventory.connect_read_only), in one read transaction, so a report
can be made while a `send` runs. Memory stays flat whatever the inventory's
size: the counts are aggregated by SQLite into temporary tables (one row per
study, on disk when large), and the study rows are streamed from a cursor
into the three files, never held in a list.

Every value from the inventory is escaped in the HTML (patient names and
reasons are whatever the files and the peer said), and in the CSV a text
that a spreadsheet would run as a formula is quoted (see ``_cell``).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from enum import Enum
from pathlib import Path
from typing import Any, Final

import msgspec

from . import __version__
from .engine.inventory import (
    AUDIT_KEY,
    COUNTING_KEY,
    REVISION_KEY,
    InventoryReader,
    JournalError,
    read_consistently,
    record_meta,
)

AUDIT_SCHEMA = Path(__file__).with_name("audit.schema.json")

# Reasons kept per study, most files first.
REASONS_PER_STUDY: Final = 3
# At most this many bars in the throughput chart; the bin is a round duration.
THROUGHPUT_BINS: Final = 60
_BIN_SECONDS: Final = (
    0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
    43200, 86400,
)  # fmt: skip

# The per-study counts, in the order of the CSV columns and the JSON objects.
COUNTS: Final = (
    "files",  # rows of the inventory with this Study Instance UID
    "stored",  # the destination holds it: stored, or stored with a warning
    "warning",  # of those, stored with a warning status
    "committed",  # Storage Commitment: in the Referenced SOP Sequence
    "commit_failed",  # in the Failed SOP Sequence
    "uncommitted",  # asked, no N-EVENT-REPORT in time
    "found",  # returned by a C-FIND of the destination
    "missing",  # not returned: missing at destination
    "failed",
    "skipped",
    "remaining",  # pending or in flight: not sent yet
    "verified",  # held and confirmed (committed or found)
)
CSV_COLUMNS: Final = (
    "patient_id",
    "patient_name",
    "study_instance_uid",
    "accession_number",
    "study_date",
    "study_time",
    "status",
    *COUNTS,
    "reasons",
)


class StudyStatus(Enum):
    """A study's verdict, worst first (the order of the table)."""

    MISSING = "missing"  # some instance missing at destination or failed commitment
    INCOMPLETE = "incomplete"  # some file not stored: failed, skipped or not sent yet
    STORED = "stored"  # every file stored, not every one confirmed by a verification
    VERIFIED = "verified"  # every file stored and committed or found by C-FIND


# One scan of the files table: a row per study with every count. The
# verification columns are absent from a journal of schema 2 that no send of
# this version opened yet (the read-only connection cannot add them): then
# they read as NULL, "never verified" (see _columns).
_STUDY_COUNTS = """
CREATE TEMP TABLE audit_study AS
SELECT {study} AS study, COUNT(*) AS files,
    COUNT(*) FILTER (WHERE state IN ('stored', 'warning')) AS stored,
    COUNT(*) FILTER (WHERE state = 'warning') AS warning,
    COUNT(*) FILTER (WHERE {commit_state} = 'committed') AS committed,
    COUNT(*) FILTER (WHERE {commit_state} = 'commit_failed') AS commit_failed,
    COUNT(*) FILTER (WHERE {commit_state} = 'uncommitted') AS uncommitted,
    COUNT(*) FILTER (WHERE {find_state} = 'found') AS found,
    COUNT(*) FILTER (WHERE {find_state} = 'missing') AS missing,
    COUNT(*) FILTER (WHERE state = 'failed') AS failed,
    COUNT(*) FILTER (WHERE state = 'skipped') AS skipped,
    COUNT(*) FILTER (WHERE state IN ('pending', 'in_flight')) AS remaining,
    COUNT(*) FILTER (WHERE state IN ('stored', 'warning')
        AND ({commit_state} = 'committed' OR {find_state} = 'found')) AS verified,
    MIN(last_at) FILTER (WHERE state IN ('stored', 'warning')) AS first_stored,
    MAX(last_at) FILTER (WHERE state IN ('stored', 'warning')) AS last_stored
FROM files GROUP BY 1
"""

# A file's study: its own, else (a duplicate's row, which only records the
# SOP Instance UID) that of another file with the same SOP Instance UID,
# looked up in the index on it for those rows alone.
_STUDY_OF_FILE = """
CASE WHEN study_instance_uid <> '' OR sop_instance_uid = '' THEN study_instance_uid
ELSE IFNULL((SELECT other.study_instance_uid FROM files AS other
             WHERE other.sop_instance_uid = files.sop_instance_uid
             AND other.sop_instance_uid <> '' AND other.study_instance_uid <> '' LIMIT 1), '')
END"""

# The verdict of a study, from its row of audit_study (see StudyStatus).
_STATUS = """
CASE WHEN missing + commit_failed > 0 THEN 'missing'
     WHEN stored < files THEN 'incomplete'
     WHEN verified < files THEN 'stored'
     ELSE 'verified' END
"""
_STATUS_ORDER = (
    "CASE status WHEN 'missing' THEN 0 WHEN 'incomplete' THEN 1 WHEN 'stored' THEN 2 ELSE 3 END"
)

# One scan of the files with a reason (a failure, a skip, a warning, a failed
# commitment), grouped; then each study's REASONS_PER_STUDY with most files.
_REASONS = """
CREATE TEMP TABLE audit_reason AS
WITH grouped AS MATERIALIZED (
    SELECT {study} AS study, state, reason, status,
        {commit_state} AS commit_state, {commit_reason} AS commit_reason, COUNT(*) AS files
    FROM files
    WHERE state IN ('failed', 'skipped', 'warning') OR {commit_state} = 'commit_failed'
    GROUP BY 1, state, reason, status, {commit_state}, {commit_reason}
), reasons AS (
    SELECT study, state AS outcome, reason, status, SUM(files) AS files FROM grouped
    WHERE state IN ('failed', 'skipped', 'warning') GROUP BY study, state, reason, status
    UNION ALL
    SELECT study, 'commit_failed', commit_reason, NULL, SUM(files) FROM grouped
    WHERE commit_state = 'commit_failed' GROUP BY study, commit_reason
)
SELECT study, outcome, reason, status, files FROM (
    SELECT *, ROW_NUMBER() OVER (
        PARTITION BY study ORDER BY files DESC, outcome, reason) AS rank
    FROM reasons
) WHERE rank <= :top
"""

# The study rows, worst first, then by patient and date; studies the files
# table knows but the studies table does not (a journal of schema 2) get ''.
_ROWS = f"""
SELECT * FROM (
    SELECT IFNULL(s.patient_id, ''), IFNULL(s.patient_name, ''), a.study,
        IFNULL(s.accession_number, ''), IFNULL(s.study_date, ''), IFNULL(s.study_time, ''),
        {_STATUS} AS status, {", ".join(f"a.{c}" for c in COUNTS)},
        (SELECT json_group_array(json_array(outcome, reason, status, files))
         FROM temp.audit_reason r WHERE r.study = a.study) AS reasons,
        s.patient_id AS patient_sort, s.study_date AS date_sort
    FROM temp.audit_study a {{join}}
    WHERE a.study {{which}}
) ORDER BY {_STATUS_ORDER}, patient_sort, date_sort, 3
"""


class Reason(msgspec.Struct, frozen=True):
    outcome: str  # failed, skipped, warning or commit_failed
    reason: str
    status: int | None  # the DICOM status of the C-STORE, if the peer answered one
    files: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "reason": self.reason,
            "status": None if self.status is None else f"0x{self.status:04X}",
            "files": self.files,
        }

    def text(self) -> str:
        status = "" if self.status is None else f" (0x{self.status:04X})"
        return f"{self.outcome.replace('_', ' ')} {self.files}: {self.reason}{status}"


class StudyRow(msgspec.Struct, frozen=True):
    """One study's line of the report (study_instance_uid '': files never read as DICOM)."""

    patient_id: str
    patient_name: str
    study_instance_uid: str
    accession_number: str
    study_date: str  # DA, as in the header (YYYYMMDD)
    study_time: str  # TM, as in the header
    status: StudyStatus
    counts: dict[str, int]
    reasons: list[Reason]

    def as_dict(self) -> dict[str, Any]:
        return {
            "patient_id": self.patient_id,
            "patient_name": self.patient_name,
            "study_instance_uid": self.study_instance_uid,
            "accession_number": self.accession_number,
            "study_date": self.study_date,
            "study_time": self.study_time,
            "status": self.status.value,
            **self.counts,
            "reasons": [r.as_dict() for r in self.reasons],
        }


class Throughput(msgspec.Struct, frozen=True):
    """Files stored per time bin, from the time each row was last written (``last_at``)."""

    start: float | None  # the first bin's start (None: nothing stored)
    bin_seconds: float
    bins: list[int]


class AuditHeader(msgspec.Struct, frozen=True):
    """Everything above the per-study rows: known before the first row is written."""

    journal: Path
    destination: str | None
    schema: str | None
    read_at: float
    session_id: str  # the session the files are named after
    session_count: int
    totals: dict[str, int]
    study_count: int
    studies_by_status: dict[str, int]
    throughput: Throughput
    without_study_uid: StudyRow | None


class AuditFiles(msgspec.Struct, frozen=True):
    """What `write_audit` wrote."""

    csv: Path
    json: Path
    html: Path
    header: AuditHeader
    studies: int  # study rows (files without a Study Instance UID not counted)
    revision: int  # the inventory's revision the report was read at (Inventory._commit)
    uncounted: int  # sessions then that did not count the revision (COUNTING_KEY)


class HeldReport(msgspec.Struct, frozen=True):
    """The audit report a send wrote last, as the inventory's meta row ``audit`` keeps it."""

    session_id: str
    revision: int
    uncounted: int
    version: str  # fastsend's, which wrote it: another version writes another report
    csv: str
    json: str
    html: str


def remember_report(journal: Path, written: AuditFiles) -> None:
    """Keep in the inventory which report a send wrote, and the revision it read.

    Raises sqlite3.Error if the journal cannot be written.
    """
    held = HeldReport(
        written.header.session_id,
        written.revision,
        written.uncounted,
        __version__,
        str(written.csv.resolve()),
        str(written.json.resolve()),
        str(written.html.resolve()),
    )
    record_meta(journal, AUDIT_KEY, msgspec.json.encode(held).decode())


def report_that_holds(journal: Path, out_dir: Path) -> HeldReport | None:
    """The report a send wrote last into ``out_dir``, if it still says what the
    inventory records.

    It does when no transaction has changed a file's row since it was read
    (the inventory's revision is the one it read), every session since
    counted the revision (none was an earlier fastsend's), this version wrote
    it, and its three files are still there. A rerun that finds everything
    stored changes no row, so it need not read the whole inventory again for
    a report with the same rows; only its header would differ (the sessions
    counted, the time it was read).
    """
    reader = InventoryReader(journal)
    try:
        db = reader.connection
        db.execute("BEGIN")  # one snapshot: the report kept and the counters agree
        try:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (AUDIT_KEY,)).fetchone()
            now = _revision(db)
        finally:
            db.execute("COMMIT")
    except sqlite3.Error as exc:
        raise JournalError(f"cannot read the journal {journal}: {exc}") from exc
    finally:
        reader.close()
    try:
        held = msgspec.json.decode("" if row is None else row[0], type=HeldReport)
    except msgspec.DecodeError:
        return None  # none kept yet (or written by a version that kept another form)
    if (held.revision, held.uncounted) != now or held.version != __version__:
        return None
    if Path(held.html).parent != out_dir.resolve():
        return None
    if not all(Path(path).is_file() for path in (held.csv, held.json, held.html)):
        return None
    return held


def _revision(db: sqlite3.Connection) -> tuple[int, int]:
    """(the inventory's revision, the sessions that did not count it), in the read
    transaction in hand."""
    counters = dict(
        db.execute(
            "SELECT key, CAST(value AS INTEGER) FROM meta WHERE key IN (?, ?)",
            (REVISION_KEY, COUNTING_KEY),
        ).fetchall()
    )
    (sessions,) = db.execute("SELECT COUNT(*) FROM sessions").fetchone()
    return counters.get(REVISION_KEY, 0), sessions - counters.get(COUNTING_KEY, 0)


def audit_paths(out_dir: Path, session_id: str) -> tuple[Path, Path, Path]:
    """(CSV, JSON, HTML) of a session's audit report in ``out_dir``."""
    stem = f"fastsend_audit_{session_id}"
    return out_dir / f"{stem}.csv", out_dir / f"{stem}.json", out_dir / f"{stem}.html"


def write_audit(
    journal: Path,
    out_dir: Path,
    session_id: str | None = None,
    destination: str | None = None,
) -> AuditFiles:
    """Write the audit report of the inventory at ``journal`` into ``out_dir``.

    ``session_id`` names the files (default: the inventory's latest session);
    ``destination`` ('AE@host:port'), if given, must be the one the journal
    records. Raises JournalError for a missing, unusable or other destination's
    journal; OSError if ``out_dir`` cannot be written.
    """
    if not journal.exists():
        raise JournalError(
            f"no journal at {journal}: no `fastsend send` to this destination has written one"
            " there; give the -a/-H/-p and --log-dir of the send, or --journal the file a send"
            " wrote (fastsend_journal_<AE>_<host>_<port>.sqlite in its --log-dir)"
        )
    if journal.is_dir():
        raise JournalError(f"{journal} is a directory; --journal takes the journal file")
    out_dir.mkdir(parents=True, exist_ok=True)

    def write(reader: InventoryReader) -> AuditFiles:
        if destination is not None and reader.destination not in (None, destination):
            raise JournalError(
                f"the journal {journal} records the migration to {reader.destination}, not to"
                f" {destination}; leave --journal out to read {destination}'s own journal in"
                " --log-dir, or -a/-H/-p out to read this one"
            )
        return _write(reader, journal, out_dir, session_id)

    return read_consistently(journal, write)


def _write(
    reader: InventoryReader, journal: Path, out_dir: Path, session_id: str | None
) -> AuditFiles:
    db = reader.connection
    sessions = reader.sessions()
    read_at = time.time()
    if session_id is None:
        session_id = (
            sessions[-1].session_id
            if sessions
            else time.strftime("%Y%m%d_%H%M%S", time.localtime(read_at))
        )
    columns = _columns(db)
    db.execute("BEGIN")  # one snapshot: the totals, the chart and the rows agree
    try:
        revision, uncounted = _revision(db)
        for table in ("audit_study", "audit_reason"):
            db.execute(f"DROP TABLE IF EXISTS temp.{table}")
        db.execute(_STUDY_COUNTS.format(**columns))
        db.execute(_REASONS.format(**columns), {"top": REASONS_PER_STUDY})
        db.execute("CREATE INDEX temp.audit_reason_study ON audit_reason (study)")
        header = _header(
            db, reader, journal, read_at, session_id, len(sessions), columns["studies"]
        )
        paths = audit_paths(out_dir, session_id)
        studies = _stream(db, header, paths, columns["studies"])
    finally:
        for table in ("audit_study", "audit_reason"):
            db.execute(f"DROP TABLE IF EXISTS temp.{table}")
        db.execute("COMMIT")
    return AuditFiles(
        *paths, header=header, studies=studies, revision=revision, uncounted=uncounted
    )


def _columns(db: sqlite3.Connection) -> dict[str, str]:
    """SQL for the verification columns and the studies join, as this journal has them."""
    have = {row[1] for row in db.execute("PRAGMA table_info(files)")}
    tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    verified = {"commit_state", "commit_reason", "find_state", "verified_at"} <= have

    def current(column: str, otherwise: str) -> str:
        # A verification says what the destination held when it ran: a file sent
        # again since (last_at after verified_at) is not verified until the next one.
        return f"(CASE WHEN verified_at >= last_at THEN {column} END)" if verified else otherwise

    return {
        "study": _STUDY_OF_FILE,
        "commit_state": current("commit_state", "NULL"),
        "commit_reason": current("commit_reason", "''"),
        "find_state": current("find_state", "NULL"),
        "studies": "studies" if "studies" in tables else "",
    }


def _header(
    db: sqlite3.Connection,
    reader: InventoryReader,
    journal: Path,
    read_at: float,
    session_id: str,
    session_count: int,
    studies_table: str,
) -> AuditHeader:
    sums = ", ".join(f"IFNULL(SUM({c}), 0)" for c in COUNTS)
    row = db.execute(
        f"SELECT {sums}, MIN(first_stored), MAX(last_stored) FROM temp.audit_study"
    ).fetchone()
    totals = dict(zip(COUNTS, row[: len(COUNTS)], strict=True))
    first, last = row[len(COUNTS) :]
    by_status = dict.fromkeys((s.value for s in StudyStatus), 0)
    for status, count in db.execute(
        f"SELECT {_STATUS} AS status, COUNT(*) FROM temp.audit_study WHERE study <> ''"
        " GROUP BY status"
    ):
        by_status[status] = count
    unread = None
    for row in _rows(db, studies_table, ""):
        unread = row
    return AuditHeader(
        journal=journal,
        destination=reader.destination,
        schema=reader.schema,
        read_at=read_at,
        session_id=session_id,
        session_count=session_count,
        totals=totals,
        study_count=sum(by_status.values()),
        studies_by_status=by_status,
        throughput=_throughput(db, first, last),
        without_study_uid=unread,
    )


def _throughput(db: sqlite3.Connection, first: float | None, last: float | None) -> Throughput:
    """Files stored per bin: the smallest round bin that needs at most THROUGHPUT_BINS bars."""
    if first is None or last is None:
        return Throughput(None, 1.0, [])
    span = last - first
    # Flooring the start to the bin adds one bar at most: span / width + 2 <= THROUGHPUT_BINS.
    width = next((s for s in _BIN_SECONDS if span / s <= THROUGHPUT_BINS - 2), None)
    if width is None:
        width = 86400 * math.ceil(span / 86400 / (THROUGHPUT_BINS - 2))
    start = math.floor(first / width) * width  # bins on round clock times
    bins = [0] * (int((last - start) // width) + 1)
    for index, files in db.execute(
        "SELECT CAST((last_at - :start) / :width AS INTEGER) AS bin, COUNT(*) FROM files"
        " WHERE state IN ('stored', 'warning') GROUP BY bin",
        {"start": start, "width": width},
    ):
        bins[min(max(index, 0), len(bins) - 1)] += files
    return Throughput(float(start), width, bins)


def _rows(db: sqlite3.Connection, studies_table: str, uid: str) -> Iterator[StudyRow]:
    """The study rows (uid '': the row of files without a Study Instance UID), streamed."""
    join = (
        f"LEFT JOIN {studies_table} s ON s.study_instance_uid = a.study"
        if studies_table
        else "LEFT JOIN (SELECT NULL AS study_instance_uid, NULL AS patient_id,"
        " NULL AS patient_name, NULL AS accession_number, NULL AS study_date,"
        " NULL AS study_time) s ON 0"
    )
    which = "= ''" if uid == "" else "<> ''"
    cursor = db.execute(_ROWS.format(join=join, which=which))
    n = len(COUNTS)
    for row in cursor:
        reasons = [Reason(*r) for r in json.loads(row[7 + n])]
        reasons.sort(key=lambda r: (-r.files, r.outcome, r.reason))
        yield StudyRow(
            patient_id=row[0],
            patient_name=row[1],
            study_instance_uid=row[2],
            accession_number=row[3],
            study_date=row[4],
            study_time=row[5],
            status=StudyStatus(row[6]),
            counts=dict(zip(COUNTS, row[7 : 7 + n], strict=True)),
            reasons=reasons,
        )


def _stream(
    db: sqlite3.Connection, header: AuditHeader, paths: tuple[Path, Path, Path], studies: str
) -> int:
    """Write the three files row by row; each appears complete (renamed from a .part) or not."""
    count = 0
    parts = [path.with_name(path.name + ".part") for path in paths]
    try:
        with ExitStack() as stack:
            csv_file, json_file, html_file = (
                stack.enter_context(part.open("w", encoding="utf-8", newline="")) for part in parts
            )
            table = csv.writer(csv_file)
            table.writerow(CSV_COLUMNS)
            json_file.write(_json_head(header))
            html_file.write(_html_head(header))
            for row in _rows(db, studies, "<>"):
                table.writerow(_csv_row(row))
                json_file.write(("" if count == 0 else ",") + "\n    " + json.dumps(row.as_dict()))
                html_file.write(_html_row(row))
                count += 1
            if header.without_study_uid is not None:
                table.writerow(_csv_row(header.without_study_uid))
            json_file.write("\n  ]\n}\n" if count else "]\n}\n")
            html_file.write(_html_tail(header, count))
    except BaseException:
        # A full disk, a read error, a Ctrl-C: leave no half-written file behind.
        for part in parts:
            part.unlink(missing_ok=True)
        raise
    for part, path in zip(parts, paths, strict=True):
        part.replace(path)
    return count


# ------------------------------------------------------------ CSV and JSON


def _cell(value: str) -> str:
    """A text cell a spreadsheet shows as text: one starting with = + - @ (or a tab or
    carriage return) would be run as a formula (CSV injection), so it gets a leading '."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _csv_row(row: StudyRow) -> list[str | int]:
    texts = (row.patient_id, row.patient_name, row.study_instance_uid, row.accession_number)
    return [
        *(_cell(t) for t in texts),
        row.study_date,
        row.study_time,
        row.status.value,
        *(row.counts[c] for c in COUNTS),
        _cell("; ".join(r.text() for r in row.reasons)),
    ]


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds")


def _json_head(header: AuditHeader) -> str:
    """The JSON document up to the opening of its "studies" array (streamed after)."""
    throughput = header.throughput
    document: dict[str, Any] = {
        "tool": {"name": "fastsend", "version": __version__},
        "journal": str(header.journal),
        "destination": header.destination,
        "schema": header.schema,
        "read_at": _iso(header.read_at),
        "session_id": header.session_id,
        "session_count": header.session_count,
        "totals": header.totals,
        "study_count": header.study_count,
        "studies_by_status": header.studies_by_status,
        "throughput": {
            "start": None if throughput.start is None else _iso(throughput.start),
            "bin_seconds": throughput.bin_seconds,
            "files_stored": throughput.bins,
        },
        "without_study_uid": (
            None if header.without_study_uid is None else _unread(header.without_study_uid)
        ),
    }
    text = json.dumps(document, indent=2)
    return text[: text.rindex("}")].rstrip() + ',\n  "studies": ['


def _unread(row: StudyRow) -> dict[str, Any]:
    return {**row.counts, "reasons": [r.as_dict() for r in row.reasons]}


# ------------------------------------------------------------ HTML

_COLOURS: Final = {
    "stored": "#2e7d32",
    "warning": "#f9a825",
    "failed": "#c62828",
    "skipped": "#78909c",
    "remaining": "#42a5f5",
    "committed": "#1b5e20",
    "commit_failed": "#b71c1c",
    "uncommitted": "#ef6c00",
    "found": "#00838f",
    "missing": "#d81b60",
    "unverified": "#b0bec5",
}

_CSS = """
:root { color-scheme: light; --ink: #1f2933; --muted: #616e7c; --line: #d9e2ec; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans",
  sans-serif; color: var(--ink); background: #f5f7fa; }
header { background: #102a43; color: #f0f4f8; padding: 18px 28px 14px; }
header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; }
header p { margin: 0; color: #bcccdc; font-size: 13px; }
main { padding: 18px 28px 28px; }
.tiles { display: flex; flex-wrap: wrap; gap: 10px; margin-bottom: 18px; }
.tile { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 6px 12px;
  flex: 1 1 90px; }
.tile b { display: block; font-size: 20px; font-variant-numeric: tabular-nums; }
.tile span { color: var(--muted); font-size: 12px; }
.tile.bad b { color: #c62828; }
.tile.good b { color: #2e7d32; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; margin-bottom: 18px; }
figure { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 6px;
  padding: 12px 14px 8px; flex: 1 1 460px; }
figcaption { font-weight: 600; margin-bottom: 6px; }
figcaption small { font-weight: 400; color: var(--muted); }
svg { width: 100%; height: auto; display: block; }
svg text { font: 11px system-ui, "DejaVu Sans", sans-serif; fill: #3e4c59; }
svg .group { font-weight: 600; fill: var(--ink); }
h2 { font-size: 16px; margin: 6px 0 8px; }
.legend { color: var(--muted); font-size: 12px; margin: 0 0 8px; }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line);
  font-size: 13px; }
th, td { padding: 5px 7px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; overflow-wrap: break-word; }
th { background: #e4e7eb; position: sticky; top: 0; font-size: 12px; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; width: 1%; }
td.n { white-space: nowrap; }
th.n { overflow-wrap: normal; }
td.uid { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 11px;
  word-break: break-all; min-width: 140px; max-width: 200px; }
td.reasons { font-size: 12px; color: #3e4c59; min-width: 180px; max-width: 420px;
  overflow-wrap: anywhere; }
td.reasons div + div { margin-top: 2px; }
td.text { overflow-wrap: anywhere; min-width: 7em; max-width: 16em; }
td.name { min-width: 10em; }
tbody tr:nth-child(even) { background: #f8fafc; }
td.bad { color: #c62828; font-weight: 600; }
.badge { display: inline-block; padding: 1px 7px; border-radius: 9px; font-size: 11px;
  font-weight: 600; color: #fff; white-space: nowrap; }
.badge.missing { background: #d81b60; } .badge.incomplete { background: #c62828; }
.badge.stored { background: #2e7d32; } .badge.verified { background: #1b5e20; }
tr.unread td { font-style: italic; background: #fffbea; }
footer { color: var(--muted); font-size: 12px; padding: 0 28px 24px; }
"""


def _e(value: object) -> str:
    """Escaped for HTML text and attribute values (patient names are untrusted input).

    What html.escape(quote=True) does, without importing the html package (whose
    table of entities is 1 ms of a send's start-up: this report ends every send).
    """
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace('"', "&quot;").replace("'", "&#x27;")


def _local(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _date(value: str) -> str:
    """A DA (YYYYMMDD, PS3.5 6.2) as YYYY-MM-DD; anything else as it is."""
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def _number(count: int) -> str:
    return f"{count:,}"


def _duration(seconds: float) -> str:
    if seconds < 1 or seconds != int(seconds):
        return f"{seconds:g} s"
    if seconds % 86400 == 0:
        return f"{seconds / 86400:g} d"
    if seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _html_head(header: AuditHeader) -> str:
    totals = header.totals
    destination = header.destination or "an unrecorded destination"
    by_status = header.studies_by_status
    tiles = [
        (
            "good" if header.study_count and by_status["verified"] == header.study_count else "",
            f"{_number(header.study_count)}",
            "studies",
        ),
        (
            "good" if by_status["verified"] else "",
            _number(by_status["verified"]),
            "studies verified",
        ),
        (
            "bad" if by_status["missing"] else "",
            _number(by_status["missing"]),
            "studies with missing",
        ),
        (
            "bad" if by_status["incomplete"] else "",
            _number(by_status["incomplete"]),
            "studies incomplete",
        ),
        ("", _number(totals["files"]), "files found"),
        ("", _number(totals["stored"]), "stored"),
        ("", _number(totals["committed"]), "committed"),
        ("", _number(totals["found"]), "found by C-FIND"),
        ("bad" if totals["missing"] else "", _number(totals["missing"]), "missing at destination"),
        ("bad" if totals["failed"] else "", _number(totals["failed"]), "failed"),
        ("", _number(totals["skipped"]), "skipped"),
        ("", _number(totals["remaining"]), "not sent yet"),
    ]
    tile_html = "".join(
        f'<div class="tile {_e(kind)}"><b>{_e(value)}</b><span>{_e(label)}</span></div>'
        for kind, value, label in tiles
    )
    throughput = header.throughput
    bin_text = _duration(throughput.bin_seconds)
    heads = (
        ("", "Status"),
        ("", "Patient ID"),
        ("", "Patient name"),
        ("", "Study Instance UID"),
        ("", "Accession"),
        ("", "Study date"),
        ("n", "Files"),
        ("n", "Stored"),
        ("n", "Committed"),
        ("n", "Found (C-FIND)"),
        ("n", "Failed"),
        ("n", "Skipped"),
        ("n", "Not sent"),
        ("n", "Missing"),
        ("", "Top reasons"),
    )
    head_html = "".join(f'<th class="{c}" scope="col">{_e(t)}</th>' for c, t in heads)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        # Nothing on this page may load anything: no script, no image, no font.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\';'
        " style-src 'unsafe-inline'\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>fastsend audit: {_e(destination)}</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>Migration audit: {_e(destination)}</h1>"
        f"<p>journal {_e(header.journal)} &middot; read {_e(_local(header.read_at))}"
        f" &middot; {_e(_number(header.session_count))} send session(s)"
        f" &middot; report {_e(header.session_id)}</p></header>\n<main>\n"
        f'<section class="tiles" id="totals">{tile_html}</section>\n'
        '<section class="charts">\n'
        '<figure id="throughput-chart"><figcaption>Files stored over time'
        f" <small>(per {_e(bin_text)}, by the time each file was stored)</small>"
        f"</figcaption>{_throughput_svg(throughput)}</figure>\n"
        '<figure id="outcomes-chart"><figcaption>Outcomes <small>(every file found; the'
        " verification bars count the files stored)</small></figcaption>"
        f"{_outcomes_svg(header.totals)}</figure>\n</section>\n"
        f"<h2>Studies ({_e(_number(header.study_count))})</h2>\n"
        '<p class="legend">Worst first: <b>missing</b>: an instance the destination did not'
        " return by C-FIND, or refused to commit; <b>incomplete</b>: a file failed, was skipped"
        " or is not sent yet; <b>stored</b>: every file stored, not all confirmed;"
        " <b>verified</b>: every file stored and committed or found by C-FIND.</p>\n"
        f'<table id="studies">\n<thead><tr>{head_html}</tr></thead>\n<tbody>\n'
    )


def _reasons_html(reasons: Sequence[Reason]) -> str:
    return "".join(f"<div>{_e(r.text())}</div>" for r in reasons)


def _html_row(row: StudyRow) -> str:
    c = row.counts
    # Counts are integers and the status one of StudyStatus: nothing to escape there;
    # every text from the inventory goes through _e.
    status = row.status.value

    def count(name: str, bad: bool = False) -> str:
        value = c[name]
        return f'<td class="{"n bad" if bad and value else "n"}">{value:,}</td>'

    return (
        f'<tr class="study" data-status="{status}">'
        f'<td><span class="badge {status}">{status}</span></td>'
        f'<td class="text">{_e(row.patient_id)}</td>'
        f'<td class="text name">{_e(row.patient_name)}</td>'
        f'<td class="uid">{_e(row.study_instance_uid)}</td>'
        f'<td class="text">{_e(row.accession_number)}</td>'
        f'<td class="n">{_e(_date(row.study_date))}</td>'
        f"{count('files')}{count('stored')}{count('committed')}{count('found')}"
        f"{count('failed', bad=True)}{count('skipped')}{count('remaining')}"
        f"{count('missing', bad=True)}"
        f'<td class="reasons">{_reasons_html(row.reasons)}</td></tr>\n'
    )


def _html_tail(header: AuditHeader, count: int) -> str:
    parts = []
    unread = header.without_study_uid
    if unread is not None:
        c = unread.counts
        parts.append(
            '<tr class="unread"><td colspan="6">No Study Instance UID: files never read as'
            " DICOM (unreadable, not DICOM, or not sent yet)</td>"
            + "".join(
                f'<td class="n">{_e(_number(c[name]))}</td>'
                for name in (
                    "files",
                    "stored",
                    "committed",
                    "found",
                    "failed",
                    "skipped",
                    "remaining",
                    "missing",
                )
            )
            + f'<td class="reasons">{_reasons_html(unread.reasons)}</td></tr>\n'
        )
    if count == 0 and unread is None:
        parts.append('<tr><td colspan="15">The journal records no file.</td></tr>\n')
    return (
        "".join(parts)
        + "</tbody>\n</table>\n</main>\n"
        + f"<footer>fastsend {_e(__version__)} &middot; this page loads nothing: the"
        " same data are in the CSV and JSON files beside it.</footer>\n</body>\n</html>\n"
    )


def _nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten that is at least ``value``."""
    if value <= 1:
        return 1
    power = int(10 ** math.floor(math.log10(value)))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power


def _clock(seconds: float, with_date: bool, tenths: bool = False) -> str:
    moment = dt.datetime.fromtimestamp(seconds).astimezone()
    if tenths:  # bins shorter than a second
        return moment.strftime("%H:%M:%S.%f")[:10]
    return moment.strftime("%m-%d %H:%M" if with_date else "%H:%M:%S")


def _throughput_svg(throughput: Throughput) -> str:
    width, height = 640, 240
    left, right, top, bottom = 52, 14, 12, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    out = [
        f'<svg class="chart" id="throughput" viewBox="0 0 {width} {height}" role="img"'
        ' aria-label="Files stored per time bin" xmlns="http://www.w3.org/2000/svg">'
    ]
    if throughput.start is None or not throughput.bins:
        out.append(
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">No file stored'
            " yet</text></svg>"
        )
        return "".join(out)
    # Four grid steps of a round whole number of files (1, 2 or 5 times a power of ten).
    grid = _nice_ceiling(math.ceil(max(throughput.bins) / 4))
    peak = 4 * grid
    for step in range(5):  # grid lines and their labels
        y = top + plot_h - plot_h * step / 4
        label = f"{grid * step:,}"
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"'
            f' stroke="#d9e2ec"/><text x="{left - 6}" y="{y + 4:.1f}"'
            f' text-anchor="end">{_e(label)}</text>'
        )
    count = len(throughput.bins)
    slot = plot_w / count
    gap = min(2.0, slot * 0.2)
    span = throughput.bin_seconds * count
    with_date = span >= 86400
    for index, files in enumerate(throughput.bins):
        x = left + index * slot
        bar = plot_h * files / peak
        begin = throughput.start + index * throughput.bin_seconds
        out.append(
            f'<rect class="bin" x="{x + gap / 2:.1f}" y="{top + plot_h - bar:.1f}"'
            f' width="{max(slot - gap, 0.5):.1f}" height="{bar:.1f}" fill="{_COLOURS["stored"]}">'
            f"<title>{_e(_clock(begin, True))}: {_e(_number(files))} files</title></rect>"
        )
    ticks = sorted({0, count // 2, count - 1}) if count > 2 else list(range(count))
    for index in ticks:
        x = left + (index + 0.5) * slot
        moment = throughput.start + index * throughput.bin_seconds
        # The first and last labels start and end at their bars, inside the chart.
        anchor = "middle"
        if count > 2 and index == 0:
            anchor, x = "start", left
        elif count > 2 and index == count - 1:
            anchor, x = "end", width - right
        out.append(
            f'<text x="{x:.1f}" y="{height - bottom + 16}" text-anchor="{anchor}">'
            f"{_e(_clock(moment, with_date, throughput.bin_seconds < 1))}</text>"
        )
    out.append(
        f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}"'
        ' stroke="#7b8794"/>'
        f'<text x="12" y="{top + plot_h / 2}" transform="rotate(-90 12 {top + plot_h / 2})"'
        ' text-anchor="middle">files</text></svg>'
    )
    return "".join(out)


def _outcomes_svg(totals: dict[str, int]) -> str:
    held = totals["stored"]
    groups: list[tuple[str, int, list[tuple[str, str, int]]]] = [
        (
            "Transfer",
            totals["files"],
            [
                ("stored", "Stored", totals["stored"] - totals["warning"]),
                ("warning", "Stored with warning", totals["warning"]),
                ("failed", "Failed", totals["failed"]),
                ("skipped", "Skipped", totals["skipped"]),
                ("remaining", "Not sent yet", totals["remaining"]),
            ],
        ),
        (
            "Storage Commitment",
            held,
            [
                ("committed", "Committed", totals["committed"]),
                ("commit_failed", "Commit failed", totals["commit_failed"]),
                ("uncommitted", "No report in time", totals["uncommitted"]),
            ],
        ),
        (
            "C-FIND",
            held,
            [
                ("found", "Found", totals["found"]),
                ("missing", "Missing at destination", totals["missing"]),
                (
                    "unverified",
                    "Not queried",
                    max(0, held - totals["found"] - totals["missing"]),
                ),
            ],
        ),
    ]
    width, bar_h, row_h, label_w, value_w = 640, 14, 20, 150, 110
    plot_w = width - label_w - value_w - 10
    rows = sum(len(items) + 1 for _, _, items in groups)
    height = rows * row_h + 8
    out = [
        f'<svg class="chart" id="outcomes" viewBox="0 0 {width} {height}" role="img"'
        ' aria-label="Files by outcome" xmlns="http://www.w3.org/2000/svg">'
    ]
    y = 4
    for title, whole, items in groups:
        out.append(f'<text class="group" x="0" y="{y + 13}">{_e(title)}</text>')
        y += row_h
        for key, label, value in items:
            share = value / whole if whole else 0.0
            bar = max(plot_w * share, 2.0) if value else 0.0  # a few files still show
            out.append(
                f'<text x="{label_w - 8}" y="{y + 12}" text-anchor="end">{_e(label)}</text>'
                f'<rect x="{label_w}" y="{y + 2}" width="{plot_w}" height="{bar_h}"'
                ' fill="#f0f4f8"/>'
                f'<rect class="outcome" data-outcome="{_e(key)}" x="{label_w}" y="{y + 2}"'
                f' width="{bar:.1f}" height="{bar_h}" fill="{_COLOURS[key]}">'
                f"<title>{_e(label)}: {_e(_number(value))}</title></rect>"
                f'<text x="{label_w + plot_w + 8}" y="{y + 12}">{_e(_number(value))}'
                f" ({share * 100:.1f} %)</text>"
            )
            y += row_h
    out.append("</svg>")
    return "".join(out)


# ------------------------------------------------------------ for the console


def format_audit(written: AuditFiles) -> str:
    """What `fastsend audit` prints: the verdict per study and the files written."""
    header = written.header
    by_status = header.studies_by_status
    totals = header.totals
    lines = [
        f"{header.study_count:,} studies: {by_status['verified']:,} verified,"
        f" {by_status['stored']:,} stored (not all verified), {by_status['incomplete']:,}"
        f" incomplete, {by_status['missing']:,} with instances missing",
        f"{totals['files']:,} files: {totals['stored']:,} stored, {totals['committed']:,}"
        f" committed, {totals['found']:,} found by C-FIND, {totals['missing']:,} missing at"
        f" destination, {totals['failed']:,} failed, {totals['skipped']:,} skipped,"
        f" {totals['remaining']:,} not sent yet",
        f"audit: {written.html}",
        f"       {written.csv}",
        f"       {written.json}",
    ]
    return "\n".join(lines)
