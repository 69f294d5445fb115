"""The journal: every instance's outcome, per destination, in SQLite (stdlib).

A rerun against the same destination skips what the journal says was stored
(unless the file changed since, by size or mtime) and sends the rest again.

Who writes: each worker records a file's outcome as soon as the next
C-STORE-RQ is on the wire (while the peer stores that one), so if everything
is killed at once, the only instances whose outcome is lost are the one in
flight and the one answered just before it, at most two per worker; a rerun
sends those again. The coordinator writes every outcome it decides itself
(missing, unreadable, not DICOM, duplicate, interrupted, a worker's death),
and with --cluster all of them, in one transaction per batch; only "already
stored" skips are not written again, the journal holding the stored row.

Durability: WAL mode, one short transaction per outcome. With
``synchronous=NORMAL`` a committed outcome survives the death of the process
(it is in the WAL file the moment the commit returns); only a power loss can
lose the last few, which then are sent again on the rerun.

Checkpoints (copying the WAL into the database, with an fsync each side) are
the coordinator's: workers open the journal with ``checkpoint=False``, so no
fsync ever stalls a worker between two C-STOREs (by default SQLite
checkpoints in whichever connection commits past 1,000 WAL pages, about
every 300 outcomes; an fsync here takes milliseconds). The coordinator keeps
a connection open for the whole run and checkpoints every few seconds, which
also bounds the WAL; its close, the last, checkpoints the rest.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .config import PeerConfig
from .errors import FastsendError
from .results import FileResult, Outcome

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    destination       TEXT NOT NULL,   -- 'AE@host:port'
    path              TEXT NOT NULL,
    size              INTEGER NOT NULL,
    mtime             REAL NOT NULL,
    sop_instance_uid  TEXT NOT NULL,
    sop_class_uid     TEXT NOT NULL,
    outcome           TEXT NOT NULL,   -- stored | warning | failed | skipped
    status            INTEGER,         -- DICOM status, when the peer answered
    reason            TEXT NOT NULL,
    attempts          INTEGER NOT NULL,
    first_at          REAL NOT NULL,
    last_at           REAL NOT NULL,
    session_id        TEXT NOT NULL,
    PRIMARY KEY (destination, path)
);
-- Earlier journals had an index on (destination, sop_instance_uid) that no
-- query used; it made each record about a quarter dearer (two B-trees to
-- update in every commit instead of one).
DROP INDEX IF EXISTS instances_uid;
"""

# How long a connection waits for another's lock before giving up.
BUSY_SECONDS: Final = 30.0

# Outcomes that mean the destination holds the instance.
_STORED = (Outcome.STORED.value, Outcome.WARNING.value)

# Attempts add up across sessions. A *skipped* outcome (interrupted, a
# duplicate, not sent) never replaces a stored one: the destination still holds
# what it stored, and the row's size and mtime still tell a rerun whether the
# file changed since.
_UPSERT = """
INSERT INTO instances (destination, path, size, mtime, sop_instance_uid,
    sop_class_uid, outcome, status, reason, attempts, first_at, last_at, session_id)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (destination, path) DO UPDATE SET
    size = excluded.size, mtime = excluded.mtime,
    sop_instance_uid = excluded.sop_instance_uid,
    sop_class_uid = excluded.sop_class_uid, outcome = excluded.outcome,
    status = excluded.status, reason = excluded.reason,
    attempts = instances.attempts + excluded.attempts,
    last_at = excluded.last_at, session_id = excluded.session_id
WHERE NOT (excluded.outcome = 'skipped' AND instances.outcome IN ('stored', 'warning'))
"""


def destination_key(peer: PeerConfig) -> str:
    return f"{peer.called_ae_title}@{peer.host}:{peer.port}"


