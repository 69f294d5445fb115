"""`fastsend scan` (and `dicom_fastsend.scan`): what a send would do, without sending.

Named survey, not scan, so that importing it cannot replace the package's
`scan` function with this module (Python sets a loaded submodule as an
attribute of its package).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .config import SendConfig
from .contexts import plan_associations
from .discover import UnsearchedSubdirectories
from .header import FileInfo
from .journal import Journal, StoredEntry, destination_key
from .plan import group_by_study
from .prepare import Cause, prepare
from .results import ExitStatus, FileResult
from .uids import uid_name


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
                {"path": u.path, "subdirectories": u.count} for u in self.unsearched
            ],
            "nothing_to_send": self.nothing_to_send or None,
        }


def scan(config: SendConfig) -> ScanReport:
    """What `send` with this configuration would do, by the same preparation step.

    The journal is consulted as send consults it (``config.resume``), but only
    read: a journal that does not exist yet is not created.
    """
    report = ScanReport()
    stored: dict[str, StoredEntry] = {}
    journal_path = config.journal
    if config.resume and journal_path is not None and journal_path.exists():
        journal = Journal(journal_path, destination_key(config.peer), "scan")
        try:
            stored = journal.stored()
        finally:
            journal.close()
        report.journal = str(journal_path)

    def decided(result: FileResult, info: FileInfo | None, cause: Cause) -> None:
        if cause is Cause.ALREADY_STORED:
            return  # counted by prepare; a rerun of millions would list them all
        bucket = {
            Cause.MISSING: report.unreadable,
            Cause.UNREADABLE: report.unreadable,
            Cause.NOT_DICOM: report.skipped,
            Cause.DUPLICATE: report.duplicates,
        }[cause]
        bucket.append(result)

    prepared = prepare(config, decided, stored or None)
    infos = prepared.to_send
    report.found = prepared.found
    report.already_stored = prepared.already_stored
    report.unsearched = prepared.unsearched
    report.nothing_to_send = prepared.nothing_to_send
    report.files = len(infos)
    report.total_bytes = sum(i.size for i in infos)
    report.studies = len(group_by_study(infos))
    report.sop_classes = Counter(i.sop_class_uid for i in infos)
    report.transfer_syntaxes = Counter(i.transfer_syntax_uid for i in infos)
    report.associations_needed = len(
        plan_associations(
            ((i.sop_class_uid, i.transfer_syntax_uid) for i in infos), transcode=config.transcode
        )
    )
    return report


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
    if report.nothing_to_send:
        lines.append(f"ERROR {report.nothing_to_send}")
    else:
        lines += [f"WARNING {u.hint}" for u in report.unsearched]
    return "\n".join(lines)
