"""A send session in one process: discover, index, negotiate, store, account.

Every input ends as exactly one FileResult: stored, warning (stored with a
warning status), failed (with a reason, and the DICOM status if there was
one) or skipped (not DICOM, DICOMDIR). Nothing is dropped silently.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from .config import PeerConfig, SendConfig
from .contexts import NoAcceptableContext, association_for, plan_associations
from .convert import ConversionError
from .dimse import StatusCategory, status_category, status_text
from .discover import MissingInput, discover
from .errors import FastsendError
from .header import FileInfo, HeaderError, read_header
from .scu import (
    AssociationAbortedError,
    AssociationError,
    AssociationRejectedError,
    FileChangedError,
    Response,
    StoreClient,
)
from .transport import ConnectError, TransportError
from .uids import VERIFICATION_SOP_CLASS, describe


class Outcome(Enum):
    STORED = "stored"
    WARNING = "warning"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(slots=True)
class FileResult:
    path: str
    outcome: Outcome
    reason: str = ""
    status: int | None = None
    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    bytes_sent: int = 0
    seconds: float = 0.0


@dataclass(slots=True)
class SendSummary:
    results: list[FileResult] = field(default_factory=list)
    associations_opened: int = 0
    associations_failed: int = 0
    associations_aborted: int = 0
    association_errors: list[str] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.results if r.outcome is outcome)

    @property
    def no_association(self) -> bool:
        """Files were waiting to be sent but no association could ever be made."""
        return self.associations_opened == 0 and self.associations_failed > 0

    @property
    def exit_code(self) -> int:
        """0 all stored, 1 some failed, 3 no association could be made."""
        if self.no_association:
            return 3
        return 1 if self.count(Outcome.FAILED) else 0


Reporter = Callable[[FileResult], None]


def _index(config: SendConfig, summary: SendSummary, report: Reporter) -> list[FileInfo]:
    infos: list[FileInfo] = []
    for item in discover(config.inputs, config.recursive):
        if isinstance(item, MissingInput):
            result = FileResult(item.path, Outcome.FAILED, f"{item.path}: {item.reason}")
        else:
            try:
                infos.append(read_header(item))
                continue
            except HeaderError as exc:
                outcome = Outcome.FAILED if exc.kind == "unreadable" else Outcome.SKIPPED
                result = FileResult(item, outcome, str(exc))
        summary.results.append(result)
        report(result)
    return infos


def _result_from_response(info: FileInfo, response: Response, seconds: float) -> FileResult:
    category = status_category(response.status)
    detail = status_text(response.status)
    if response.error_comment:
        detail += f" ({response.error_comment})"
    if response.offending_element:
        detail += " offending element " + ", ".join(
            f"({t >> 16:04x},{t & 0xFFFF:04x})" for t in response.offending_element
        )
    if category is StatusCategory.SUCCESS:
        outcome, reason = Outcome.STORED, ""
    elif category is StatusCategory.WARNING:
        outcome, reason = Outcome.WARNING, f"stored with warning {detail}"
    else:
        outcome, reason = Outcome.FAILED, f"{info.path}: {detail}"
    return FileResult(
        info.path,
        outcome,
        reason,
        status=response.status,
        sop_instance_uid=info.sop_instance_uid,
        sop_class_uid=info.sop_class_uid,
        bytes_sent=0 if outcome is Outcome.FAILED else info.size,
        seconds=seconds,
    )


def send(config: SendConfig, report: Reporter = lambda result: None) -> SendSummary:
    """Send every DICOM file under the configured inputs; never raises for bad files."""
    summary = SendSummary(started=time.time())
    infos = _index(config, summary, report)
    plans = plan_associations((i.sop_class_uid, i.transfer_syntax_uid) for i in infos)
    # Files grouped by the association that carries their SOP class, each group
    # in study order so a study's instances travel together.
    groups: dict[int, list[FileInfo]] = defaultdict(list)
    for info in infos:
        groups[association_for(plans, info.sop_class_uid)].append(info)

    for index, contexts in enumerate(plans):
        pending = sorted(groups[index], key=lambda i: (i.study_instance_uid, i.path))
        client = StoreClient(config.peer)
        position = 0
        while position < len(pending):
            if not client.is_open:
                try:
                    client.open(contexts)
                    summary.associations_opened += 1
                except (AssociationError, ConnectError, TransportError) as exc:
                    summary.associations_failed += 1
                    message = _association_advice(exc, config.peer)
                    summary.association_errors.append(message)
                    for info in pending[position:]:
                        result = FileResult(
                            info.path,
                            Outcome.FAILED,
                            f"{info.path}: not sent: {message}",
                            sop_instance_uid=info.sop_instance_uid,
                            sop_class_uid=info.sop_class_uid,
                        )
                        summary.results.append(result)
                        report(result)
                    break
            info = pending[position]
            position += 1
            result = _store_one(client, info, summary)
            summary.results.append(result)
            report(result)
        client.release()
    summary.finished = time.time()
    return summary


def _store_one(client: StoreClient, info: FileInfo, summary: SendSummary) -> FileResult:
    def failed(reason: str) -> FileResult:
        return FileResult(
            info.path,
            Outcome.FAILED,
            f"{info.path}: {reason}",
            sop_instance_uid=info.sop_instance_uid,
            sop_class_uid=info.sop_class_uid,
        )

    assert client.contexts is not None
    try:
        selection = client.contexts.select(info.sop_class_uid, info.transfer_syntax_uid)
    except NoAcceptableContext as exc:
        return failed(str(exc))
    started = time.perf_counter()
    try:
        response = client.store(info, selection)
    except AssociationAbortedError as exc:
        # The association is gone; the next file opens a new one.
        summary.associations_aborted += 1
        return failed(f"association lost while sending: {exc}")
    except (ConversionError, FileChangedError) as exc:
        return failed(str(exc))
    except OSError as exc:
        return failed(f"cannot read file: {exc.strerror or exc}")
    except FastsendError as exc:
        return failed(str(exc))
    return _result_from_response(info, response, time.perf_counter() - started)


def _association_advice(exc: Exception, peer: PeerConfig) -> str:
    """The error, plus what the user can do about it."""
    if isinstance(exc, AssociationRejectedError):
        hint = (
            f" Check that the destination knows called AE title {peer.called_ae_title!r} "
            f"and calling AE title {peer.calling_ae_title!r}."
        )
        if exc.reject.transient:
            hint = " The rejection is transient: try again later."
        return str(exc) + "." + hint
    if isinstance(exc, ConnectError):
        return f"{exc}. Check the host and port, and that the destination is running."
    return str(exc)


def echo(peer: PeerConfig) -> tuple[Response | None, str]:
    """C-ECHO: (response, '') or (None, what went wrong)."""
    from .ul.pdu import PresentationContextRQ

    client = StoreClient(peer)
    contexts = (PresentationContextRQ(1, VERIFICATION_SOP_CLASS, ("1.2.840.10008.1.2",)),)
    try:
        accepted = client.open(contexts)
        if not accepted.accepted_count:
            client.release()
            return None, f"{client.name} did not accept {describe(VERIFICATION_SOP_CLASS)}"
        response = client.echo()
        client.release()
        return response, ""
    except (AssociationError, TransportError) as exc:
        client.abort()
        return None, _association_advice(exc, peer)