def default_journal_path(log_dir: Path, peer: PeerConfig) -> Path:
    """One journal per destination in the log directory."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{peer.called_ae_title}_{peer.host}_{peer.port}")
    return log_dir / f"fastsend_journal_{safe}.sqlite"


class JournalError(FastsendError):
    """The journal file cannot be opened or set up (not SQLite, not writable ...)."""


@dataclass(frozen=True, slots=True)
class StoredEntry:
    size: int
    mtime: float
    sop_instance_uid: str
    session_id: str


class Journal:
    """One connection to the journal file; open one per process."""

    def __init__(
        self, path: Path, destination: str, session_id: str, checkpoint: bool = True
    ) -> None:
        self.path = path
        self.destination = destination
        self.session_id = session_id
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue our own short transactions.
            self._db = sqlite3.connect(path, timeout=BUSY_SECONDS, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(_cannot_use(path, exc)) from exc
        deadline = time.monotonic() + BUSY_SECONDS
        while True:
            try:
                self._set_up(checkpoint)
                break
            except sqlite3.Error as exc:
                # PRAGMA journal_mode=WAL does not wait on the busy handler:
                # while another connection holds a lock on a journal not yet
                # in WAL mode, it fails at once with "database is locked".
                # That happens when the coordinator and a worker open a new
                # journal at the same moment; the setup is idempotent, so wait
                # and do it again, as busy_timeout would.
                if not _is_busy(exc) or time.monotonic() > deadline:
                    self._db.close()
                    raise JournalError(_cannot_use(path, exc)) from exc
                time.sleep(0.01)

    def _set_up(self, checkpoint: bool) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA busy_timeout={int(BUSY_SECONDS * 1000)}")  # workers write too
        if not checkpoint:
            self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.executescript(_SCHEMA)

    def checkpoint(self) -> None:
        """Copy the WAL into the database and have the next commit start it afresh.

        RESTART, not PASSIVE: under a steady stream of commits a passive
        checkpoint never lets the WAL start over, and it would grow by every
        outcome of the run. Writers wait (busy_timeout) while it runs.
        """
        self._db.execute("PRAGMA wal_checkpoint(RESTART)")

    def close(self) -> None:
        self._db.close()

    def stored(self) -> dict[str, StoredEntry]:
        """Paths the destination already holds, with what the file was then."""
        rows = self._db.execute(
            "SELECT path, size, mtime, sop_instance_uid, session_id FROM instances"
            " WHERE destination = ? AND outcome IN (?, ?)",
            (self.destination, *_STORED),
        )
        return {row[0]: StoredEntry(row[1], row[2], row[3], row[4]) for row in rows}

    def record(self, result: FileResult, size: int, mtime: float) -> None:
        """Record one outcome; committed when this returns."""
        self._db.execute(_UPSERT, self._row(result, size, mtime, time.time()))

    def record_many(self, outcomes: Iterable[tuple[FileResult, int, float]]) -> None:
        """Record (result, size, mtime) outcomes in one transaction: one commit for all."""
        now = time.time()
        rows = [self._row(result, size, mtime, now) for result, size, mtime in outcomes]
        if not rows:
            return
        self._db.execute("BEGIN")
        try:
            self._db.executemany(_UPSERT, rows)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _row(self, result: FileResult, size: int, mtime: float, now: float) -> tuple[object, ...]:
        return (
            self.destination,
            result.path,
            size,
            mtime,
            result.sop_instance_uid,
            result.sop_class_uid,
            result.outcome.value,
            result.status,
            result.reason,
            result.attempts,
            now,
            now,
            self.session_id,
        )

    def counts(self) -> dict[str, int]:
        """Outcomes recorded for this destination (for reports and tests)."""
        rows = self._db.execute(
            "SELECT outcome, COUNT(*) FROM instances WHERE destination = ? GROUP BY outcome",
            (self.destination,),
        )
        return dict(rows.fetchall())


def _is_busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED, extended codes (such as SQLITE_BUSY_SNAPSHOT) included."""
    code = getattr(exc, "sqlite_errorcode", None)  # None on errors not from SQLite itself
    return code is not None and (code & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _cannot_use(path: Path, exc: OSError | sqlite3.Error) -> str:
    return (
        f"cannot use the journal {path}: {exc}; give --journal a writable path, new or an"
        " earlier fastsend journal (move this file aside if it is something else)"
    )


def file_unchanged(entry: StoredEntry, size: int, mtime: float) -> bool:
    """Same size and modification time as when it was stored."""
    return entry.size == size and abs(entry.mtime - mtime) < 1e-6
