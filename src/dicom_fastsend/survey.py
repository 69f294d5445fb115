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
from .coordinator import index_inputs
from .plan import group_by_study
from .results import FileResult, Outcome
from .uids import uid_name


@dataclass(slots=True)
class ScanReport:
    files: int = 0  # DICOM instances that would be sent
    total_bytes: int = 0
    studies: int = 0
    sop_classes: Counter[str] = field(default_factory=Counter)
    transfer_syntaxes: Counter[str] = field(default_factory=Counter)
    associations_needed: int = 0  # planned associations (at most 128 contexts each)
    unreadable: list[FileResult] = field(default_factory=list)  # would fail
    skipped: list[FileResult] = field(default_factory=list)  # not DICOM, DICOMDIR

    def as_dict(self) -> dict[str, Any]:
        def named(counter: Counter[str]) -> list[dict[str, Any]]:
            return [
                {"uid": uid, "name": uid_name(uid), "files": count}
                for uid, count in counter.most_common()
            ]

        return {
            "files": self.files,
            "total_bytes": self.total_bytes,
            "studies": self.studies,
            "sop_classes": named(self.sop_classes),
            "transfer_syntaxes": named(self.transfer_syntaxes),
            "associations_needed": self.associations_needed,
            "unreadable": [{"path": r.path, "reason": r.reason} for r in self.unreadable],
            "skipped": [{"path": r.path, "reason": r.reason} for r in self.skipped],
        }


def scan(config: SendConfig) -> ScanReport:
    report = ScanReport()

    def rejected(result: FileResult) -> None:
        (report.unreadable if result.outcome is Outcome.FAILED else report.skipped).append(result)

    infos = index_inputs(config, rejected)
    report.files = len(infos)
    report.total_bytes = sum(i.size for i in infos)
    report.studies = len(group_by_study(infos))
    report.sop_classes = Counter(i.sop_class_uid for i in infos)
    report.transfer_syntaxes = Counter(i.transfer_syntax_uid for i in infos)
    report.associations_needed = len(
        plan_associations((i.sop_class_uid, i.transfer_syntax_uid) for i in infos)
    )
    return report


def format_report(report: ScanReport) -> str:
    lines = [
        f"{report.files} DICOM files, {report.total_bytes / 1e6:.1f} MB, "
        f"in {report.studies} studies; {len(report.unreadable)} unreadable, "
        f"{len(report.skipped)} skipped; {report.associations_needed} association(s) needed",
        "SOP classes:",
        *(f"  {n:>8}  {uid_name(uid)} ({uid})" for uid, n in report.sop_classes.most_common()),
        "transfer syntaxes:",
        *(
            f"  {n:>8}  {uid_name(uid)} ({uid})"
            for uid, n in report.transfer_syntaxes.most_common()
        ),
    ]
    if report.unreadable:
        lines.append("unreadable (would fail):")
        lines += [f"  {r.path}: {r.reason}" for r in report.unreadable]
    if report.skipped:
        lines.append("skipped:")
        lines += [f"  {r.path}: {r.reason}" for r in report.skipped]
    return "\n".join(lines)
