"""The inventory: every file a migration found, its state and its outcome, in SQLite.

One database per destination (the journal of earlier versions grows into
it: `--journal`). It is the single source of truth for a run: the walk
writes a *pending* row per file; the dispatcher takes pending rows in
batches and marks them *in flight*; whoever reads a file's header claims
its SOP Instance UID (duplicates are found by an index, not a set in
memory); the outcome (*stored*, *warning*, *failed*, *skipped*) replaces
the state. A rerun skips a file whose row is stored with the same size and
modification time after one ``stat``, without opening it; `fastsend status`
and `scan` read the same table.

Writers: the coordinator (pending rows, dispatch, the outcomes it decides),
and each local worker (claims, and its files' outcomes, written before they
are reported, so a ``kill -9`` loses at most the files in flight). WAL mode:
readers (a status command in another terminal) never block the run, and a
committed row survives the death of the process (``synchronous=NORMAL``:
only a power loss can lose the last commits, which are then sent again).
Checkpoints are the coordinator's alone (see ``checkpoint``).

A write that fails (a full disk, a read-only file or file system, an I/O
error) raises JournalError naming the file and what to do: the caller stops
sending, since an outcome it cannot record is lost to the next run.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Final, NamedTuple, TypeVar

import msgspec

from ..errors import FastsendError
from ..io.header import FileInfo
from .results import FileResult, Outcome

SCHEMA_VERSION: Final = "3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    dir                  TEXT NOT NULL,
    name                 TEXT NOT NULL,
    size                 INTEGER NOT NULL,
    mtime                REAL NOT NULL,
    sop_class_uid        TEXT NOT NULL DEFAULT '',
    sop_instance_uid     TEXT NOT NULL DEFAULT '',
    study_instance_uid   TEXT NOT NULL DEFAULT '',
    series_instance_uid  TEXT NOT NULL DEFAULT '',
    transfer_syntax_uid  TEXT NOT NULL DEFAULT '',
    dataset_offset       INTEGER NOT NULL DEFAULT 0,
    state                TEXT NOT NULL,   -- see State
    attempts             INTEGER NOT NULL DEFAULT 0,
    status               INTEGER,         -- the DICOM status, when the peer answered
    reason               TEXT NOT NULL DEFAULT '',
    first_at             REAL NOT NULL,
    last_at              REAL NOT NULL,
    session_id           TEXT NOT NULL,
    -- What the destination holds of this file, whatever this run does with
    -- it: the size, mtime and outcome (stored or warning) of the last
    -- version stored; NULL if none was.
    held_size            INTEGER,
    held_mtime           REAL,
    held_outcome         TEXT,
    held_rules           TEXT,            -- see COERCION_COLUMNS
    -- What a verification (fastsend verify, PS3.4 Annex J and C-FIND) found
    -- of the instance held: see VERIFICATION_COLUMNS.
    commit_state         TEXT,            -- NULL: never asked; see CommitState
    commit_reason        TEXT NOT NULL DEFAULT '',
    find_state           TEXT,            -- NULL: never queried; see FindState
    verified_at          REAL,
    PRIMARY KEY (dir, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS files_sop_instance ON files (sop_instance_uid)
    WHERE sop_instance_uid <> '';
-- What the dispatcher looks for; small, since rows leave it once dispatched.
CREATE INDEX IF NOT EXISTS files_pending ON files (session_id, dir, name)
    WHERE state = 'pending';
-- Study-level attributes from the first header read of each study: for
-- reports (patient, accession, date) and for ordering studies.
CREATE TABLE IF NOT EXISTS studies (
    study_instance_uid   TEXT PRIMARY KEY,
    patient_id           TEXT NOT NULL DEFAULT '',
    patient_name         TEXT NOT NULL DEFAULT '',
    accession_number     TEXT NOT NULL DEFAULT '',
    study_date           TEXT NOT NULL DEFAULT '',
    study_time           TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
-- --coerce: what was changed in each instance sent (the last time it was
-- sent coerced): original NULL for an element added, new NULL for one removed.
CREATE TABLE IF NOT EXISTS coercions (
    dir          TEXT NOT NULL,
    name         TEXT NOT NULL,
    keyword      TEXT NOT NULL,
    original     TEXT,
    new          TEXT,
    session_id   TEXT NOT NULL,
    at           REAL NOT NULL,
    PRIMARY KEY (dir, name, keyword)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sessions (
    session_id   TEXT PRIMARY KEY,
    started_at   REAL NOT NULL,
    finished_at  REAL,
    pid          INTEGER NOT NULL,
    host         TEXT NOT NULL,
    exit_code    INTEGER
);
"""

# Columns added by schema 3 to a files table of schema 2: (name, declaration).
VERIFICATION_COLUMNS: Final = (
    ("commit_state", "TEXT"),
    ("commit_reason", "TEXT NOT NULL DEFAULT ''"),
    ("find_state", "TEXT"),
    ("verified_at", "REAL"),
)

# Added to schema 3 with --coerce: the digest of the rules (Coercion.digest)
# the version held was sent under; '' or NULL: sent without --coerce. A file
# held under other rules than this run's is sent again (see Inventory.known).
COERCION_COLUMNS: Final = (("held_rules", "TEXT"),)

_STUDY = """
INSERT INTO studies (study_instance_uid, patient_id, patient_name, accession_number,
    study_date, study_time)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (study_instance_uid) DO NOTHING
"""

# How long a connection waits for another's lock before giving up.
BUSY_SECONDS: Final = 30.0
# Free space below which an error names it: SQLite reports a full disk as
# "database or disk is full", or as "disk I/O error" when it is the WAL index
# that cannot grow.
LOW_SPACE: Final = 1024 * 1024


class CommitState(Enum):
    """Storage Commitment (PS3.4 Annex J) of an instance the destination holds."""

    COMMITTED = "committed"  # in the Referenced SOP Sequence of the N-EVENT-REPORT
    COMMIT_FAILED = "commit_failed"  # in its Failed SOP Sequence (reason: PS3.3 C.14.1.1)
    UNCOMMITTED = "uncommitted"  # asked, and no report came within --commit-timeout


class FindState(Enum):
    """What a C-FIND of the destination (PS3.4 C) returned of an instance it should hold."""

    FOUND = "found"
    MISSING = "missing"  # missing at destination


class State(Enum):
    """Where a file is in the migration. The last four are Outcome values."""

    PENDING = "pending"  # found by the walk, not dispatched yet
    IN_FLIGHT = "in_flight"  # dispatched to a worker; no outcome yet
    STORED = "stored"
    WARNING = "warning"
    FAILED = "failed"
    SKIPPED = "skipped"


