"""The "nothing lost" invariant on a `fastsend send` run's JSON summary and session log.

README: every input ends as exactly one of stored, stored with a warning,
failed (with its reason and DICOM status) or skipped, and the counts add up
to the files found. The summary lists warnings, failures and skipped files
by path; stored files are not listed, so they are derived (inputs minus the
listed ones) and checked against ``counts.stored`` and against the session
log's "stored <path>" lines.

Files a rerun skips as already stored (the journal says the destination
holds them, unchanged) are only counted (``counts.already_stored``, part of
``counts.skipped``), never listed: the run's journal says which they are
(``journal_already_stored``), and the session log has one line per directory.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema

from dicom_fastsend.report import SUMMARY_SCHEMA

_STATUS = re.compile(r"^0x[0-9A-F]{4}$")
# A reason that starts with a DICOM status, as the sender writes them: "0xA700 Refused: ...".
_LEADING_STATUS = re.compile(r"^0x([0-9A-Fa-f]{4})\b")
# Session log lines: "<ISO timestamp> <LEVEL padded> <message>".
_LOG_LINE = re.compile(r"^\S+ +[A-Z]+ +(?P<message>.*)$")
# The coordinator's line per directory of files skipped as already stored.
_ALREADY_STORED = re.compile(r"^skipped (\d+) file\(s\) in .*: already stored \(journal\)$")


def load_summary(log_dir: Path) -> dict[str, Any]:
    """The one fastsend_summary_*.json under ``log_dir``."""
    paths = sorted(log_dir.glob("fastsend_summary_*.json"))
    assert len(paths) == 1, f"expected one summary in {log_dir}, found {paths}"
    summary: dict[str, Any] = json.loads(paths[0].read_text(encoding="utf-8"))
    return summary


def session_log(summary: dict[str, Any], log_dir: Path | None = None) -> Path:
    """fastsend_<session>.log beside the summary (``configuration.log_dir`` by default)."""
    directory = log_dir or Path(summary["configuration"]["log_dir"])
    return directory / f"fastsend_{summary['session_id']}.log"


def log_messages(path: Path) -> list[str]:
    """The message part of every line of a session log."""
    messages = []
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _LOG_LINE.match(line)
        assert match is not None, f"{path}: line not in '<time> <LEVEL> <message>' form: {line!r}"
        messages.append(match["message"])
    return messages


def log_says(log_dir: Path, words: str) -> bool:
    """Whether a session log under ``log_dir`` has `words` yet, also while the run goes on.

    Warnings are flushed as they are written (report.SessionLog), so a test
    can wait for one, e.g. the coordinator's "interrupted (Ctrl-C)".
    """
    return any(words in path.read_text(errors="replace") for path in log_dir.glob("fastsend_*.log"))


def stored_paths(summary: dict[str, Any], inputs: Iterable[str | os.PathLike[str]]) -> set[str]:
    """Inputs that the summary does not list as warned, failed or skipped."""
    listed = {e["path"] for key in ("warnings", "failures", "skipped") for e in summary[key]}
    return {os.fspath(p) for p in inputs} - listed


def journal_already_stored(
    summary: dict[str, Any], journal: str | os.PathLike[str] | None = None
) -> set[str]:
    """The files the run skipped as already stored, read from its journal.

    Rows the destination holds that this session did not touch: a file the
    walk met and sent, failed, skipped or only marked pending carries this
    session's id. Meaningful for a run that walked all of its inputs.
    ``journal``: where it is now, if not at the summary's ``journal`` path.
    """
    journal = journal or summary["journal"]
    assert journal, "the run had no --journal to read"
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT dir, name FROM files WHERE held_size IS NOT NULL AND session_id <> ?",
            (summary["session_id"],),
        ).fetchall()
    return {os.path.join(directory, name) for directory, name in rows}


def assert_nothing_lost(
    summary: dict[str, Any],
    inputs: set[str] | list[str] | Iterable[str | os.PathLike[str]],
    log_dir: Path | None = None,
    already_stored: Iterable[str | os.PathLike[str]] = (),
) -> set[str]:
    """Assert the invariant; return the paths that were stored (without a warning).

    ``inputs`` are the files the run was given, spelled as fastsend spells
    them (the paths its directory walk produces: os.path.join of the input
    directory and the names below it). ``already_stored``: those the run
    skipped as already stored (see ``journal_already_stored``); only counted
    in the summary, so the test has to say which they are.
    """
    expected = [os.fspath(p) for p in inputs]
    assert len(set(expected)) == len(expected), "the inputs themselves hold duplicates"
    paths = set(expected)
    held = {os.fspath(p) for p in already_stored} & paths
    jsonschema.validate(summary, json.loads(SUMMARY_SCHEMA.read_text(encoding="utf-8")))

    counts = summary["counts"]
    parts = ("stored", "warning", "failed", "skipped")
    assert counts["found"] == sum(counts[k] for k in parts), counts
    assert counts["found"] == len(paths), f"found {counts['found']}, {len(paths)} inputs"
    assert counts["already_stored"] == len(held), (
        f"counts.already_stored = {counts['already_stored']}, but the journal says "
        f"{len(held)} of the inputs were held unchanged and left alone"
    )

    # Exactly one outcome per input: no path listed twice, within or across lists.
    listed: Counter[str] = Counter()
    for key, count_key in (("warnings", "warning"), ("failures", "failed"), ("skipped", "skipped")):
        entries = summary[key]
        unlisted = counts["already_stored"] if key == "skipped" else 0
        assert len(entries) == counts[count_key] - unlisted, (
            f"{len(entries)} {key} listed, counts.{count_key} = {counts[count_key]}"
            + (f", of which {unlisted} already stored (not listed)" if unlisted else "")
        )
        listed.update(e["path"] for e in entries)
        for entry in entries:
            assert entry["reason"].strip(), f"{key}: {entry['path']} has an empty reason"
    twice = sorted(p for p, n in listed.items() if n > 1)
    assert not twice, f"listed with more than one outcome: {twice}"
    unknown = sorted(set(listed) - paths)
    assert not unknown, f"the summary lists files that were not inputs: {unknown}"
    both = sorted(held & set(listed))
    assert not both, f"already stored, yet listed with an outcome of this run: {both}"

    stored = paths - set(listed) - held
    assert len(stored) == counts["stored"], (
        f"{len(stored)} inputs are not listed as warned, failed or skipped, "
        f"nor already stored, but counts.stored = {counts['stored']}"
    )

    # A failure that carries a DICOM status carries it as 0xHHHH, and a reason
    # that leads with a status (the peer answered) comes with that status.
    for entry in summary["failures"] + summary["warnings"]:
        status = entry["status"]
        if status is not None:
            assert _STATUS.match(status), f"{entry['path']}: status {status!r} is not 0xHHHH"
            assert status in entry["reason"], (
                f"{entry['path']}: status {status} not named in reason {entry['reason']!r}"
            )
        leading = _LEADING_STATUS.match(entry["reason"])
        if leading:
            assert status == f"0x{leading[1].upper()}", (
                f"{entry['path']}: reason {entry['reason']!r} but status {status!r}"
            )

    # The session log says the same: one "stored <path> ..." line per stored file
    # and one "failed <path>: <reason>" line per failed one.
    log = session_log(summary, log_dir)
    assert log.is_file(), f"no session log {log}"
    messages = log_messages(log)
    for path in sorted(stored):
        lines = [m for m in messages if m.startswith(f"stored {path} ")]
        assert len(lines) == 1, f"{log}: {len(lines)} 'stored {path}' lines, expected 1"
    for entry in summary["failures"]:
        line = f"failed {entry['path']}: {entry['reason']}"
        assert line in messages, f"{log}: no line {line!r}"
        stray = [m for m in messages if m.startswith(f"stored {entry['path']} ")]
        assert not stray, f"{log}: {entry['path']} failed, yet logged as {stray}"
    for path in sorted(held):
        stray = [m for m in messages if m.startswith(f"stored {path} ")]
        assert not stray, f"{log}: {path} was already stored, yet logged as {stray}"
    skipped_lines = sum(int(m[1]) for m in map(_ALREADY_STORED.match, messages) if m)
    assert skipped_lines == counts["already_stored"], (
        f"{log}: 'already stored' lines add up to {skipped_lines}, "
        f"counts.already_stored = {counts['already_stored']}"
    )
    return stored
