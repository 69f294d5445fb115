"""`fastsend status`: a migration's progress, read from its inventory (the journal).

The inventory is read as it is on disk, by a read-only connection that never
writes the file or its side files (engine.inventory.InventoryReader), so it
can be asked while a `send` runs, as often as wanted, and from another
terminal. Everything comes from aggregate queries; nothing is loaded row by
row, so a 1 M-file inventory answers in seconds.

A session is one `send`. The inventory records when it started and ended,
and the PID and host of the process that ran it: a session without an end
is *running* while that process lives, else it was killed or crashed (a
Ctrl-C still ends it). Rates count the files a session stored (with or
without a warning) by the time each row was written (``last_at``).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Final

from .engine.inventory import (
    InventoryReader,
    JournalError,
    Overview,
    SessionRecord,
    State,
    StudyTally,
    read_consistently,
)
from .engine.results import ExitStatus
from .errors import FastsendError

STATUS_SCHEMA = Path(__file__).with_name("status.schema.json")

# The rate an ETA is taken from: files stored over the last minute.
RECENT_SECONDS: Final = 60.0
# Failure reasons listed, most files first.
REASONS_LISTED: Final = 10
# A process that started this long after a session did is not the one that
# ran it (its PID was reused); /proc gives start times to the clock tick, and
# the boot time to the second.
_PID_REUSE_SLACK: Final = 2.0

_ORDER = (State.PENDING, State.IN_FLIGHT, State.STORED, State.WARNING, State.FAILED, State.SKIPPED)
_REMAINING = (State.PENDING.value, State.IN_FLIGHT.value)
_HELD = (State.STORED.value, State.WARNING.value)


class UnknownSession(FastsendError):
    """--session names no session of this inventory."""


class SessionState(Enum):
    """Where a session is, as far as this host can tell."""

    RUNNING = "running"  # not finished, and its process is alive on this host
    FINISHED = "finished"  # ended (completed, failed or interrupted by Ctrl-C)
    CRASHED = "crashed"  # not finished, and its process is gone: killed or crashed
    ELSEWHERE = "unknown"  # not finished, run on another host: cannot tell from here


@dataclass(frozen=True, slots=True)
class StatusReport:
    journal: Path
    destination: str | None
    schema: str | None
    read_at: float
    sessions: list[SessionRecord]
    session: SessionRecord | None  # the one reported on: the latest, or --session
    state: SessionState | None
    overview: Overview
    elapsed: float  # seconds from the session's start to its end, or to now if running
    window: float  # the seconds the recent rate is over
    recent_rate: float | None  # files stored per second over the last RECENT_SECONDS
    session_rate: float | None  # over the whole session
    eta: float | None  # seconds to store what is pending or in flight, at the recent rate

    @property
    def remaining(self) -> int:
        """The session's files not sent yet: pending or in flight."""
        return sum(self.overview.states[s].session_files for s in _REMAINING)

    @property
    def remaining_bytes(self) -> int:
        return sum(self.overview.states[s].session_bytes for s in _REMAINING)

    def as_dict(self) -> dict[str, Any]:
        """The JSON document of `status --json` (its schema: status.schema.json)."""
        overview = self.overview

        def counts(session: bool) -> dict[str, int]:
            values = {
                s.value: overview.states[s.value].session_files
                if session
                else overview.states[s.value].files
                for s in _ORDER
            }
            return {**values, "total": sum(values.values())}

        session = None
        if self.session is not None and self.state is not None:
            session = {
                "session_id": self.session.session_id,
                "state": self.state.value,
                "started_at": _iso(self.session.started_at),
                "finished_at": (
                    None if self.session.finished_at is None else _iso(self.session.finished_at)
                ),
                "elapsed_seconds": round(self.elapsed, 3),
                "exit_code": self.session.exit_code,
                "pid": self.session.pid,
                "host": self.session.host,
            }
        return {
            "journal": str(self.journal),
            "destination": self.destination,
            "schema": self.schema,
            "read_at": _iso(self.read_at),
            "session_count": len(self.sessions),
            "session": session,
            "counts": counts(session=False),
            "session_counts": counts(session=True),
            "held": {"files": overview.held_files, "bytes": overview.held_bytes},
            "remaining": {"files": self.remaining, "bytes": self.remaining_bytes},
            "rate": {
                "window_seconds": round(self.window, 3),
                "recent_files_per_second": _rounded(self.recent_rate),
                "session_files_per_second": _rounded(self.session_rate),
            },
            "eta_seconds": _rounded(self.eta),
            "failures": {
                "files": overview.states[State.FAILED.value].files,
                "reasons": overview.failure_reason_count,
                "by_reason": [
                    {
                        "reason": r.reason,
                        "status": None if r.status is None else f"0x{r.status:04X}",
                        "files": r.files,
                        "example": r.example,
                    }
                    for r in overview.failure_reasons
                ],
            },
            "studies": {
                "count": overview.study_count,
                "complete": overview.complete_studies,
                "listed": [_study(s) for s in overview.studies],
                "without_study_uid": (
                    None if overview.no_study is None else _study(overview.no_study, uid=False)
                ),
            },
        }