_HELD = (State.STORED.value, State.WARNING.value)  # the destination holds the instance
# The same, as outcomes: `in` a tuple compares members by identity first.
_HELD_OUTCOMES = (Outcome.STORED, Outcome.WARNING)

# Attempts add up across sessions. A stored outcome records what the
# destination now holds (held_*). A *skipped* outcome (interrupted, a
# duplicate) of a version the destination holds leaves the row as that
# outcome said: the destination still has it, and a rerun skips it.
_FORGET_COERCIONS = "DELETE FROM coercions WHERE dir = ? AND name = ?"
_ANY_COERCION = "SELECT 1 FROM coercions LIMIT 1"
_RECORD_COERCION = """
INSERT OR REPLACE INTO coercions (dir, name, keyword, original, new, session_id, at)
VALUES (?, ?, ?, ?, ?, ?, ?)
"""
_RECORD = """
INSERT INTO files (dir, name, size, mtime, sop_class_uid, sop_instance_uid, state, status,
    reason, attempts, first_at, last_at, session_id, held_size, held_mtime, held_outcome,
    held_rules)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (dir, name) DO UPDATE SET
    size = excluded.size, mtime = excluded.mtime,
    sop_class_uid = CASE WHEN excluded.sop_class_uid <> '' THEN excluded.sop_class_uid
                         ELSE files.sop_class_uid END,
    sop_instance_uid = CASE WHEN excluded.sop_instance_uid <> '' THEN excluded.sop_instance_uid
                            ELSE files.sop_instance_uid END,
    state = CASE WHEN excluded.state = 'skipped' AND files.held_size = excluded.size
                      AND abs(files.held_mtime - excluded.mtime) < 1e-6
                 THEN files.held_outcome ELSE excluded.state END,
    status = CASE WHEN excluded.state = 'skipped' AND files.held_size = excluded.size
                      AND abs(files.held_mtime - excluded.mtime) < 1e-6
                  THEN files.status ELSE excluded.status END,
    reason = CASE WHEN excluded.state = 'skipped' AND files.held_size = excluded.size
                       AND abs(files.held_mtime - excluded.mtime) < 1e-6
                  THEN files.reason ELSE excluded.reason END,
    attempts = files.attempts + excluded.attempts,
    last_at = excluded.last_at, session_id = excluded.session_id,
    held_size = COALESCE(excluded.held_size, files.held_size),
    held_mtime = COALESCE(excluded.held_mtime, files.held_mtime),
    held_outcome = COALESCE(excluded.held_outcome, files.held_outcome),
    held_rules = CASE WHEN excluded.held_size IS NOT NULL THEN excluded.held_rules
                      ELSE files.held_rules END
"""

_PENDING = """
INSERT INTO files (dir, name, size, mtime, state, first_at, last_at, session_id)
VALUES (?, ?, ?, ?, 'pending', ?, ?, ?)
ON CONFLICT (dir, name) DO UPDATE SET
    size = excluded.size, mtime = excluded.mtime, state = 'pending',
    last_at = excluded.last_at, session_id = excluded.session_id
"""

_CLAIM = """
INSERT INTO files (dir, name, size, mtime, sop_class_uid, sop_instance_uid,
    study_instance_uid, series_instance_uid, transfer_syntax_uid, dataset_offset, state,
    first_at, last_at, session_id)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'in_flight', ?, ?, ?)
ON CONFLICT (dir, name) DO UPDATE SET
    size = excluded.size, mtime = excluded.mtime,
    sop_class_uid = excluded.sop_class_uid, sop_instance_uid = excluded.sop_instance_uid,
    study_instance_uid = excluded.study_instance_uid,
    series_instance_uid = excluded.series_instance_uid,
    transfer_syntax_uid = excluded.transfer_syntax_uid,
    dataset_offset = excluded.dataset_offset, state = 'in_flight',
    last_at = excluded.last_at, session_id = excluded.session_id
"""


# The queries of a run's hot path, one per file or per batch: each must use
# an index (tests/test_inventory.py checks their query plans), or a run slows
# down with the size of the inventory.
KNOWN_IN_DIRECTORY = (
    "SELECT name, held_size, held_mtime FROM files"
    " WHERE dir = ? AND held_size IS NOT NULL AND coalesce(held_rules, '') = ?"
)
KNOWN_PATH = (
    "SELECT held_size, held_mtime, held_outcome, held_rules FROM files"
    " WHERE dir = ? AND name = ? AND held_size IS NOT NULL"
)
NEXT_PENDING = (
    "SELECT dir, name, size, mtime FROM files"
    " WHERE state = 'pending' AND session_id = ? ORDER BY dir, name LIMIT ?"
)
TAKE_RANGE = (
    "UPDATE files SET state = 'in_flight' WHERE state = 'pending' AND session_id = ?"
    " AND (dir, name) >= (?, ?) AND (dir, name) <= (?, ?)"
)
ANY_PENDING = "SELECT 1 FROM files WHERE state = 'pending' AND session_id = ? LIMIT 1"
# --order and --priority-list: the pending files of one directory (order.py).
PENDING_IN_DIRECTORY = (
    "SELECT dir, name, size, mtime FROM files"
    " WHERE state = 'pending' AND session_id = ? AND dir = ? ORDER BY name LIMIT ?"
)
PENDING_AFTER = (
    "SELECT dir, name, size, mtime FROM files"
    " WHERE state = 'pending' AND session_id = ? AND (dir, name) > (?, ?)"
    " ORDER BY dir, name LIMIT ?"
)
# "<> ''" lets SQLite use the partial index, whose WHERE the query must imply.
# The holders of a batch's SOP Instance UIDs (the destination holds them, or
# they are in flight): "{}" takes one "?" per UID.
HOLDERS = (
    "SELECT sop_instance_uid, dir, name FROM files"
    " WHERE sop_instance_uid IN ({}) AND sop_instance_uid <> ''"
    " AND (held_size IS NOT NULL OR state = 'in_flight')"
)
HOLDERS_THIS_SESSION = HOLDERS + " AND session_id = ?"
# Under the IN list limit of any SQLite (999 variables before 3.32).
_HOLDERS_CHUNK = 500
HOT_QUERIES = (
    KNOWN_IN_DIRECTORY,
    KNOWN_PATH,
    NEXT_PENDING,
    ANY_PENDING,
    PENDING_AFTER,
    TAKE_RANGE,
    HOLDERS.format("?, ?"),
    HOLDERS_THIS_SESSION.format("?"),
    PENDING_IN_DIRECTORY,
)


class JournalError(FastsendError):
    """The journal (inventory) file cannot be used: not SQLite, not writable, another
    destination's ..."""


