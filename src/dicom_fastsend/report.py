"""What the user sees and keeps: console lines, progress bar, session log, JSON summary."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from .config import SendConfig
from .engine.results import FAILURE_COLUMNS, FileResult, Outcome, SendSummary
from .engine.worker import INTERRUPTED_REASON, NO_ASSOCIATION_PREFIX
from .protocol.uids import uid_name

SUMMARY_SCHEMA = Path(__file__).with_name("summary.schema.json")


def _timestamp(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds")


class ConsoleReporter:
    """Prints failures, warnings and skips as they happen; every file with ``verbose``."""

    def __init__(
        self, verbose: bool, progress: ProgressBar | None = None, stream: TextIO = sys.stderr
    ) -> None:
        self.verbose = verbose
        self.progress = progress
        self.stream = stream

    def _print(self, line: str) -> None:
        if self.progress is not None and self.progress.bar is not None:
            self.progress.bar.write(line, file=self.stream)  # keeps the bar intact
        else:
            print(line, file=self.stream)

    def __call__(self, result: FileResult) -> None:
        if result.outcome is Outcome.STORED:
            if self.verbose:
                self._print(
                    f"stored {result.path} ({result.sop_instance_uid}) "
                    f"in {result.seconds * 1000:.1f} ms"
                )
        elif result.outcome is Outcome.WARNING:
            self._print(f"WARNING {result.path}: {result.reason}")
        elif result.outcome is Outcome.SKIPPED:
            if self.verbose or result.reason != INTERRUPTED_REASON:
                self._print(f"SKIPPED {result.path}: {result.reason}")
        elif self.verbose or not result.reason.startswith(NO_ASSOCIATION_PREFIX):
            self._print(f"FAILED {result.path}: {result.reason}")


class ProgressBar:
    """Files, bytes, rate and ETA on stderr; silent when stderr is not a terminal."""

    def __init__(self, enabled: bool, stream: TextIO = sys.stderr) -> None:
        self.enabled = enabled and stream.isatty()
        self.stream = stream
        self.bar: Any = None
        self._bytes = 0
        # Files done and not yet shown: the bar is redrawn at most every
        # REDRAW_SECONDS, not once per file (its rate and postfix cost more
        # than the coordinator's own work for a small file).
        self._unshown = 0
        self._shown = 0.0

    def grow(self, files: int) -> None:
        """More files found: the walk runs while files are sent, so the total grows."""
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            # No monitor thread: the coordinator forks workers and must have no threads.
            tqdm.monitor_interval = 0
            # mininterval=0: when to redraw is decided here (REDRAW_SECONDS),
            # and tqdm's own 0.1 s gate on another clock would skip some.
            self.bar = tqdm(
                total=0,
                unit="file",
                file=self.stream,
                dynamic_ncols=True,
                smoothing=0.1,
                mininterval=0,
                miniters=1,
            )
        self.bar.total += files

    def advance(self, files: int) -> None:
        """Files done without a result each (skipped as already stored)."""
        if self.bar is not None:
            self._unshown += files
            self._redraw_if_due()

    REDRAW_SECONDS = 0.1

    def update(self, result: FileResult) -> None:
        if self.bar is None:
            return
        self._bytes += result.bytes_sent
        self._unshown += 1
        self._redraw_if_due()

    def _redraw_if_due(self) -> None:
        now = time.monotonic()
        if now - self._shown >= self.REDRAW_SECONDS:
            self._shown = now
            self._show()

    def _show(self) -> None:
        elapsed = max(self.bar.format_dict["elapsed"], 1e-9)
        megabytes = self._bytes / 1e6
        self.bar.set_postfix_str(
            f"{megabytes:.0f} MB, {megabytes / elapsed:.1f} MB/s", refresh=False
        )
        self.bar.update(self._unshown)
        self._unshown = 0

    def close(self) -> None:
        if self.bar is not None:
            if self._unshown:
                self._show()
            self.bar.close()


# A line's level as written, padded to the longest ("WARNING").
_LEVELS = {level: f"{level.upper():<7}" for level in ("info", "warning", "error")}


class SessionLog:
    """``fastsend_<session>.log``: timestamped, levelled lines.

    Block-buffered (a line per file would be a write per file) and flushed
    at least every half second, and at once for warnings and errors, so a
    crash loses at most half a second of routine lines.
    """

    FLUSH_INTERVAL = 0.5

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file: TextIO | None = None
        self._flushed = time.monotonic()
        # The timestamp of the last line, and its millisecond: lines come in
        # bursts of many a millisecond (a line per file), and formatting a
        # datetime costs more than the rest of the line.
        self._millisecond = -1
        self._stamp = ""
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")

    def write(self, level: str, message: str) -> None:
        if self._file is None:
            return
        millisecond = time.time_ns() // 1_000_000
        if millisecond != self._millisecond:
            self._millisecond = millisecond
            self._stamp = _timestamp(millisecond / 1000)
        self._file.write(f"{self._stamp} {_LEVELS.get(level) or f'{level.upper():<7}'} {message}\n")
        now = time.monotonic()
        if level != "info" or now - self._flushed >= self.FLUSH_INTERVAL:
            self._file.flush()
            self._flushed = now

    def result(self, result: FileResult) -> None:
        if result.outcome is Outcome.STORED:
            self.write(
                "info",
                f"stored {result.path} {result.sop_instance_uid} {result.bytes_sent} bytes "
                f"{result.seconds * 1000:.1f} ms worker {result.worker}",
            )
        elif result.outcome is Outcome.WARNING:
            self.write("warning", f"{result.path}: {result.reason}")
        elif result.outcome is Outcome.SKIPPED:
            self.write("info", f"skipped {result.path}: {result.reason}")
        else:
            self.write("error", f"failed {result.path}: {result.reason}")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _status(status: int | None) -> str | None:
    return None if status is None else f"0x{status:04X}"


def summary_dict(summary: SendSummary, config: SendConfig, hot_path: str) -> dict[str, Any]:
    """The JSON summary (its schema: summary.schema.json beside this module)."""
    peer = config.peer
    found = summary.found
    stored = summary.count(Outcome.STORED)
    warned = summary.count(Outcome.WARNING)
    elapsed = summary.elapsed
    return {
        "session_id": summary.session_id,
        "tool": {"name": "fastsend", "version": __version__, "hot_path": hot_path},
        "started_at": _timestamp(summary.started),
        "finished_at": _timestamp(summary.finished),
        "duration_seconds": round(elapsed, 6),
        "configuration": {
            "host": peer.host,
            "port": peer.port,
            "called_ae_title": peer.called_ae_title,
            "calling_ae_title": peer.calling_ae_title,
            "inputs": [str(p) for p in config.inputs],
            "recursive": config.recursive,
            "processes": config.processes,
            "max_rate_mb_s": config.max_rate_mb_s,
            "connect_timeout": peer.connect_timeout,
            "acse_timeout": peer.acse_timeout,
            "dimse_timeout": peer.dimse_timeout,
            "max_pdu_length": peer.max_pdu_length,
            "log_dir": None if config.log_dir is None else str(config.log_dir),
            "resume": config.resume,
            "tls": peer.tls is not None,
            "user": None if peer.user is None else peer.user.username,
            "retries": config.retries,
            "cluster": config.cluster,
            "coerce": None if config.coerce is None else config.coerce.source,
            "order": config.order,
            "priority_list_entries": len(config.priority_list),
            "schedule": config.schedule,
        },
        "counts": {
            "found": found,
            "stored": stored,
            "warning": warned,
            "failed": summary.count(Outcome.FAILED),
            "skipped": summary.count(Outcome.SKIPPED),
            "already_stored": summary.already_stored,
            "coerced": summary.coerced,
        },
        "bytes_sent": summary.bytes_sent,
        "throughput": {
            "files_per_second": round((stored + warned) / elapsed, 3),
            "megabytes_per_second": round(summary.bytes_sent / 1e6 / elapsed, 3),
        },
        "latency_ms": {k: round(v, 3) for k, v in summary.latency_ms().items()},
        "associations": {
            "opened": summary.associations_opened,
            "rejected": summary.associations_rejected,
            "failed": summary.associations_failed,
            "aborted": summary.associations_aborted,
            "errors": list(dict.fromkeys(summary.association_errors)),
        },
        "sop_classes_sent": dict(summary.sop_classes_sent),
        "retries": summary.retries,
        "journal": None if config.journal is None else str(config.journal),
        "audit_report": None
        if summary.audit_report is None
        else {
            "html": str(summary.audit_report),
            "written_by_session": summary.audit_unchanged_since or summary.session_id,
        },
        "interrupted": summary.interrupted,
        "exit_code": summary.exit_code,
        "error": summary.error or None,
        "nothing_to_send": summary.nothing_to_send or None,
        "unsearched_directories": [
            {"path": u.path, "subdirectories": u.count, "linked": u.linked}
            for u in summary.unsearched
        ],
        "cluster": summary.cluster,
        "commitment": _commitment(summary),
        "pauses": [
            {
                "reason": p.why,
                "paused_at": p.paused_at.isoformat(timespec="seconds"),
                "resumed_at": None
                if p.resumed_at is None
                else p.resumed_at.isoformat(timespec="seconds"),
                "seconds": None if p.seconds is None else round(p.seconds, 3),
            }
            for p in summary.pauses
        ],
        "events": summary.events,
        "workers": [
            {
                "worker": w.worker,
                "pid": w.pid,
                "files": w.files,
                "bytes_sent": w.bytes_sent,
                "cpu_user_seconds": round(w.cpu_user_seconds, 3),
                "cpu_system_seconds": round(w.cpu_system_seconds, 3),
                "peak_rss_bytes": w.peak_rss_bytes,
                "associations_opened": w.associations_opened,
                "exit": w.exit,
                "host": w.host,
            }
            for w in summary.workers
        ],
        "warnings": [
            {
                "path": r.path,
                "sop_instance_uid": r.sop_instance_uid,
                "status": _status(r.status),
                "reason": r.reason,
            }
            for r in summary.noted
            if r.outcome is Outcome.WARNING
        ],
        "failures": [
            {
                "path": r.path,
                "sop_instance_uid": r.sop_instance_uid,
                "sop_class_uid": r.sop_class_uid,
                "status": _status(r.status),
                "reason": r.reason,
                "attempts": r.attempts,
            }
            for r in summary.noted
            if r.outcome is Outcome.FAILED
        ],
        "skipped": [
            {"path": r.path, "reason": r.reason}
            for r in summary.noted
            if r.outcome is Outcome.SKIPPED
        ],
    }


def _commitment(summary: SendSummary) -> dict[str, Any] | None:
    counts = summary.commitment
    if counts is None:
        return None
    return {
        "requested": counts.requested,
        "committed": counts.committed,
        "commit_failed": counts.commit_failed,
        "uncommitted": counts.uncommitted,
        "transactions": counts.transactions,
        "problems": list(counts.problems),
    }


def write_failures(path: Path, summary: SendSummary) -> None:
    """``fastsend_failures_<session>.csv``: every failed file; `send --input-list` takes it back."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(FAILURE_COLUMNS)
        for r in summary.noted:
            if r.outcome is Outcome.FAILED:
                writer.writerow((r.path, r.sop_instance_uid, _status(r.status) or "", r.reason,
                                 r.attempts))  # fmt: skip


