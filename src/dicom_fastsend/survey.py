"""`fastsend scan` (and `dicom_fastsend.scan`): what a send would do, without sending.

Named survey, not scan, so that importing it cannot replace the package's
`scan` function with this module (Python sets a loaded submodule as an
attribute of its package).
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import SendConfig, destination_key
from .engine.inventory import Inventory, JournalError, connect_read_only
from .engine.plan import BATCH_BYTES, BATCH_FILES
from .engine.prepare import Walker, admit
from .engine.results import Cause, ExitStatus, FileResult
from .io.coerce import CoercionPreview
from .io.discover import UnsearchedSubdirectories
from .io.header import FileInfo
from .protocol.contexts import plan_associations
from .protocol.uids import uid_name


@dataclass(slots=True)
class ScanReport:
    found: int = 0  # files (and missing inputs) found: what send's summary calls found
    files: int = 0  # DICOM instances that would be sent
    total_bytes: int = 0
    studies: int = 0
    sop_classes: Counter[str] = field(default_factory=Counter)
    transfer_syntaxes: Counter[str] = field(default_factory=Counter)
    associations_needed: int = 0  # planned associations (at most 128 contexts each)
    already_stored: int = 0  # skipped: the journal says the destination holds them
    journal: str | None = None  # the journal consulted, if any
    duplicates: list[FileResult] = field(default_factory=list)  # skipped: same SOP Instance UID
    unreadable: list[FileResult] = field(default_factory=list)  # would fail
    skipped: list[FileResult] = field(default_factory=list)  # not DICOM, DICOMDIR
    unsearched: list[UnsearchedSubdirectories] = field(default_factory=list)
    nothing_to_send: str = ""
    coercion: CoercionPreview | None = None  # --coerce: what would change

    @property
    def exit_code(self) -> int:
        """As send's: 1 when files would fail, 4 when there is nothing to send, else 0."""
        if self.unreadable:
            return ExitStatus.FAILED
        return ExitStatus.NOTHING_TO_SEND if self.nothing_to_send else ExitStatus.OK

    def as_dict(self) -> dict[str, Any]:
        def named(counter: Counter[str]) -> list[dict[str, Any]]:
            return [
                {"uid": uid, "name": uid_name(uid), "files": count}
                for uid, count in counter.most_common()
            ]

        def listed(results: list[FileResult]) -> list[dict[str, str]]:
            return [{"path": r.path, "reason": r.reason} for r in results]

        return {
            "found": self.found,
            "files": self.files,
            "total_bytes": self.total_bytes,
            "studies": self.studies,
            "sop_classes": named(self.sop_classes),
            "transfer_syntaxes": named(self.transfer_syntaxes),
            "associations_needed": self.associations_needed,
            "already_stored": self.already_stored,
            "journal": self.journal,
            "duplicates": listed(self.duplicates),
            "unreadable": listed(self.unreadable),
            "skipped": listed(self.skipped),
            "unsearched_directories": [
                {"path": u.path, "subdirectories": u.count, "linked": u.linked}
                for u in self.unsearched
            ],
            "nothing_to_send": self.nothing_to_send or None,
            "coercion": None if self.coercion is None else self.coercion.as_dict(),
        }