class Known(NamedTuple):
    """What the destination holds of a file the walk meets again: the version stored.

    A NamedTuple, made from a row at a third of a frozen dataclass's cost.
    """

    size: int
    mtime: float
    outcome: str  # stored or warning


class Pending(NamedTuple):
    """A file found by the walk and not sent yet: what a batch carries.

    A NamedTuple, not a dataclass: every file crosses a pipe in one, and a
    tuple pickles about five times faster both ways.
    """

    path: str
    size: int
    mtime: float


class Row(msgspec.Struct, frozen=True):
    """One file's row, for reports (status, summaries)."""

    path: str
    size: int
    state: str
    sop_instance_uid: str
    study_instance_uid: str
    status: int | None
    reason: str
    attempts: int
    last_at: float
    session_id: str


class HeldInstance(msgspec.Struct, frozen=True):
    """An instance the journal says the destination holds: what verification checks."""

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    attempts: int


class Verdict(msgspec.Struct, frozen=True):
    """What one verification found of one instance, from every method that ran.

    ``find``/``commit``: None when that method did not reach the instance.
    Any negative verdict wins (missing at destination, or commitment
    failed): the destination does not hold it. Otherwise a positive one
    (found, committed) says it does; *uncommitted* alone says nothing.
    """

    path: str
    find: FindState | None = None
    commit: CommitState | None = None
    commit_reason: str = ""

    @property
    def holds(self) -> bool | None:
        if self.find is FindState.MISSING or self.commit is CommitState.COMMIT_FAILED:
            return False
        if self.find is FindState.FOUND or self.commit is CommitState.COMMITTED:
            return True
        return None


# The instances a verification checks: stored by a send (stored or with a
# warning), or held from an earlier version of the file. A verification
# that finds one missing clears held_* (the destination does not hold it, so
# the next send takes the file again) but leaves the state, so the next
# verification still checks it. Not a hot query: run once per verification.
_HELD_INSTANCES = (
    "SELECT dir, name, sop_class_uid, sop_instance_uid, study_instance_uid,"
    " series_instance_uid, attempts FROM files WHERE sop_instance_uid <> ''"
    " AND (held_size IS NOT NULL OR state IN ('stored', 'warning'))"
)
_SESSION_STORED = (
    "SELECT dir, name, sop_class_uid, sop_instance_uid, study_instance_uid,"
    " series_instance_uid, attempts FROM files WHERE sop_instance_uid <> ''"
    " AND session_id = ? AND state IN ('stored', 'warning')"
)
_HELD_ORDER = " ORDER BY study_instance_uid, series_instance_uid, sop_instance_uid, dir, name"

# One verification's verdict per instance, from every method that ran, in
# one write: :holds is 1 (held), 0 (not held: held_* cleared) or NULL (no
# method decided: held_* as it was); a method that did not run (NULL)
# leaves its own column as it was.
_RECORD_VERDICT = """
    UPDATE files SET
    find_state = COALESCE(:find, find_state),
    commit_state = COALESCE(:commit, commit_state),
    commit_reason = CASE WHEN :commit IS NULL THEN commit_reason ELSE :reason END,
    verified_at = :now,
    held_size = CASE WHEN :holds IS NULL THEN held_size WHEN :holds THEN COALESCE(held_size,
                     CASE WHEN state IN ('stored', 'warning') THEN size END) END,
    held_mtime = CASE WHEN :holds IS NULL THEN held_mtime WHEN :holds THEN COALESCE(held_mtime,
                      CASE WHEN state IN ('stored', 'warning') THEN mtime END) END,
    held_outcome = CASE WHEN :holds IS NULL THEN held_outcome WHEN :holds THEN
                        COALESCE(held_outcome,
                        CASE WHEN state IN ('stored', 'warning') THEN state END) END
    WHERE dir = :dir AND name = :name
"""


# The revision of the inventory: counted up by each transaction that changes
# rows (Inventory._commit), read by the audit report (audit.py).
REVISION_KEY: Final = "revision"
# The audit report a send wrote last, and the revision it read (audit.HeldReport).
AUDIT_KEY: Final = "audit"
# Sessions of a version that counts the revision: the sessions table minus
# this is how many did not (an earlier fastsend on the same journal), whose
# changes the revision cannot show.
COUNTING_KEY: Final = "counting_sessions"
# One up, for a counter kept in meta (REVISION_KEY, COUNTING_KEY).
_COUNT_UP = (
    "INSERT INTO meta (key, value) VALUES (?, '1')"
    " ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
)


def split(path: str) -> tuple[str, str]:
    """(directory, name): the inventory's key for a path, as os.path.split gives them.

    Written out for str, without posixpath's fspath and separator lookups:
    a file's key is taken several times on its way (walk, claim, outcome),
    and at a million files each microsecond is a second of CPU.
    """
    cut = path.rfind("/") + 1
    directory, name = path[:cut], path[cut:]
    if directory and directory != "/" * len(directory):
        directory = directory.rstrip("/")
    return directory, name


def join(directory: str, name: str) -> str:
    """The path of an inventory key, as os.path.join gives it (see split)."""
    if name.startswith("/"):
        return name
    if not directory or directory.endswith("/"):
        return directory + name
    return f"{directory}/{name}"