def read_input_list(path: Path) -> list[Path]:
    """Paths from a list: one per line, or the `path` column of a failures CSV."""
    import csv

    lines = path.read_text(encoding="utf-8").splitlines()
    if lines and lines[0].split(",")[0].strip() == "path":
        return [Path(row["path"]) for row in csv.DictReader(lines) if row.get("path")]
    return [Path(line.strip()) for line in lines if line.strip() and not line.startswith("#")]


def write_summary(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.part")
    temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)


def summarize(summary: SendSummary, stream: TextIO = sys.stderr) -> None:
    if summary.error:
        print(f"ERROR {summary.error}", file=stream)
    if summary.nothing_to_send:
        print(f"ERROR {summary.nothing_to_send}", file=stream)
    elif summary.unsearched:
        for note in summary.unsearched:
            print(f"WARNING {note.hint}", file=stream)
    for message in dict.fromkeys(summary.association_errors):
        print(f"ERROR {message}", file=stream)
    for problem in summary.problems:
        print(f"ERROR {problem}", file=stream)
    elapsed = summary.elapsed
    sent = summary.bytes_sent
    stored = summary.count(Outcome.STORED)
    warned = summary.count(Outcome.WARNING)
    print(
        f"{summary.found} files: {stored} stored, {warned} stored with warning, "
        f"{summary.count(Outcome.FAILED)} failed, {summary.count(Outcome.SKIPPED)} skipped"
        + (f" ({summary.already_stored} already stored)" if summary.already_stored else "")
        + (f", {summary.coerced} coerced" if summary.coerced else "")
        + f"; {sent / 1e6:.1f} MB in {elapsed:.2f} s "
        f"({(stored + warned) / elapsed:.1f} files/s, {sent / 1e6 / elapsed:.1f} MB/s); "
        f"associations: {summary.associations_opened} opened, "
        f"{summary.associations_failed} failed, {summary.associations_aborted} aborted",
        file=stream,
    )
    classes = summary.sop_classes_sent
    if classes:
        listed = ", ".join(f"{uid_name(uid)} {count}" for uid, count in classes.most_common())
        print(f"SOP classes sent: {listed}", file=stream)
    commitment = summary.commitment
    if commitment is not None:
        for problem in commitment.problems:
            print(f"ERROR {problem}", file=stream)
        print(
            f"Storage Commitment of {commitment.requested} instance(s): "
            f"{commitment.committed} committed, {commitment.commit_failed} commit failed, "
            f"{commitment.uncommitted} uncommitted"
            + (
                " (commit failed: the journal no longer counts them as stored; run the same "
                "send again to resend them)"
                if commitment.commit_failed
                else ""
            ),
            file=stream,
        )
    if summary.interrupted:
        print("interrupted: rerun to send the files that were not sent", file=stream)