def scan(config: SendConfig) -> ScanReport:
    """What `send` with this configuration would do, by the same walk and admission.

    They run on a copy of the destination's journal (SQLite's online backup),
    consulted as send consults it (``config.resume``): the real one is only
    read, and one that does not exist is not created.
    """
    report = ScanReport()
    studies: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    if config.coerce is not None:
        report.coercion = CoercionPreview(config.coerce)

    def decided(result: FileResult, info: FileInfo | None, cause: Cause) -> None:
        bucket = {
            Cause.MISSING: report.unreadable,
            Cause.UNREADABLE: report.unreadable,
            Cause.NOT_DICOM: report.skipped,
            Cause.DUPLICATE: report.duplicates,
        }[cause]
        bucket.append(result)

    with tempfile.TemporaryDirectory(prefix="fastsend-scan-") as directory:
        scratch = Path(directory) / "inventory.sqlite"
        journal = config.journal
        if config.resume and journal is not None and journal.exists():
            _copy(journal, scratch)
            report.journal = str(journal)
        inventory = Inventory(
            scratch,
            destination_key(config.peer),
            "scan",
            shown_as=journal or scratch,
            rules=config.coerce.digest if config.coerce else "",
        )
        try:
            walker = Walker(config.inputs, config.recursive, inventory, config.resume, decided)
            while walker.step():
                pass
            while files := inventory.take_pending(BATCH_FILES, BATCH_BYTES):
                for info in admit(files, inventory, config.resume, decided):
                    report.files += 1
                    report.total_bytes += info.size
                    studies.add(info.study_instance_uid)
                    report.sop_classes[info.sop_class_uid] += 1
                    report.transfer_syntaxes[info.transfer_syntax_uid] += 1
                    pairs.add((info.sop_class_uid, info.transfer_syntax_uid))
                    if report.coercion is not None:
                        report.coercion.observe(
                            info.path, info.dataset_offset, info.transfer_syntax_uid
                        )
        finally:
            inventory.close()
    walk = walker.walk
    report.found = walk.found
    report.already_stored = walk.already_stored
    report.unsearched = walk.unsearched
    report.studies = len(studies)
    report.associations_needed = len(plan_associations(pairs, transcode=config.transcode))
    instances = report.files + report.already_stored + len(report.duplicates)
    if not instances and not report.unreadable:
        why = (
            [f"none of the {walk.found} file{'' if walk.found == 1 else 's'} found is DICOM"]
            if walk.found
            else ["no files found in the inputs"]
        )
        report.nothing_to_send = "nothing to send: " + "; ".join(
            why + [note.hint for note in walk.unsearched]
        )
    return report


def _copy(journal: Path, target: Path) -> None:
    """A consistent copy of a journal that a running send may be writing."""
    try:
        source = connect_read_only(journal)
        copy = sqlite3.connect(target)
        try:
            source.backup(copy)
        finally:
            copy.close()
            source.close()
    except sqlite3.Error as exc:
        raise JournalError(
            f"cannot read the journal {journal}: {exc}; give --journal the journal of this "
            "destination, or --no-resume to ignore it"
        ) from exc


def format_report(report: ScanReport) -> str:
    lines = [
        f"{report.found} files found: {report.files} DICOM files to send, "
        f"{report.total_bytes / 1e6:.1f} MB, in {report.studies} studies; "
        f"{report.already_stored} already stored, {len(report.duplicates)} duplicates, "
        f"{len(report.unreadable)} unreadable, {len(report.skipped)} skipped; "
        f"{report.associations_needed} association(s) needed",
    ]
    if report.journal:
        lines.append(f"journal consulted: {report.journal}")
    lines += [
        "SOP classes:",
        *(f"  {n:>8}  {uid_name(uid)} ({uid})" for uid, n in report.sop_classes.most_common()),
        "transfer syntaxes:",
        *(
            f"  {n:>8}  {uid_name(uid)} ({uid})"
            for uid, n in report.transfer_syntaxes.most_common()
        ),
    ]
    for title, results in (
        ("unreadable (would fail):", report.unreadable),
        ("skipped:", report.skipped),
        ("duplicates (skipped):", report.duplicates),
    ):
        if results:
            lines.append(title)
            lines += [f"  {r.path}: {r.reason}" for r in results]
    if report.coercion is not None:
        lines += report.coercion.lines()
    if report.nothing_to_send:
        lines.append(f"ERROR {report.nothing_to_send}")
    else:
        lines += [f"WARNING {u.hint}" for u in report.unsearched]
    return "\n".join(lines)