class Inventory:
    """One connection to a destination's inventory; open one per process."""

    def __init__(
        self,
        path: Path,
        destination: str,
        session_id: str,
        checkpoint: bool = True,
        shown_as: Path | None = None,
        rules: str = "",
    ) -> None:
        """``shown_as``: the name errors give the file (scan works on a copy); ``rules``:
        this run's --coerce (Coercion.digest), recorded with each instance stored."""
        self.path = path
        self.rules = rules
        self.shown_as = shown_as or path
        self.destination = destination
        self.session_id = session_id
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue our own transactions.
            self._db = sqlite3.connect(path, timeout=BUSY_SECONDS, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(_cannot_use(shown_as or path, exc)) from exc
        self._changes = 0  # total_changes at the start of the transaction (_begin)
        deadline = time.monotonic() + BUSY_SECONDS
        while True:
            try:
                self._set_up(checkpoint)
                break
            except sqlite3.Error as exc:
                # PRAGMA journal_mode=WAL does not wait on the busy handler:
                # while another connection holds a lock on a database not yet
                # in WAL mode, it fails at once with "database is locked".
                # That happens when the coordinator and a worker open a new
                # one at the same moment; the setup is idempotent, so wait
                # and do it again, as busy_timeout would.
                if not _is_busy(exc) or time.monotonic() > deadline:
                    self._db.close()
                    raise JournalError(_cannot_use(shown_as or path, exc)) from exc
                time.sleep(0.01)
        theirs = self._meta("destination")
        if theirs is None:
            self._adopt()
        elif theirs != destination:
            self._db.close()
            raise JournalError(
                f"cannot use the journal {shown_as or path}: it records the migration to "
                f"{theirs}, not to "
                f"{destination}; give --journal a path of its own for {destination} (or "
                "leave it out: the default is one journal per destination in --log-dir)"
            )

    def _set_up(self, checkpoint: bool) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA busy_timeout={int(BUSY_SECONDS * 1000)}")
        if not checkpoint:
            # A worker never stalls on an fsync between two C-STOREs: by
            # default SQLite checkpoints in whichever connection commits past
            # 1,000 WAL pages.
            self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.executescript(_SCHEMA)
        self._upgrade()

    def _upgrade(self) -> None:
        """Give a schema-2 files table the verification columns (idempotent)."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(files)")}
        wanted = (*VERIFICATION_COLUMNS, *COERCION_COLUMNS)
        missing = [(n, d) for n, d in wanted if n not in have]
        for name, declaration in missing:
            self._db.execute(f"ALTER TABLE files ADD COLUMN {name} {declaration}")
        if missing:
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)",
                (SCHEMA_VERSION,),
            )

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _adopt(self) -> None:
        """Make a new file (or a journal of an earlier version) this destination's."""
        self._begin("IMMEDIATE")
        try:
            if self._meta("destination") is None:
                self._migrate_journal()
                self._db.executemany(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    (("destination", self.destination), ("schema", SCHEMA_VERSION)),
                )
        except BaseException:
            self._rollback()
            raise
        self._commit()

    def _migrate_journal(self) -> None:
        """Bring this destination's rows over from the journal table of earlier versions."""
        has_journal = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'instances'"
        ).fetchone()
        if not has_journal:
            return
        rows = self._db.execute(
            "SELECT path, size, mtime, sop_instance_uid, sop_class_uid, outcome, status,"
            " reason, attempts, first_at, last_at, session_id FROM instances"
            " WHERE destination = ?",
            (self.destination,),
        ).fetchall()
        self._db.executemany(
            "INSERT OR IGNORE INTO files (dir, name, size, mtime, sop_instance_uid,"
            " sop_class_uid, state, status, reason, attempts, first_at, last_at, session_id,"
            " held_size, held_mtime, held_outcome)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    *split(row[0]),
                    *row[1:],
                    *((row[1], row[2], row[5]) if row[5] in _HELD else (None, None, None)),
                )
                for row in rows
            ),
        )

    # ------------------------------------------------------------ sessions

    def begin_session(self) -> None:
        """Record the session: the first write, so a journal that cannot be written is
        refused here (JournalError), before anything is sent."""
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO sessions (session_id, started_at, pid, host)"
                " VALUES (?, ?, ?, ?)",
                (self.session_id, time.time(), os.getpid(), socket.gethostname()),
            )
            self._db.execute(_COUNT_UP, (COUNTING_KEY,))
        except sqlite3.Error as exc:
            raise JournalError(_cannot_use(self.shown_as, exc)) from exc

    def end_session(self, exit_code: int) -> None:
        with self._writing():
            self._db.execute(
                "UPDATE sessions SET finished_at = ?, exit_code = ? WHERE session_id = ?",
                (time.time(), exit_code, self.session_id),
            )

    # ------------------------------------------------------------ the walk

    def known(self, directory: str) -> set[tuple[str, int, float]]:
        """The versions the destination holds of the files directly in ``directory``,
        held as this run would send them: (name, size, mtime) each.

        The walk skips a file whose (name, size, mtime) from its one stat is in
        here. Equality is exact: the size and mtime recorded are os.stat's or
        os.fstat's (the walk's, or the header read's), the walk's compiled stat
        computes st_mtime as CPython does (_walk.pyx), and SQLite keeps a REAL
        as the same double.
        A set built by SQLite's cursor costs no Python per row, which a rerun
        of a million files pays a million times. A file held under other
        --coerce rules (or coerced then, not now, or the reverse) is left out:
        what the destination holds is not what this run sends, so the walk
        makes it pending again.
        """
        return set(self._db.execute(KNOWN_IN_DIRECTORY, (directory, self.rules)))

    def known_path(self, path: str) -> Known | None:
        row = self._db.execute(KNOWN_PATH, split(path)).fetchone()
        if row is None or (row[3] or "") != self.rules:
            return None
        return Known(*row[:3])

    def add_pending(self, files: Sequence[Pending]) -> None:
        """Record files to send this session, in one transaction."""
        now = time.time()
        session = self.session_id
        self._add_pending([(*split(f.path), f.size, f.mtime, now, now, session) for f in files])

    def add_pending_in(self, directory: str, found: Sequence[tuple[str, int, float]]) -> None:
        """Record (name, size, mtime) files of one directory to send, in one transaction.

        The walk's form of add_pending: its files come as names in a
        directory, and are recorded so, without a path built and split again.
        """
        now = time.time()
        session = self.session_id
        self._add_pending([(directory, *file, now, now, session) for file in found])

    def _add_pending(self, rows: Sequence[tuple[str, str, int, float, float, float, str]]) -> None:
        with self._writing():
            self._transaction(_PENDING, rows)

    # ------------------------------------------------------------ dispatch

    def take_pending(self, max_files: int, max_bytes: int) -> list[Pending]:
        """This session's next pending files (in path order), now in flight.

        At most ``max_files``, and no more than ``max_bytes`` unless the first
        file alone is larger.
        """
        with self._writing():
            return self._take_pending(max_files, max_bytes)

    def _take_pending(self, max_files: int, max_bytes: int) -> list[Pending]:
        return self._take_first(NEXT_PENDING, (self.session_id, max_files), max_bytes)

    def _take_first(
        self, query: str, arguments: Sequence[object], max_bytes: int, alone: bool = True
    ) -> list[Pending]:
        """The first pending rows ``query`` gives, up to ``max_bytes``, now in flight.

        ``alone``: a first row larger than ``max_bytes`` is taken by itself
        (else nothing is taken). One IMMEDIATE transaction.
        """
        self._begin("IMMEDIATE")
        try:
            taken: list[Pending] = []
            total = 0
            rows = self._db.execute(query, arguments).fetchall()
            for directory, name, size, mtime in rows:
                if total + size > max_bytes and (taken or not alone):
                    break
                total += size
                taken.append(Pending(join(directory, name), size, mtime))
            if taken:
                # The rows taken are the first ones of the pending index in
                # order, so one range UPDATE (in SQLite, not a call per row)
                # covers exactly them.
                first, last = rows[0], rows[len(taken) - 1]
                self._db.execute(TAKE_RANGE, (self.session_id, *first[:2], *last[:2]))
        except BaseException:
            self._rollback()
            raise
        self._commit()
        return taken

    # ------------------------------------------------------------ --order (order.py)

    def pending_directories(self) -> list[tuple[str, str, str, int]]:
        """(directory, first name, last name, files) of each directory with pending files.

        One pass over the pending rows, once, before an ordered dispatch.
        """
        with self._writing():  # not a write, but its errors are said the same way
            rows: list[tuple[str, str, str, int]] = self._db.execute(
                "SELECT dir, MIN(name), MAX(name), COUNT(*) FROM files"
                " WHERE state = 'pending' AND session_id = ? GROUP BY dir ORDER BY dir",
                (self.session_id,),
            ).fetchall()
        return rows

    def take_pending_in(
        self, directory: str, max_files: int, max_bytes: int, alone: bool = True
    ) -> list[Pending]:
        """Like take_pending, from one directory; ``alone``: a first file larger
        than ``max_bytes`` is taken by itself (else nothing is taken)."""
        with self._writing():
            return self._take_first(
                PENDING_IN_DIRECTORY, (self.session_id, directory, max_files), max_bytes, alone
            )

    def has_pending(self) -> bool:
        """Whether this session has files still to dispatch."""
        row = self._db.execute(ANY_PENDING, (self.session_id,)).fetchone()
        return row is not None

    def pending(self, chunk: int = 1000) -> Iterator[Pending]:
        """This session's files still pending (after an interrupt: those never sent).

        Read a chunk at a time, each read whole before it is yielded, so the
        caller may record outcomes (which change these rows) as it goes, and
        memory holds a chunk, not the archive.
        """
        after = ("", "")
        while True:
            rows = self._db.execute(PENDING_AFTER, (self.session_id, *after, chunk)).fetchall()
            if not rows:
                return
            for directory, name, size, mtime in rows:
                yield Pending(join(directory, name), size, mtime)
            after = (rows[-1][0], rows[-1][1])

    # ------------------------------------------------------------ before sending

    def claim(self, infos: Sequence[FileInfo], resume: bool = True) -> dict[str, str]:
        """Write the headers of files about to be sent; return the duplicates.

        A file is a duplicate when another path's row has its SOP Instance UID
        and the destination holds it or it is in flight (this session only
        with ``resume`` off, i.e. --no-resume). Duplicates are returned as
        {path: the other path} and left for the caller to record as skipped;
        the others become in flight. One IMMEDIATE transaction, so two
        workers claiming the same UID at once cannot both win.
        """
        with self._writing():
            return self._claim(infos, resume)

    def _claim(self, infos: Sequence[FileInfo], resume: bool) -> dict[str, str]:
        duplicates: dict[str, str] = {}
        now = time.time()
        studies: dict[str, FileInfo] = {}
        self._begin("IMMEDIATE")
        try:
            # One query for the batch's UIDs, not one per file.
            holders = self._holders({i.sop_instance_uid for i in infos}, resume)
            claims: list[tuple[object, ...]] = []
            for info in infos:
                directory, name = split(info.path)
                others = [
                    h for h in holders.get(info.sop_instance_uid, ()) if h != (directory, name)
                ]
                if others:
                    duplicates[info.path] = join(*others[0])
                    continue
                # In flight from here on: a later file of the batch with
                # this UID is its duplicate.
                holders.setdefault(info.sop_instance_uid, []).append((directory, name))
                claims.append(
                    (
                        directory,
                        name,
                        info.size,
                        info.mtime,
                        info.sop_class_uid,
                        info.sop_instance_uid,
                        info.study_instance_uid,
                        info.series_instance_uid,
                        info.transfer_syntax_uid,
                        info.dataset_offset,
                        now,
                        now,
                        self.session_id,
                    )
                )
                if info.study_instance_uid:
                    studies.setdefault(info.study_instance_uid, info)
            # One call for the batch: which files are duplicates was settled
            # above, from the holders read first and the claims made so far.
            self._db.executemany(_CLAIM, claims)
            self._db.executemany(
                _STUDY,
                [
                    (
                        uid,
                        i.patient_id,
                        i.patient_name,
                        i.accession_number,
                        i.study_date,
                        i.study_time,
                    )
                    for uid, i in studies.items()
                ],
            )
        except BaseException:
            self._rollback()
            raise
        self._commit()
        return duplicates

    def _holders(self, uids: set[str], resume: bool) -> dict[str, list[tuple[str, str]]]:
        """{SOP Instance UID: the (dir, name) of each row holding it}, for ``uids``."""
        wanted = sorted(u for u in uids if u)
        holders: dict[str, list[tuple[str, str]]] = {}
        for start in range(0, len(wanted), _HOLDERS_CHUNK):
            chunk = wanted[start : start + _HOLDERS_CHUNK]
            marks = ", ".join("?" * len(chunk))
            if resume:
                rows = self._db.execute(HOLDERS.format(marks), chunk)
            else:
                rows = self._db.execute(
                    HOLDERS_THIS_SESSION.format(marks), (*chunk, self.session_id)
                )
            for uid, directory, name in rows:
                holders.setdefault(uid, []).append((directory, name))
        return holders

    # ------------------------------------------------------------ outcomes

    def record(self, result: FileResult, size: int, mtime: float) -> None:
        """Record one outcome; committed when this returns."""
        self.record_many([(result, size, mtime)])

    def record_many(self, outcomes: Iterable[tuple[FileResult, int, float]]) -> None:
        """Record (result, size, mtime) outcomes in one transaction."""
        now = time.time()
        outcomes = list(outcomes)
        rows = [self._outcome_row(r, s, m, now) for r, s, m in outcomes]
        # Every instance stored replaces what the destination held, so what was
        # changed in that one goes, coerced this time or not.
        held = [r for r, _, _ in outcomes if r.outcome in _HELD_OUTCOMES]
        coerced = [r for r in held if r.coerced]
        with self._writing():
            if not held:
                self._transaction(_RECORD, rows)
                return
            # One transaction: the outcome and what was changed in it go together.
            self._begin()
            try:
                self._db.executemany(_RECORD, rows)
                # With no coercion recorded at all (no --coerce in this
                # journal's life) there is nothing to forget, and one query
                # says so for the batch. Asked after the first write, when
                # this transaction holds the write lock: no other process can
                # record a coercion between the answer and the commit.
                if coerced or self._db.execute(_ANY_COERCION).fetchone() is not None:
                    self._db.executemany(_FORGET_COERCIONS, [split(r.path) for r in held])
                self._db.executemany(
                    _RECORD_COERCION,
                    [
                        (*split(r.path), keyword, original, new, self.session_id, now)
                        for r in coerced
                        for keyword, original, new in r.coerced
                    ],
                )
            except BaseException:
                self._rollback()
                raise
            self._commit()

    def coercions(self, path: str) -> dict[str, tuple[str | None, str | None]]:
        """What --coerce changed in the file last stored from ``path``: keyword -> (old, new)."""
        rows = self._db.execute(
            "SELECT keyword, original, new FROM coercions WHERE dir = ? AND name = ?",
            split(path),
        )
        return {keyword: (original, new) for keyword, original, new in rows}

    def _outcome_row(
        self, result: FileResult, size: int, mtime: float, now: float
    ) -> tuple[object, ...]:
        state = result.outcome.value
        held = result.outcome in _HELD_OUTCOMES
        return (
            *split(result.path),
            size,
            mtime,
            result.sop_class_uid,
            result.sop_instance_uid,
            state,
            result.status,
            result.reason,
            result.attempts,
            now,
            now,
            self.session_id,
            *((size, mtime, state, self.rules) if held else (None, None, None, None)),
        )

    def _transaction(
        self, sql: str, rows: Sequence[Sequence[object]] | Sequence[Mapping[str, object]]
    ) -> None:
        if not rows:
            return
        self._begin()
        try:
            self._db.executemany(sql, rows)
        except BaseException:
            self._rollback()
            raise
        self._commit()

    def _begin(self, mode: str = "") -> None:
        self._changes = self._db.total_changes
        self._db.execute(f"BEGIN {mode}")

    def _commit(self) -> None:
        """COMMIT; a transaction that changed rows also counts up the revision.

        Every change to what the inventory records of the files comes through
        here (the sessions table, written outside transactions, does not), so
        an audit report that records the revision it read can later be known
        to still hold: see audit.report_that_holds.
        """
        if self._db.total_changes != self._changes:
            self._db.execute(_COUNT_UP, (REVISION_KEY,))
        self._db.execute("COMMIT")

    def _rollback(self) -> None:
        # SQLite rolls a transaction back itself after some errors (a full
        # disk, an I/O error); a second ROLLBACK would hide the first error.
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Turn a failed write into JournalError, naming the file and what to do."""
        try:
            yield
        except sqlite3.Error as exc:
            raise JournalError(_cannot_write(self.shown_as, exc)) from exc

    # ------------------------------------------------------------ reading

    def counts(self) -> dict[str, int]:
        """Files per state."""
        rows = self._db.execute("SELECT state, COUNT(*) FROM files GROUP BY state")
        return {state: count for state, count in rows}

    def rows(self, states: Iterable[State], session_id: str | None = None) -> Iterator[Row]:
        """Rows in these states (of one session, if given), in path order."""
        wanted = [s.value for s in states]
        sql = (
            "SELECT dir, name, size, state, sop_instance_uid, study_instance_uid, status,"
            " reason, attempts, last_at, session_id FROM files"
            f" WHERE state IN ({', '.join('?' * len(wanted))})"
        )
        arguments: list[object] = list(wanted)
        if session_id is not None:
            sql += " AND session_id = ?"
            arguments.append(session_id)
        for row in self._db.execute(sql + " ORDER BY dir, name", arguments):
            yield Row(join(row[0], row[1]), *row[2:])

    def stored(self) -> dict[str, Known]:
        """Paths the destination holds, with their size and mtime then (small inventories)."""
        rows = self._db.execute(
            "SELECT dir, name, held_size, held_mtime, held_outcome FROM files"
            " WHERE held_size IS NOT NULL"
        )
        return {join(d, n): Known(s, m, o) for d, n, s, m, o in rows}

    # ------------------------------------------------------------ verification

    def held_instances(self, session_id: str | None = None) -> Iterator[HeldInstance]:
        """Instances the destination should hold, by study, series and SOP Instance UID.

        ``session_id``: only those that session stored (send --commit).
        """
        if session_id is None:
            rows = self._db.execute(_HELD_INSTANCES + _HELD_ORDER)
        else:
            rows = self._db.execute(_SESSION_STORED + _HELD_ORDER, (session_id,))
        for directory, name, *rest in rows.fetchall():
            yield HeldInstance(join(directory, name), *rest)

    def held_by_study(
        self, session_id: str | None = None
    ) -> Iterator[tuple[str, list[HeldInstance]]]:
        """held_instances grouped as (Study Instance UID, its instances)."""
        study: str | None = None
        group: list[HeldInstance] = []
        for instance in self.held_instances(session_id):
            if instance.study_instance_uid != study and group:
                assert study is not None
                yield study, group
                group = []
            study = instance.study_instance_uid
            group.append(instance)
        if group:
            assert study is not None
            yield study, group

    def record_verdicts(self, verdicts: Iterable[Verdict]) -> None:
        """One verification's outcomes, one row per instance, in one transaction.

        Each Verdict carries what every method said and whether the
        destination holds the instance (Verdict.holds): the methods are
        combined before anything is written, so no method overwrites another.
        """
        now = time.time()
        rows = [
            {
                "find": None if v.find is None else v.find.value,
                "commit": None if v.commit is None else v.commit.value,
                "reason": v.commit_reason,
                "holds": v.holds,
                "now": now,
                "dir": split(v.path)[0],
                "name": split(v.path)[1],
            }
            for v in verdicts
        ]
        with self._writing():
            self._transaction(_RECORD_VERDICT, rows)

    def record_find(self, found: Iterable[tuple[str, FindState]]) -> None:
        """C-FIND outcomes (path, state) alone: see record_verdicts."""
        self.record_verdicts(Verdict(path, find=state) for path, state in found)

    def record_commit(self, outcomes: Iterable[tuple[str, CommitState, str]]) -> None:
        """Storage Commitment outcomes (path, state, Failure Reason) alone (send --commit).

        *uncommitted* (no report in time) says nothing of what the destination
        holds, so held_* stays as it was.
        """
        self.record_verdicts(
            Verdict(path, commit=state, commit_reason=reason) for path, state, reason in outcomes
        )

    # ------------------------------------------------------------ housekeeping

    def checkpoint(self) -> None:
        """Copy the WAL into the database and have the next commit start it afresh.

        RESTART, not PASSIVE: under a steady stream of commits a passive
        checkpoint never lets the WAL start over, and it would grow by every
        outcome of the run. Writers wait (busy_timeout) while it runs.
        """
        with self._writing():
            self._db.execute("PRAGMA wal_checkpoint(RESTART)")

    def snapshot(self, target: Path) -> None:
        """A consistent copy (SQLite's online backup), for reading without a lock."""
        copy = sqlite3.connect(target)
        try:
            self._db.backup(copy)
        finally:
            copy.close()

    def close(self) -> None:
        self._db.close()


# ------------------------------------------------------------ reading, from outside a run


class SessionRecord(msgspec.Struct, frozen=True):
    """A row of the sessions table: one `send` (finished_at None: not finished, or running)."""

    session_id: str
    started_at: float
    finished_at: float | None
    pid: int
    host: str
    exit_code: int | None


class StateTally(msgspec.Struct, frozen=True):
    """Files in one state: in all sessions, and in the session asked about."""

    files: int
    session_files: int
    session_bytes: int  # their sizes
    session_recent: int  # of those, written (last_at) after ``since``


class StudyTally(msgspec.Struct, frozen=True):
    """One study's files by state, whatever the session; study '' = no Study Instance UID."""

    study_instance_uid: str
    files: int
    stored: int  # stored or warning
    failed: int
    skipped: int
    remaining: int  # pending or in flight


class ReasonTally(msgspec.Struct, frozen=True):
    """Failed files with one reason (and DICOM status), with the first path as an example."""

    reason: str
    status: int | None
    files: int
    example: str


class Overview(msgspec.Struct, frozen=True):
    """The whole inventory in aggregates, from one read transaction."""

    states: dict[str, StateTally]  # every State value, also those with no file
    held_files: int  # rows with a version the destination holds
    held_bytes: int
    session_last_at: float | None  # the session's last write to a row
    studies: list[StudyTally]  # with a Study Instance UID, most files not stored first
    study_count: int
    complete_studies: int  # every file stored or stored with a warning
    no_study: StudyTally | None  # rows without a Study Instance UID (not read yet, unreadable...)
    failure_reasons: list[ReasonTally]  # most files first
    failure_reason_count: int


# Counts per (study, state, session or not) in one scan of the files table,
# which both the state counts and the per-study table are then taken from (a
# second scan, sorting 1 M rows by study, would double the time). A TEMP
# table lives in the connection's own temporary database, not in the file.
_TALLY = """
CREATE TEMP TABLE tally AS
SELECT study_instance_uid AS study, state, session_id = :session AS mine, COUNT(*) AS files,
    COUNT(held_size) AS held_files, IFNULL(SUM(held_size), 0) AS held_bytes,
    SUM(size) AS bytes, SUM(last_at > :since) AS recent, MAX(last_at) AS last_at
FROM files GROUP BY study_instance_uid, state, mine
"""

# One row per study from the tally (study '': the rows without a UID): its
# files, stored (or with a warning), failed, skipped and not yet sent.
_STUDY_ROWS = """
SELECT study, SUM(files) AS files,
    IFNULL(SUM(files) FILTER (WHERE state IN ('stored', 'warning')), 0) AS stored,
    IFNULL(SUM(files) FILTER (WHERE state = 'failed'), 0) AS failed,
    IFNULL(SUM(files) FILTER (WHERE state = 'skipped'), 0) AS skipped,
    IFNULL(SUM(files) FILTER (WHERE state IN ('pending', 'in_flight')), 0) AS remaining
FROM temp.tally GROUP BY study
"""

# The studies with the most files not stored first, and (window functions,
# computed before the LIMIT) how many studies there are and how many are complete.
_STUDIES = f"""
SELECT *, COUNT(*) OVER (), SUM(stored = files) OVER ()
FROM ({_STUDY_ROWS}) WHERE study <> '' ORDER BY files - stored DESC, study LIMIT :limit
"""


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that only reads ``path`` and leaves no side file (see InventoryReader)."""
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    if not wal.exists():
        options = "mode=ro&immutable=1"
    elif shm.exists():
        options = "mode=ro&readonly_shm=1"
    else:
        options = "mode=ro"
    return sqlite3.connect(
        f"{path.resolve().as_uri()}?{options}",
        uri=True,
        timeout=BUSY_SECONDS,
        isolation_level=None,
    )


class InventoryReader:
    """An inventory opened read-only, for `fastsend status`: it never writes the file.

    Not the Inventory class, whose opening sets WAL mode, creates the schema and
    adopts a journal of an earlier version. Opening never creates the ``-wal``
    and ``-shm`` files either: a plain ``mode=ro`` connection makes both beside
    a journal that has none and leaves them, and rewrites the ``-shm`` of one
    that a killed run left behind. So (SQLite's "WAL mode: read-only databases"):

    - no ``-wal``: no connection has the file open (the first one in WAL mode
      creates it, the last one removes it), so the file alone holds every
      commit; ``immutable=1`` reads it as it is, without locks or side files.
      A run that starts meanwhile makes ``overtaken`` true: read again.
    - ``-wal`` and ``-shm``: ``readonly_shm=1`` opens the wal-index read-only
      (readers then take only shared locks, which is all they need); without a
      live writer SQLite reads the WAL into private memory instead.
    - a ``-wal`` without its ``-shm`` (someone removed it): plain ``mode=ro``,
      which has to make the ``-shm``; the journal and its WAL are still only read.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._immutable = not Path(f"{path}-wal").exists()
        try:
            self._db = connect_read_only(path)
        except sqlite3.Error as exc:
            raise JournalError(self._unreadable(exc)) from exc
        try:
            self.destination, self.schema = self._check()
        except BaseException:
            self._db.close()
            raise

    def _unreadable(self, problem: object) -> str:
        return (
            f"cannot read {self.path} as a fastsend journal: {problem}; give --journal the"
            " journal a `fastsend send` wrote (fastsend_journal_<AE>_<host>_<port>.sqlite in"
            " its --log-dir)"
        )

    def _check(self) -> tuple[str | None, str | None]:
        """(destination, schema version) of a journal of this version; else JournalError."""
        try:
            tables = {
                name
                for (name,) in self._db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                )
            }
            if "files" not in tables and "instances" in tables:
                raise JournalError(
                    f"the journal {self.path} was written by an earlier version of fastsend (it"
                    " has the table instances, not the inventory); run `fastsend send` of this"
                    " version to the same destination once (it takes the journal over), then"
                    " ask again"
                )
            if not {"files", "sessions", "meta"} <= tables:
                found = (
                    f"an SQLite file with the tables {', '.join(sorted(tables))}"
                    if tables
                    else "an empty SQLite file"
                )
                raise JournalError(
                    f"{self.path} is not a fastsend journal ({found}); give --journal the"
                    " journal a `fastsend send` wrote (fastsend_journal_<AE>_<host>_<port>.sqlite"
                    " in its --log-dir)"
                )
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.Error as exc:
            raise JournalError(self._unreadable(exc)) from exc
        return meta.get("destination"), meta.get("schema")

    @property
    def overtaken(self) -> bool:
        """A run opened the journal while it was read as immutable: read it again."""
        return self._immutable and Path(f"{self.path}-wal").exists()

    @property
    def connection(self) -> sqlite3.Connection:
        """The read-only connection, for a report that runs its own aggregate queries (audit)."""
        return self._db

    def sessions(self) -> list[SessionRecord]:
        """Every session, oldest first."""
        rows = self._db.execute(
            "SELECT session_id, started_at, finished_at, pid, host, exit_code FROM sessions"
            " ORDER BY started_at, session_id"
        )
        return [SessionRecord(*row) for row in rows]

    def overview(
        self, session_id: str, since: float, studies: int | None, reasons: int
    ) -> Overview:
        """Counts by state (all, and ``session_id``'s), by study and by failure reason.

        ``studies``: how many studies to list (None: all). Three scans of the
        files table in one read transaction, so a running send cannot make the
        parts disagree.
        """
        db = self._db
        db.execute("BEGIN")  # one snapshot for every query below
        try:
            db.execute("DROP TABLE IF EXISTS temp.tally")
            db.execute(_TALLY, {"session": session_id, "since": since})
            return self._overview(studies, reasons)
        finally:
            db.execute("DROP TABLE IF EXISTS temp.tally")
            db.execute("COMMIT")

    def _overview(self, studies: int | None, reasons: int) -> Overview:
        db = self._db
        everywhere: dict[str, int] = dict.fromkeys((s.value for s in State), 0)
        mine: dict[str, tuple[int, int, int]] = {}
        held_files = held_bytes = 0
        last_at: float | None = None
        for state, in_session, files, held, held_size, size, recent, last in db.execute(
            "SELECT state, mine, SUM(files), SUM(held_files), SUM(held_bytes), SUM(bytes),"
            " SUM(recent), MAX(last_at) FROM temp.tally GROUP BY state, mine"
        ):
            everywhere[state] = everywhere.get(state, 0) + files
            held_files += held
            held_bytes += held_size
            if in_session:
                mine[state] = (files, size, recent)
                last_at = last if last_at is None else max(last_at, last)
        states = {
            state: StateTally(files, *mine.get(state, (0, 0, 0)))
            for state, files in everywhere.items()
        }
        listed: list[StudyTally] = []
        study_count = complete = 0
        if studies != 0:
            for row in db.execute(_STUDIES, {"limit": -1 if studies is None else studies}):
                listed.append(StudyTally(*row[:6]))
                study_count, complete = row[6], row[7]
        else:
            study_count, complete = db.execute(
                f"SELECT COUNT(*), IFNULL(SUM(stored = files), 0) FROM ({_STUDY_ROWS})"
                " WHERE study <> ''"
            ).fetchone()
        unread = db.execute(f"SELECT * FROM ({_STUDY_ROWS}) WHERE study = ''").fetchone()
        reasons_listed: list[ReasonTally] = []
        reason_count = 0
        for reason, status, files, example, count in db.execute(
            "SELECT reason, status, COUNT(*),"
            " MIN(CASE WHEN dir = '' THEN name ELSE dir || '/' || name END),"
            " COUNT(*) OVER () FROM files WHERE state = 'failed' GROUP BY reason, status"
            " ORDER BY COUNT(*) DESC, reason LIMIT ?",
            (reasons,),
        ):
            reasons_listed.append(ReasonTally(reason, status, files, example))
            reason_count = count
        return Overview(
            states=states,
            held_files=held_files,
            held_bytes=held_bytes,
            session_last_at=last_at,
            studies=listed,
            study_count=study_count,
            complete_studies=complete,
            no_study=None if unread is None else StudyTally(*unread),
            failure_reasons=reasons_listed,
            failure_reason_count=reason_count,
        )

    def written_since(self, session_id: str, since: float) -> int:
        """Files the session stored (with or without a warning) after ``since``."""
        (count,) = self._db.execute(
            "SELECT COUNT(*) FROM files WHERE session_id = ? AND state IN ('stored', 'warning')"
            " AND last_at > ?",
            (session_id, since),
        ).fetchone()
        return int(count)

    def close(self) -> None:
        self._db.close()


def record_meta(path: Path, key: str, value: str) -> None:
    """Write one meta row of the inventory at ``path``, in a connection of its own
    (the run's is closed by then); it changes no file's row, so no revision."""
    # mode=rw: a journal removed meanwhile is an error, not a new empty file.
    db = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=BUSY_SECONDS, isolation_level=None
    )
    try:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
    finally:
        db.close()