def read_status(
    journal: Path,
    session_id: str | None = None,
    studies: int | None = 20,
    destination: str | None = None,
) -> StatusReport:
    """What the inventory at ``journal`` says of the migration and of one session.

    ``session_id``: the session to report on (default: the latest one);
    ``studies``: how many studies to list (None: all); ``destination``
    ('AE@host:port'), if given, must be the one the journal records. Raises
    JournalError for a missing or unusable file, UnknownSession for a
    ``session_id`` it does not record.
    """
    if not journal.exists():
        raise JournalError(
            f"no journal at {journal}: no `fastsend send` to this destination has written one"
            " there; run `fastsend send` first (with the same -a/-H/-p and --log-dir), or give"
            " --journal the file a send wrote (fastsend_journal_<AE>_<host>_<port>.sqlite in"
            " its --log-dir)"
        )
    if journal.is_dir():
        raise JournalError(f"{journal} is a directory; --journal takes the journal file")
    report = read_consistently(journal, lambda reader: _read(reader, journal, session_id, studies))
    if destination is not None and report.destination not in (None, destination):
        raise JournalError(
            f"the journal {journal} records the migration to {report.destination}, not to"
            f" {destination}; leave --journal out to read {destination}'s own journal in"
            " --log-dir, or -a/-H/-p out to read this one"
        )
    return report


def _read(
    reader: InventoryReader, journal: Path, session_id: str | None, studies: int | None
) -> StatusReport:
    sessions = reader.sessions()
    session = _choose(sessions, session_id)
    now = time.time()
    state = None if session is None else _state(session)
    if session is not None and session.finished_at is not None:
        end = session.finished_at
    else:
        end = now  # running, or crashed (then see below)
    overview = reader.overview(
        "" if session is None else session.session_id, end - RECENT_SECONDS, studies, REASONS_LISTED
    )
    elapsed = window = 0.0
    recent_rate = session_rate = eta = None
    if session is not None:
        stored = sum(overview.states[s].session_files for s in _HELD)
        recent = sum(overview.states[s].session_recent for s in _HELD)
        if state is SessionState.CRASHED:
            # Its last sign of life was its last write.
            end = max(session.started_at, overview.session_last_at or session.started_at)
            recent = reader.written_since(session.session_id, end - RECENT_SECONDS)
        elapsed = max(0.0, end - session.started_at)
        window = min(RECENT_SECONDS, elapsed)
        if elapsed > 0:
            session_rate = stored / elapsed
            recent_rate = recent / window
        remaining = sum(overview.states[s].session_files for s in _REMAINING)
        if state in (SessionState.RUNNING, SessionState.ELSEWHERE) and recent_rate:
            eta = remaining / recent_rate
    return StatusReport(
        journal=journal,
        destination=reader.destination,
        schema=reader.schema,
        read_at=now,
        sessions=sessions,
        session=session,
        state=state,
        overview=overview,
        elapsed=elapsed,
        window=window,
        recent_rate=recent_rate,
        session_rate=session_rate,
        eta=eta,
    )


def _choose(sessions: list[SessionRecord], session_id: str | None) -> SessionRecord | None:
    if session_id is None:
        return sessions[-1] if sessions else None
    for session in sessions:
        if session.session_id == session_id:
            return session
    known = ", ".join(s.session_id for s in sessions[-5:]) or "none"
    raise UnknownSession(
        f"the journal records no session {session_id}; its latest sessions: {known}"
        " (leave --session out for the latest)"
    )


def _state(session: SessionRecord) -> SessionState:
    if session.finished_at is not None:
        return SessionState.FINISHED
    if session.host != socket.gethostname():
        return SessionState.ELSEWHERE
    return SessionState.RUNNING if _alive(session.pid, session.started_at) else SessionState.CRASHED


