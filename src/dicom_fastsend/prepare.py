"""What a run will send: the one preparation step that `send` and `scan` share.

Walk the inputs, read each file's header, drop duplicate SOP Instance UIDs,
and skip what the journal says the destination already holds. `scan` runs
exactly this and stops, so it predicts what `send` does: the same files
found, instances to send, duplicates, already stored, unreadable and not
DICOM. Every file that will not be sent is handed to ``report`` with its
outcome and reason; nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from .config import SendConfig
from .discover import MissingInput, UnsearchedSubdirectories, discover
from .header import FileInfo, HeaderError, read_header
from .journal import StoredEntry, file_unchanged
from .results import FileResult, Outcome


class Cause(Enum):
    """Why preparation decided a file's outcome before any sending."""

    MISSING = "missing"  # an input that does not exist or cannot be listed: failed
    UNREADABLE = "unreadable"  # truncated, damaged, cannot be opened: failed
    NOT_DICOM = "not DICOM"  # or a DICOMDIR: skipped
    DUPLICATE = "duplicate"  # another file has its SOP Instance UID: skipped
    ALREADY_STORED = "already stored"  # the journal says the destination holds it: skipped


# A file that will not be sent: its result, its header when read, and why.
Reporter = Callable[[FileResult, FileInfo | None, Cause], None]


@dataclass(slots=True)
class Preparation:
    """The files to send, and how many of the others fell in each category."""

    to_send: list[FileInfo] = field(default_factory=list)
    found: int = 0  # every file and missing input, each ends in exactly one outcome
    failed: int = 0  # unreadable, truncated, or an input that does not exist
    not_dicom: int = 0  # skipped while indexing: not DICOM, DICOMDIR
    duplicates: int = 0
    already_stored: int = 0
    unsearched: list[UnsearchedSubdirectories] = field(default_factory=list)
    interrupted: bool = False  # stopped during the walk; to_send holds what was read

    @property
    def instances(self) -> int:
        """DICOM instances found: to send, duplicates and already stored."""
        return len(self.to_send) + self.duplicates + self.already_stored

    @property
    def nothing_to_send(self) -> str:
        """Why the inputs hold nothing to send, or '' when they do (or something failed).

        A run that found no DICOM instance at all is not a success: the user
        may have forgotten ``-r`` or named the wrong folder, and would believe
        the migration done (issue 13). A failure already says so by itself.
        """
        if self.instances or self.failed or self.interrupted:
            return ""
        if self.found:
            plural = "" if self.found == 1 else "s"
            why = [f"none of the {self.found} file{plural} found is DICOM"]
        else:
            why = ["no files found in the inputs"]
        why += [note.hint for note in self.unsearched]
        return "nothing to send: " + "; ".join(why)


def prepare(
    config: SendConfig,
    report: Reporter,
    stored: Mapping[str, StoredEntry] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Preparation:
    """Index the inputs and decide, file by file, what a send does with them.

    ``stored`` is what the journal says the destination holds (None: do not
    resume). ``should_stop`` is asked between files, so Ctrl-C works during a
    long walk.
    """
    prepared = Preparation()
    infos: list[FileInfo] = []
    for item in discover(config.inputs, config.recursive):
        if should_stop():
            prepared.interrupted = True
            break
        if isinstance(item, UnsearchedSubdirectories):
            prepared.unsearched.append(item)
            continue
        prepared.found += 1
        if isinstance(item, MissingInput):
            prepared.failed += 1
            report(FileResult(item.path, Outcome.FAILED, item.reason), None, Cause.MISSING)
            continue
        try:
            infos.append(read_header(item))
        except HeaderError as exc:
            if exc.kind == "unreadable":
                prepared.failed += 1
                report(FileResult(item, Outcome.FAILED, exc.reason), None, Cause.UNREADABLE)
            else:
                prepared.not_dicom += 1
                report(FileResult(item, Outcome.SKIPPED, exc.reason), None, Cause.NOT_DICOM)
    if prepared.interrupted:
        prepared.to_send = infos
        return prepared
    infos = _skip_duplicates(infos, report, prepared)
    if stored:
        infos = _skip_stored(infos, stored, report, prepared)
    prepared.to_send = infos
    return prepared


def _skip_duplicates(
    infos: list[FileInfo], report: Reporter, prepared: Preparation
) -> list[FileInfo]:
    """Two files with one SOP Instance UID: the first (by path) is sent, once."""
    first: dict[str, str] = {}
    unique: list[FileInfo] = []
    for info in sorted(infos, key=lambda i: i.path):
        original = first.setdefault(info.sop_instance_uid, info.path)
        if original == info.path:
            unique.append(info)
            continue
        prepared.duplicates += 1
        reason = (
            f"duplicate SOP Instance UID {info.sop_instance_uid}: {original} has the "
            "same one and is sent instead"
        )
        report(FileResult.of(info, Outcome.SKIPPED, reason), info, Cause.DUPLICATE)
    return unique


def _skip_stored(
    infos: list[FileInfo],
    stored: Mapping[str, StoredEntry],
    report: Reporter,
    prepared: Preparation,
) -> list[FileInfo]:
    """Skip what the journal says this destination already holds, unless changed."""
    pending: list[FileInfo] = []
    for info in infos:
        entry = stored.get(info.path)
        if entry is None or not file_unchanged(entry, info.size, info.mtime):
            pending.append(info)
            continue
        prepared.already_stored += 1
        reason = f"already stored (journal, session {entry.session_id})"
        report(FileResult.of(info, Outcome.SKIPPED, reason), info, Cause.ALREADY_STORED)
    return pending