def outcome_state(outcome: Outcome) -> State:
    return State(outcome.value)


def _is_busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED, extended codes (such as SQLITE_BUSY_SNAPSHOT) included."""
    code = getattr(exc, "sqlite_errorcode", None)  # None on errors not from SQLite itself
    return code is not None and (code & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _cannot_use(path: Path, exc: OSError | sqlite3.Error) -> str:
    return (
        f"cannot use the journal {path}: {exc}{_why_not_writable(path)}; give --journal a"
        " writable path, new or an earlier fastsend journal (move this file aside if it is"
        " something else)"
    )


def _cannot_write(path: Path, exc: sqlite3.Error) -> str:
    return (
        f"cannot write the journal {path}: {exc}{_why_not_writable(path)}; the run stops, since"
        " no outcome of what it sent next could be recorded. Free space there (or make the file"
        " writable), then run the same command again: it sends what the journal does not"
        " record as stored"
    )


def _why_not_writable(path: Path) -> str:
    """What the file system says, when SQLite's error does not: read-only, or full."""
    try:
        status = os.statvfs(path.parent)
    except OSError:
        return ""
    if status.f_flag & os.ST_RDONLY:
        return " (its file system is mounted read-only)"
    # access(2) answers for root too: EROFS, or EPERM for an immutable file (chattr +i).
    if path.exists() and not os.access(path, os.W_OK):
        return " (the file is not writable)"
    free = status.f_bavail * status.f_frsize
    if free < LOW_SPACE:
        return f" (its file system has {free // 1024} kB free)"
    return ""


_Read = TypeVar("_Read")


def read_consistently(journal: Path, read: Callable[[InventoryReader], _Read]) -> _Read:
    """``read`` on a reader of ``journal``, and once more if a send overtook it.

    A reader first reads the file without its WAL (see InventoryReader); a
    send that opens the journal meanwhile may checkpoint into it, so what was
    read may mix two states: it is then read again, through the WAL. A read
    that fails otherwise is JournalError naming the file. (`status`, `audit`.)
    """
    for again_if_overtaken in (True, False):
        reader = InventoryReader(journal)
        try:
            result = read(reader)
        except sqlite3.Error as exc:
            if again_if_overtaken and reader.overtaken:
                continue
            raise JournalError(f"cannot read the journal {journal}: {exc}") from exc
        finally:
            reader.close()
        if not (again_if_overtaken and reader.overtaken):
            return result
    raise AssertionError("the second read does not ask to be read again")