def _alive(pid: int, started_at: float) -> bool:
    """Whether the process that began a session at ``started_at`` still runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, and is another user's
    started = _process_start(pid)
    return started is None or started <= started_at + _PID_REUSE_SLACK


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), where /proc tells (Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    # proc(5): field 22 is the start time in clock ticks after boot; the
    # command name (field 2, in parentheses) may itself hold spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _study(study: StudyTally, uid: bool = True) -> dict[str, Any]:
    counts = {
        "files": study.files,
        "stored": study.stored,
        "failed": study.failed,
        "skipped": study.skipped,
        "remaining": study.remaining,
    }
    return {"study_instance_uid": study.study_instance_uid, **counts} if uid else counts


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds")


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# ------------------------------------------------------------ for people


def _local(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _files(count: int) -> str:
    return _plural(count, "file")


def _size(count: int) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count / 1e3:.1f} kB"


_EXIT_MEANINGS = {
    ExitStatus.OK: "every file stored or skipped",
    ExitStatus.FAILED: "some files failed",
    ExitStatus.NO_ASSOCIATION: "could not start",
    ExitStatus.NOTHING_TO_SEND: "nothing to send",
    ExitStatus.INTERRUPTED: "interrupted",
}


def _session_line(report: StatusReport) -> str:
    session, state = report.session, report.state
    if session is None or state is None:
        return "session      none recorded (the rows come from a journal of an earlier version)"
    where = f"pid {session.pid} on {session.host}"
    if state is SessionState.FINISHED:
        code = session.exit_code
        meaning = next((m for c, m in _EXIT_MEANINGS.items() if c == code), None)
        how = f"finished {_local(session.finished_at or 0.0)} after {_duration(report.elapsed)}"
        how += f", exit {code}" + (f" ({meaning})" if meaning else "")
    elif state is SessionState.RUNNING:
        how = f"running ({where}) for {_duration(report.elapsed)}"
    elif state is SessionState.CRASHED:
        how = (
            f"interrupted or crashed: not finished, and {where} is gone (last write"
            f" {_local(session.started_at + report.elapsed)}); run the same send again to"
            " finish it"
        )
    else:
        how = (
            f"not finished; it runs on {session.host} (pid {session.pid}), or crashed there:"
            " this host cannot tell"
        )
    earlier = len(report.sessions) - 1
    return f"session      {session.session_id}, started {_local(session.started_at)}: {how}" + (
        f"\n             ({earlier} earlier session{'s' * (earlier != 1)})" if earlier else ""
    )


def format_status(report: StatusReport) -> str:
    overview = report.overview
    lines = [
        f"journal      {report.journal}",
        f"destination  {report.destination or '(not recorded)'}",
        _session_line(report),
        "",
        f"{'files':<12}{'all sessions':>14}{'this session':>14}",
    ]
    total = session_total = 0
    for state in _ORDER:
        tally = overview.states[state.value]
        total += tally.files
        session_total += tally.session_files
        name = state.value.replace("_", " ")
        lines.append(f"  {name:<10}{tally.files:>14,}{tally.session_files:>14,}")
    lines.append(f"  {'total':<10}{total:>14,}{session_total:>14,}")
    lines.append(
        f"held by the destination: {_files(overview.held_files)}, {_size(overview.held_bytes)}"
    )
    running = report.state in (SessionState.RUNNING, SessionState.ELSEWHERE)
    if running or report.remaining:
        lines.append(f"left to send: {_files(report.remaining)}, {_size(report.remaining_bytes)}")
    if report.session_rate is not None:
        rate = f"rate: {report.session_rate:,.1f} files/s over the session"
        if report.recent_rate is not None and report.window >= RECENT_SECONDS:
            rate += f", {report.recent_rate:,.1f} over its last {RECENT_SECONDS:.0f} s"
        lines.append(rate)
    if running:
        if report.eta is not None:
            lines.append(
                f"ETA: {_duration(report.eta)} for the {_files(report.remaining)} found so far"
                f" (at {report.recent_rate or 0:,.1f} files/s)"
            )
        else:
            lines.append(f"ETA: unknown (no file stored in the last {RECENT_SECONDS:.0f} s)")
    failed = overview.states[State.FAILED.value].files
    if failed:
        reasons = overview.failure_reason_count
        lines += ["", f"failed, by reason ({_files(failed)}, {_plural(reasons, 'reason')}):"]
        for r in overview.failure_reasons:
            lines.append(f"  {r.files:>9,}  {r.reason}  (e.g. {r.example})")
        if reasons > len(overview.failure_reasons):
            rest = failed - sum(r.files for r in overview.failure_reasons)
            others = _plural(reasons - len(overview.failure_reasons), "other reason")
            lines.append(
                f"  {rest:>9,}  ... {others} (the failures CSV of each session lists every file)"
            )
    lines += ["", _studies_heading(report)]
    if overview.studies or overview.no_study:
        lines.append(f"  {'files':>9}{'stored':>9}{'failed':>9}{'skipped':>9}{'left':>9}  study")
        rows = [(s, s.study_instance_uid) for s in overview.studies]
        if overview.no_study is not None:
            rows.append(
                (
                    overview.no_study,
                    "(no study UID: not read yet, not DICOM, unreadable, duplicate)",
                )
            )
        for study, name in rows:
            lines.append(
                f"  {study.files:>9,}{study.stored:>9,}{study.failed:>9,}{study.skipped:>9,}"
                f"{study.remaining:>9,}  {name}"
            )
    return "\n".join(lines)


def _studies_heading(report: StatusReport) -> str:
    overview = report.overview
    count, complete = overview.study_count, overview.complete_studies
    heading = f"studies: {count:,}"
    if overview.no_study is not None and overview.no_study.remaining:
        # Pending files are read (and their study known) only when sent.
        heading += " so far"
    heading += ", all complete" if count and complete == count else f", {complete:,} complete"
    listed = len(overview.studies)
    if not listed:
        return heading
    if complete == count:
        return heading + (f"; {listed:,} of them:" if listed < count else ":")
    if listed < count:
        return heading + f"; the {listed:,} with the most files not stored:"
    return heading + ", most files not stored first:"
