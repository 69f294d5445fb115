"""Proving what the journal says the destination holds: Storage Commitment and C-FIND.

Two independent methods, each over the instances the inventory records as
held (HeldInstance):

- Storage Commitment Push Model as the SCU (PS3.4 Annex J): N-ACTION-RQs of
  ``batch`` instances each under a new Transaction UID; the N-EVENT-REPORT
  arrives on the same association while it is open, or on an association
  the destination opens to our ``--commit-port`` (CommitmentListener). Each
  instance becomes committed, commit failed (Failure Reason, PS3.3 C.14.1.1), or
  stays uncommitted when no report came within ``--commit-timeout``.
- C-FIND reconciliation (Study Root Query/Retrieve - FIND, PS3.4 C.6.2): per
  study, the STUDY level count (Number of Study Related Instances); where it
  differs from the journal's, SERIES level counts, and where those differ
  the SOP Instance UIDs at IMAGE level. Instances not returned are missing.

Sockets stay in io.transport, PDUs and DIMSE in protocol; this module drives
them (as scu.py does for C-STORE) and writes the outcomes to the inventory:
one verdict per instance from both methods (inventory.Verdict).

Everything a peer sends is untrusted: a data set that cannot be decoded, an
oversized one, or a report that breaks PS3.4 J.3.3 is a logged problem
naming the peer, never a traceback, and text from the network is printed
without its control characters (printable).
"""

from __future__ import annotations

import csv
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..config import CommitConfig, PeerConfig, VerifyConfig, destination_key
from ..errors import FastsendError
from ..io.transport import ConnectError, Listener, Transport, TransportError, TransportTimeout
from ..protocol import dataset
from ..protocol.association import (
    Aborted,
    Association,
    AssociationRequested,
    DataReceived,
    ReleaseRequested,
    Role,
    State,
)
from ..protocol.contexts import NoAcceptableContext
from ..protocol.dataset import (
    EVENT_ALL_SUCCESS,
    EVENT_FAILURES_EXIST,
    REQUEST_STORAGE_COMMITMENT,
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH_MODEL,
    STUDY_ROOT_FIND,
    CommitmentResult,
    DatasetError,
    Reference,
)
from ..protocol.dimse import (
    TAG_AFFECTED_SOP_CLASS_UID,
    TAG_AFFECTED_SOP_INSTANCE_UID,
    TAG_ERROR_COMMENT,
    TAG_EVENT_TYPE_ID,
    TAG_MESSAGE_ID_BEING_RESPONDED_TO,
    TAG_STATUS,
    Command,
    CommandField,
    DIMSEError,
    Message,
    MessageAssembler,
    StatusCategory,
    c_echo_rsp,
    c_find_rq,
    n_action_rq,
    n_event_report_rsp,
    status_category,
    status_text,
)
from ..protocol.hotpath import fragment_pdata
from ..protocol.pdu import (
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    PresentationContextAC,
    PresentationContextResult,
    PresentationContextRQ,
    RejectResult,
    RejectSource,
    RoleSelection,
    UserInformation,
)
from ..protocol.uids import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    VERIFICATION_SOP_CLASS,
)
from .inventory import CommitState, FindState, HeldInstance, Inventory, JournalError, Verdict
from .results import FAILURE_COLUMNS
from .scu import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    AssociationError,
    StoreClient,
)

Log = Callable[[str, str], None]  # (level, message)

# N-EVENT-REPORT-RSP statuses (PS3.7 10.1.1.1.8): 0115H "Invalid argument
# value" (the event information was inappropriate: a Transaction UID we never
# asked about, or already had), 0113H "No such Event Type", 0112H "No such
# SOP Instance", 0118H "No such SOP Class", 0110H "Processing failure".
STATUS_INVALID_ARGUMENT_VALUE = 0x0115
STATUS_NO_SUCH_EVENT_TYPE = 0x0113
STATUS_NO_SUCH_SOP_INSTANCE = 0x0112
STATUS_NO_SUCH_SOP_CLASS = 0x0118
STATUS_PROCESSING_FAILURE = 0x0110
# PS3.8 9.1.5: how long an acceptor waits for the A-ASSOCIATE-RQ (ARTIM).
ARTIM_TIMEOUT = 30.0
# How often a wait on the requestor's association also looks at the listener.
POLL_SECONDS = 0.2
# Data sets we exchange: both uncompressed Little Endian syntaxes (PS3.5 10.1:
# Implicit VR LE is the default every SCP accepts).
OUR_SYNTAXES = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
MISSING_REASON = "missing at destination (C-FIND)"
# The listener's bounds against a peer that reaches our port (and guesses
# our AE title): a report data set of at most this many bytes (a report of
# 10000 instances is about 1 MB), and this many associations at once.
MAX_REPORT_BYTES = 16 * 1024 * 1024
MAX_LISTENER_ASSOCIATIONS = 4
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Text from the network (UIDs, AE titles, comments) fit for a log line or terminal.

    Control characters (escape sequences, newlines) are replaced, so a peer
    cannot forge log lines or drive the terminal.
    """
    return _CONTROL.sub("?", text)


class VerifyError(FastsendError):
    """A verification method could not run: the message says why and what to do."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable  # no TCP connection to the destination


# ------------------------------------------------------------------ Storage Commitment


class TransactionBook:
    """The Transaction UIDs we asked about and what the reports said; shared by threads."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._outstanding: dict[str, tuple[Reference, ...]] = {}
        self.results: list[CommitmentResult] = []
        self.asked: set[str] = set()

    def expect(self, transaction_uid: str, references: Sequence[Reference]) -> None:
        with self._changed:
            self._outstanding[transaction_uid] = tuple(references)
            self.asked.add(transaction_uid)

    def cancel(self, transaction_uid: str) -> None:
        """The N-ACTION was refused: no report will come for it."""
        with self._changed:
            self._outstanding.pop(transaction_uid, None)
            self._changed.notify_all()

    def deliver(self, result: CommitmentResult) -> bool:
        """Take a report; False if its Transaction UID is not one we await."""
        with self._changed:
            if self._outstanding.pop(result.transaction_uid, None) is None:
                return False
            self.results.append(result)
            self._changed.notify_all()
            return True

    @property
    def outstanding(self) -> int:
        with self._changed:
            return len(self._outstanding)

    def wait(self, seconds: float) -> None:
        with self._changed:
            if self._outstanding:
                self._changed.wait(seconds)


def answer_report(
    book: TransactionBook, message: Message, transfer_syntax: str, peer: str, log: Log
) -> Command:
    """The N-EVENT-REPORT-RSP to a Storage Commitment report (PS3.4 J.3.3), and take it.

    A report for a transaction we are not waiting for, or one that breaks
    PS3.4 J.3.3 (SOP Class, Affected SOP Instance UID, Event Type ID) or
    cannot be decoded, is answered with an error status and logged, not
    taken: its transaction stays outstanding.
    """
    command = message.command
    sop_class = command.get_str(TAG_AFFECTED_SOP_CLASS_UID)
    if sop_class != STORAGE_COMMITMENT_PUSH_MODEL:
        log(
            "error",
            f"N-EVENT-REPORT from {peer} for SOP class {printable(sop_class)}: not ours, refused",
        )
        return n_event_report_rsp(command, STATUS_NO_SUCH_SOP_CLASS, "not Storage Commitment")
    # PS3.4 J.3.3: the report is about the well-known Storage Commitment
    # SOP Instance, with Event Type ID 1 (successful) or 2 (failures exist).
    instance = command.get_str(TAG_AFFECTED_SOP_INSTANCE_UID)
    if instance != STORAGE_COMMITMENT_INSTANCE:
        log(
            "error",
            f"N-EVENT-REPORT from {peer} for SOP Instance {printable(instance) or '(none)'}, not "
            f"{STORAGE_COMMITMENT_INSTANCE} (PS3.4 J.3.3): refused with "
            f"{status_text(STATUS_NO_SUCH_SOP_INSTANCE)}",
        )
        return n_event_report_rsp(command, STATUS_NO_SUCH_SOP_INSTANCE, "not the well-known UID")
    event_type = command.get_int(TAG_EVENT_TYPE_ID)
    if event_type not in (EVENT_ALL_SUCCESS, EVENT_FAILURES_EXIST):
        log(
            "error",
            f"N-EVENT-REPORT from {peer} with Event Type ID {event_type}, not 1 or 2 "
            f"(PS3.4 J.3.3): refused with {status_text(STATUS_NO_SUCH_EVENT_TYPE)}",
        )
        return n_event_report_rsp(command, STATUS_NO_SUCH_EVENT_TYPE, "Event Type ID not 1 or 2")
    try:
        result = dataset.decode_commitment_report(
            message.dataset(), dataset.explicit_vr(transfer_syntax)
        )
    except DatasetError as exc:
        log(
            "error",
            f"N-EVENT-REPORT from {peer}: its Event Information cannot be read ({exc}): "
            f"answered {status_text(STATUS_PROCESSING_FAILURE)}; its instances stay uncommitted",
        )
        return n_event_report_rsp(command, STATUS_PROCESSING_FAILURE, "unreadable data set")
    if not book.deliver(result):
        log(
            "error",
            f"N-EVENT-REPORT from {peer} for Transaction UID "
            f"{printable(result.transaction_uid) or '(none)'}, "
            "which this verification did not ask about (or already had): answered "
            f"{status_text(STATUS_INVALID_ARGUMENT_VALUE)}",
        )
        return n_event_report_rsp(command, STATUS_INVALID_ARGUMENT_VALUE, "unknown Transaction UID")
    log(
        "info",
        f"N-EVENT-REPORT from {peer} for {result.transaction_uid}: "
        f"{len(result.committed)} committed, {len(result.failed)} failed",
    )
    return n_event_report_rsp(command, 0x0000)


class CommitmentListener:
    """Takes the associations a Storage Commitment SCP opens to send its reports.

    Listens on ``bind:port`` (io.transport.Listener; all interfaces when
    ``bind`` is empty) as ``ae_title``; accepts the Storage Commitment Push
    Model with the requestor as SCP (role selection, PS3.7 D.3.3.4) and
    Verification; one thread per association, at most
    MAX_LISTENER_ASSOCIATIONS at once, and report data sets of at most
    MAX_REPORT_BYTES. Whatever a peer sends ends, at worst, its own
    association with a logged problem.
    """

    def __init__(self, bind: str, port: int, ae_title: str, book: TransactionBook, log: Log):
        self.ae_title = ae_title
        self.book = book
        self.log = log
        self.maximum_length = 131072
        try:
            self._listener = Listener(bind, port)
        except OSError as exc:
            raise VerifyError(
                f"cannot listen for Storage Commitment reports on {bind or '*'}:{port}: "
                f"{exc.strerror or exc}; choose another --commit-port, or stop what listens there"
            ) from exc
        self.port = self._listener.port
        self.associations = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._workers: list[threading.Thread] = []

    def start(self) -> CommitmentListener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()
        for worker in self._workers:
            worker.join(timeout=5.0)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            transport = self._listener.accept(timeout=POLL_SECONDS)
            if transport is not None:
                self._workers = [w for w in self._workers if w.is_alive()]
                busy = len(self._workers) >= MAX_LISTENER_ASSOCIATIONS
                worker = threading.Thread(target=self._serve, args=(transport, busy), daemon=True)
                self._workers.append(worker)
                worker.start()

    def _answer(self, request: AAssociateRQ, busy: bool) -> AAssociateAC | AAssociateRJ:
        if busy:
            # PS3.8 9.3.4: rejected-transient, service-provider (presentation),
            # local-limit-exceeded: MAX_LISTENER_ASSOCIATIONS are open.
            return AAssociateRJ(
                RejectResult.REJECTED_TRANSIENT, RejectSource.SERVICE_PROVIDER_PRESENTATION, 2
            )
        if request.called_ae_title.strip() != self.ae_title.strip():
            # PS3.8 9.3.4: rejected-permanent, service-user, called-AE-title-not-recognized.
            return AAssociateRJ(RejectResult.REJECTED_PERMANENT, RejectSource.SERVICE_USER, 7)
        answers = []
        for context in request.presentation_contexts:
            wanted = context.abstract_syntax in (
                STORAGE_COMMITMENT_PUSH_MODEL,
                VERIFICATION_SOP_CLASS,
            )
            usable = [ts for ts in OUR_SYNTAXES if ts in context.transfer_syntaxes]
            if wanted and usable:
                result, syntax = PresentationContextResult.ACCEPTANCE, usable[0]
            elif wanted:
                result = PresentationContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED
                syntax = context.transfer_syntaxes[0] if context.transfer_syntaxes else ""
            else:
                result = PresentationContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED
                syntax = context.transfer_syntaxes[0] if context.transfer_syntaxes else ""
            answers.append(PresentationContextAC(context.presentation_context_id, result, syntax))
        # The reporting SCP is the requestor acting as SCP (PS3.4 J.3.3): agree
        # to that role when it proposes it; the SCU role it does not need.
        roles = tuple(
            RoleSelection(r.sop_class_uid, False, True)
            for r in request.user_information.role_selections
            if r.sop_class_uid == STORAGE_COMMITMENT_PUSH_MODEL and r.scp_role
        )
        return AAssociateAC(
            called_ae_title=request.called_ae_title,
            calling_ae_title=request.calling_ae_title,
            presentation_contexts=tuple(answers),
            user_information=UserInformation(
                maximum_length=self.maximum_length,
                implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version_name=IMPLEMENTATION_VERSION_NAME,
                role_selections=roles,
            ),
        )

    def _serve(self, transport: Transport, busy: bool = False) -> None:
        association = Association(Role.ACCEPTOR, self.maximum_length)
        association.connection_accepted()
        assembler = MessageAssembler(max_dataset=MAX_REPORT_BYTES)
        syntaxes: dict[int, str] = {}
        peer_maximum = 0
        peer = printable(transport.peer)
        try:
            while association.state is not State.STA1 and not self._stopping.is_set():
                timeout = POLL_SECONDS if association.established else ARTIM_TIMEOUT
                try:
                    data = transport.receive(timeout)
                except TransportTimeout:
                    if association.established:
                        continue  # poll again, so stop() is noticed
                    raise
                events = association.receive_data(data) if data else association.connection_closed()
                for event in events:
                    if isinstance(event, AssociationRequested):
                        request = event.request
                        peer = f"{printable(request.calling_ae_title)}@{printable(transport.peer)}"
                        answer = self._answer(request, busy)
                        if isinstance(answer, AAssociateRJ):
                            self.log("error", f"association from {peer} rejected: " + (
                                f"{MAX_LISTENER_ASSOCIATIONS} Storage Commitment associations "
                                "are open already" if busy else
                                f"it called {printable(request.called_ae_title)!r}, not our AE "
                                f"title {self.ae_title!r}"
                            ))  # fmt: skip
                            association.reject(answer)
                            continue
                        syntaxes = {
                            c.presentation_context_id: c.transfer_syntax
                            for c in answer.presentation_contexts
                            if c.accepted
                        }
                        peer_maximum = request.user_information.maximum_length
                        association.accept(answer)
                        self.associations += 1
                    elif isinstance(event, DataReceived):
                        for message in assembler.feed(event.pdata.pdvs):
                            response = self._handle(message, syntaxes, peer)
                            transport.send_buffers(
                                association.send_pdata(
                                    list(
                                        fragment_pdata(
                                            response.encode(),
                                            message.presentation_context_id,
                                            True,
                                            peer_maximum,
                                        )
                                    )
                                )
                            )
                    elif isinstance(event, ReleaseRequested):
                        association.release_response()
                    elif isinstance(event, Aborted):
                        break
                pending = association.data_to_send()
                if pending:
                    transport.send(pending)
                if association.transport_should_close or association.state is State.STA13:
                    break
        except (FastsendError, RecursionError) as exc:
            # Any error of the peer's making (PDUs, DIMSE, a data set past
            # its bound, a broken connection) ends this association only.
            self.log(
                "warning",
                f"Storage Commitment association from {peer} aborted: {printable(str(exc))}",
            )
            self._abort(association, transport)
        finally:
            transport.close()

    @staticmethod
    def _abort(association: Association, transport: Transport) -> None:
        """A-ABORT (PS3.8 9.3.8) if the connection still takes it."""
        try:
            association.abort()
            pending = association.data_to_send()
            if pending:
                transport.send(pending)
        except (FastsendError, OSError):
            pass  # the connection is gone already: closing it is all that is left

    def _handle(self, message: Message, syntaxes: dict[int, str], peer: str) -> Command:
        command = message.command
        if command.command_field == CommandField.C_ECHO_RQ:
            return c_echo_rsp(command)
        if command.command_field == CommandField.N_EVENT_REPORT_RQ:
            syntax = syntaxes.get(message.presentation_context_id)
            if syntax is None:
                raise DIMSEError(
                    f"{peer} sent a report on presentation context "
                    f"{message.presentation_context_id}, which was not accepted (PS3.8 9.3.3.2)"
                )
            return answer_report(self.book, message, syntax, peer, self.log)
        raise DIMSEError(f"{peer} sent command 0x{command.command_field or 0:04x}, not a report")


@dataclass
class CommitmentOutcome:
    """What Storage Commitment found: per path, (state, reason)."""

    states: dict[str, tuple[CommitState, str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    transactions: int = 0
    reports_on_same_association: int = 0
    listener_associations: int = 0

    def counts(self) -> Counter[str]:
        return Counter(state.value for state, _ in self.states.values())


def request_commitment(
    peer: PeerConfig, config: CommitConfig, instances: Sequence[HeldInstance], log: Log
) -> CommitmentOutcome:
    """Ask the destination to commit ``instances``; raises VerifyError if it cannot be asked."""
    book = TransactionBook()
    outcome = CommitmentOutcome()
    listener = None
    if config.port is not None:
        listener = CommitmentListener(
            config.bind, config.port, peer.calling_ae_title, book, log
        ).start()
    client = StoreClient(peer)
    contexts = (PresentationContextRQ(1, STORAGE_COMMITMENT_PUSH_MODEL, OUR_SYNTAXES),)
    batches: list[tuple[str, list[HeldInstance]]] = []
    try:
        try:
            accepted = client.open(contexts)
            selection = accepted.select(STORAGE_COMMITMENT_PUSH_MODEL, OUR_SYNTAXES[0])
        except NoAcceptableContext as exc:
            client.release()
            raise VerifyError(
                f"{client.name} does not support Storage Commitment Push Model: {exc}"
            ) from exc
        except (AssociationError, TransportError) as exc:
            client.abort()
            raise VerifyError(
                f"no association with {client.name}: {exc}",
                unreachable=isinstance(exc, ConnectError),
            ) from exc
        explicit = _explicit_vr(client, selection.transfer_syntax, "Storage Commitment")
        pc_id = selection.presentation_context_id
        try:
            for start in range(0, len(instances), config.batch):
                batch = list(instances[start : start + config.batch])
                transaction_uid = dataset.new_transaction_uid()
                references = [Reference(i.sop_class_uid, i.sop_instance_uid) for i in batch]
                book.expect(transaction_uid, references)
                batches.append((transaction_uid, batch))
                message_id = client.next_message_id()
                client.send_message(
                    pc_id,
                    n_action_rq(
                        message_id,
                        STORAGE_COMMITMENT_PUSH_MODEL,
                        STORAGE_COMMITMENT_INSTANCE,
                        REQUEST_STORAGE_COMMITMENT,
                    ),
                    dataset.commitment_request(transaction_uid, references, explicit),
                )
                status, comment = _await_action_rsp(client, message_id, book, outcome, log)
                if status_category(status) is not StatusCategory.SUCCESS:
                    book.cancel(transaction_uid)
                    problem = (
                        f"{client.name} refused the Storage Commitment request for "
                        f"{len(batch)} instance(s): N-ACTION-RSP {status_text(status)}"
                        + (f" ({comment})" if comment else "")
                    )
                    outcome.problems.append(problem)
                    for instance in batch:
                        outcome.states[instance.path] = (
                            CommitState.UNCOMMITTED,
                            f"N-ACTION refused: {status_text(status)}",
                        )
                outcome.transactions += 1
            _await_reports(client, book, config.timeout, outcome, log, listener is not None)
        except FastsendError as exc:
            # Lost (or broken by the peer) before every request went: what
            # was asked may still be reported on the listener; the rest
            # stays uncommitted.
            if client.is_open:
                client.abort()
            outcome.problems.append(f"Storage Commitment association with {client.name}: {exc}")
            if listener is not None:
                _wait_listener(book, config.timeout)
        finally:
            if client.is_open:
                client.release()
    finally:
        if listener is not None:
            listener.stop()
            outcome.listener_associations = listener.associations
    _settle(batches, book, outcome, config.timeout, listener is not None)
    return outcome


def _explicit_vr(client: StoreClient, transfer_syntax: str, service: str) -> bool:
    """Whether the accepted syntax is Explicit VR; VerifyError if it is not one we proposed."""
    try:
        return dataset.explicit_vr(transfer_syntax)
    except DatasetError as exc:
        client.abort()
        raise VerifyError(
            f"{client.name} accepted {service} with transfer syntax "
            f"{printable(transfer_syntax)}, which was not proposed (only Explicit and Implicit "
            "VR Little Endian, PS3.8 9.3.3.2): association aborted; report this to its vendor"
        ) from exc


def _await_action_rsp(
    client: StoreClient,
    message_id: int,
    book: TransactionBook,
    outcome: CommitmentOutcome,
    log: Log,
) -> tuple[int, str]:
    """(status, error comment) of the N-ACTION-RSP; reports arriving first are answered."""
    while True:
        message = client.next_message(client.peer.dimse_timeout, "N-ACTION-RSP")
        assert message is not None
        command = message.command
        if command.command_field == CommandField.N_EVENT_REPORT_RQ:
            _answer_on_client(client, message, book, outcome, log)
            continue
        responded_to = command.get_int(TAG_MESSAGE_ID_BEING_RESPONDED_TO)
        if command.command_field != CommandField.N_ACTION_RSP or responded_to != message_id:
            client.abort()
            raise AssociationError(
                f"{client.name} answered with command 0x{command.command_field or 0:04x} "
                f"for message {responded_to}, not the N-ACTION-RSP to {message_id}"
            )
        status = command.get_int(TAG_STATUS, 0xFFFF)
        return (0xFFFF if status is None else status), printable(command.get_str(TAG_ERROR_COMMENT))


def _answer_on_client(
    client: StoreClient,
    message: Message,
    book: TransactionBook,
    outcome: CommitmentOutcome,
    log: Log,
) -> None:
    assert client.contexts is not None
    try:
        syntax = client.contexts.transfer_syntax_of(message.presentation_context_id)
    except KeyError:
        client.abort()
        raise AssociationError(
            f"{client.name} sent a report on presentation context "
            f"{message.presentation_context_id}, which it never accepted (PS3.8 9.3.3.2): "
            "association aborted"
        ) from None
    response = answer_report(book, message, syntax, client.name, log)
    if response.get_int(TAG_STATUS) == 0:
        outcome.reports_on_same_association += 1
    client.send_message(message.presentation_context_id, response)


def _await_reports(
    client: StoreClient,
    book: TransactionBook,
    timeout: float,
    outcome: CommitmentOutcome,
    log: Log,
    listening: bool,
) -> None:
    """Wait for every report, on our association while it is open and on the listener."""
    deadline = time.monotonic() + timeout
    while book.outstanding and time.monotonic() < deadline:
        remaining = min(POLL_SECONDS, deadline - time.monotonic())
        if not client.is_open:
            if not listening:
                return  # no way left for a report to come
            book.wait(max(remaining, 0.0))
            continue
        try:
            message = client.next_message(max(remaining, 0.01), "N-EVENT-REPORT-RQ", poll=True)
        except AssociationError as exc:
            # The SCP may release (or drop) our association and report on its own.
            log("info", f"the association with {client.name} ended while waiting: {exc}")
            continue
        if message is None:
            continue
        if message.command.command_field == CommandField.N_EVENT_REPORT_RQ:
            _answer_on_client(client, message, book, outcome, log)
        else:
            log("warning", f"{client.name} sent command 0x{message.command.command_field or 0:04x}"
                " while reports were awaited; ignored")  # fmt: skip


def _wait_listener(book: TransactionBook, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while book.outstanding and time.monotonic() < deadline:
        book.wait(min(POLL_SECONDS, max(deadline - time.monotonic(), 0.0)))


def _settle(
    batches: Sequence[tuple[str, Sequence[HeldInstance]]],
    book: TransactionBook,
    outcome: CommitmentOutcome,
    timeout: float,
    listening: bool,
) -> None:
    """Each asked instance's state from the reports; uncommitted if none said."""
    # By SOP Instance UID: the SCP copies the SOP Class UID we sent (PS3.4
    # J.3.3.1), and a mismatch there is no reason to lose its verdict.
    committed: set[str] = set()
    failed: dict[str, int] = {}
    reported: set[str] = set()
    for result in book.results:
        reported.add(result.transaction_uid)
        committed.update(r.sop_instance_uid for r in result.committed)
        failed.update((f.sop_instance_uid, f.reason) for f in result.failed)
    where = "on the association" + ("" if not listening else " or on --commit-port")
    for transaction_uid, batch in batches:
        for instance in batch:
            if instance.path in outcome.states:
                continue  # the N-ACTION was refused
            key = instance.sop_instance_uid
            if key in failed:
                outcome.states[instance.path] = (
                    CommitState.COMMIT_FAILED,
                    dataset.failure_reason_text(failed[key]),
                )
            elif key in committed:
                outcome.states[instance.path] = (CommitState.COMMITTED, "")
            elif transaction_uid in reported:
                outcome.states[instance.path] = (
                    CommitState.UNCOMMITTED,
                    "the Storage Commitment report did not name it",
                )
            else:
                outcome.states[instance.path] = (
                    CommitState.UNCOMMITTED,
                    f"no N-EVENT-REPORT {where} within {timeout:g} s",
                )
    missing = sum(1 for t, _ in batches if t not in reported)
    if missing:
        outcome.problems.append(
            f"{missing} of {len(batches)} Storage Commitment report(s) did not arrive {where} "
            f"within --commit-timeout {timeout:g} s: their instances stay uncommitted"
            + (
                ""
                if listening
                else " (if the destination reports on an association of its own, give "
                "--commit-port and register fastsend's AE title, host and that port there)"
            )
        )


# ------------------------------------------------------------------ C-FIND


@dataclass
class FindOutcome:
    states: dict[str, FindState] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    queries: Counter[str] = field(default_factory=Counter)  # by level

    def counts(self) -> Counter[str]:
        return Counter(state.value for state in self.states.values())


class _FindFailed(FastsendError):
    """A C-FIND ended with a failure status: its study stays unverified."""


class _Finder:
    def __init__(self, client: StoreClient, pc_id: int, explicit: bool) -> None:
        self.client = client
        self.pc_id = pc_id
        self.explicit = explicit

    def query(self, level: str, study: str, series: str = "") -> list[dataset.Match]:
        """One C-FIND (PS3.7 9.1.2): the Identifiers of its pending responses."""
        client = self.client
        message_id = client.next_message_id()
        client.send_message(
            self.pc_id,
            c_find_rq(message_id, STUDY_ROOT_FIND),
            dataset.find_identifier(level, study, series, self.explicit),
        )
        matches: list[dataset.Match] = []
        unreadable = ""
        while True:
            message = client.next_message(client.peer.dimse_timeout, "C-FIND-RSP")
            assert message is not None
            command = message.command
            responded_to = command.get_int(TAG_MESSAGE_ID_BEING_RESPONDED_TO)
            if command.command_field != CommandField.C_FIND_RSP or responded_to != message_id:
                client.abort()
                raise AssociationError(
                    f"{client.name} answered with command 0x{command.command_field or 0:04x} "
                    f"for message {responded_to}, not a C-FIND-RSP to {message_id}"
                )
            status = command.get_int(TAG_STATUS, 0xFFFF)
            category = status_category(0xFFFF if status is None else status)
            if category is StatusCategory.PENDING:
                if command.has_dataset and not unreadable:
                    try:
                        matches.append(dataset.decode_match(message.dataset(), self.explicit))
                    except DatasetError as exc:
                        # Read on to the final response (PS3.7 9.1.2): the
                        # association then serves the next query.
                        unreadable = f"a C-FIND match from {client.name} cannot be read: {exc}"
                continue
            if unreadable:
                raise _FindFailed(unreadable)
            if category is StatusCategory.SUCCESS:
                return matches
            comment = printable(command.get_str(TAG_ERROR_COMMENT))
            raise _FindFailed(
                f"C-FIND at {level} level ended with {status_text(status or 0)}"
                + (f" ({comment})" if comment else "")
            )


def reconcile_by_find(
    peer: PeerConfig, studies: Iterable[tuple[str, list[HeldInstance]]], log: Log
) -> FindOutcome:
    """Which held instances the destination's C-FIND returns; raises VerifyError if it cannot."""
    client = StoreClient(peer)
    contexts = (PresentationContextRQ(1, STUDY_ROOT_FIND, OUR_SYNTAXES),)
    try:
        accepted = client.open(contexts)
        selection = accepted.select(STUDY_ROOT_FIND, OUR_SYNTAXES[0])
    except NoAcceptableContext as exc:
        client.release()
        raise VerifyError(f"{client.name} does not support C-FIND: {exc}") from exc
    except (AssociationError, TransportError) as exc:
        client.abort()
        raise VerifyError(
            f"no association with {client.name}: {exc}",
            unreachable=isinstance(exc, ConnectError),
        ) from exc
    finder = _Finder(
        client,
        selection.presentation_context_id,
        _explicit_vr(client, selection.transfer_syntax, "C-FIND"),
    )
    outcome = FindOutcome()
    try:
        for study, instances in studies:
            try:
                _reconcile_study(finder, study, instances, outcome)
            except _FindFailed as exc:
                problem = f"study {study}: {exc}; its {len(instances)} instance(s) not verified"
                outcome.problems.append(problem)
    except FastsendError as exc:
        # The association lost, or broken by the peer: the studies not
        # reached stay unverified.
        if client.is_open:
            client.abort()
        outcome.problems.append(f"C-FIND association with {client.name}: {exc}")
    finally:
        if client.is_open:
            client.release()
    return outcome


def _reconcile_study(
    finder: _Finder, study: str, instances: list[HeldInstance], outcome: FindOutcome
) -> None:
    def mark(group: Iterable[HeldInstance], state: FindState) -> None:
        for instance in group:
            outcome.states[instance.path] = state

    if not study:
        return  # no Study Instance UID recorded (a journal of an old version): cannot ask
    outcome.queries["STUDY"] += 1
    found = [m for m in finder.query("STUDY", study) if m.study_instance_uid in ("", study)]
    if not found:
        mark(instances, FindState.MISSING)
        return
    expected = len({i.sop_instance_uid for i in instances})
    if found[0].related_instances == expected:
        mark(instances, FindState.FOUND)
        return
    # The counts differ (or the destination did not say): down a level.
    by_series: dict[str, list[HeldInstance]] = defaultdict(list)
    for instance in instances:
        by_series[instance.series_instance_uid].append(instance)
    outcome.queries["SERIES"] += 1
    series_counts = {
        m.series_instance_uid: m.related_instances for m in finder.query("SERIES", study)
    }
    for series, group in by_series.items():
        if not series:
            continue  # no Series Instance UID recorded: an IMAGE query needs one
        if series not in series_counts:
            mark(group, FindState.MISSING)
            continue
        if series_counts[series] == len({i.sop_instance_uid for i in group}):
            mark(group, FindState.FOUND)
            continue
        outcome.queries["IMAGE"] += 1
        present = {m.sop_instance_uid for m in finder.query("IMAGE", study, series)}
        for instance in group:
            outcome.states[instance.path] = (
                FindState.FOUND if instance.sop_instance_uid in present else FindState.MISSING
            )


# ------------------------------------------------------------------ the command


@dataclass
class VerifyReport:
    """What `fastsend verify` found; ``exit_code`` as the CLI returns it."""

    session_id: str
    destination: str
    journal: Path
    instances: int = 0
    studies: int = 0
    find: FindOutcome | None = None
    commit: CommitmentOutcome | None = None
    find_problem: str = ""  # C-FIND could not run at all
    commit_problem: str = ""  # Storage Commitment could not run at all
    unreachable: bool = False  # no TCP connection (else: it answered, and refused)
    missing_csv: Path | None = None
    missing: int = 0  # instances listed in the CSV: the ones no longer counted as held
    unverified: int = 0  # held instances no method could check
    disagreements: int = 0  # one method said held, the other not: taken as not held

    @property
    def exit_code(self) -> int:
        """0 all verified, 1 some missing, not committed or not checked, 3 no method ran
        (the destination cannot be reached, or refused both), 4 nothing to verify."""
        if not self.instances:
            return 4
        ran = (self.find is not None) or (self.commit is not None)
        if not ran:
            return 3
        if self.missing or self.unverified:
            return 1
        if self.commit is not None and self.commit.counts()[CommitState.UNCOMMITTED.value]:
            return 1
        # A method the destination does not support (find_problem,
        # commit_problem) is reported; the other one's verdict stands.
        return 0


def verify(config: VerifyConfig, session_id: str, log: Log) -> VerifyReport:
    """Run the asked methods against the destination and record what they found.

    Raises JournalError when there is no usable journal for this destination.
    """
    journal = config.journal
    destination = destination_key(config.peer)
    if not journal.is_file():
        raise JournalError(
            f"no journal at {journal}: no `fastsend send` to {destination} has written one; give"
            " the -a/-H/-p and --log-dir of the send, or --journal the file it wrote"
            " (fastsend_journal_<AE>_<host>_<port>.sqlite)"
        )
    report = VerifyReport(session_id, destination, journal)
    inventory = Inventory(journal, destination, session_id)
    try:
        studies = list(inventory.held_by_study())
        instances = [i for _, group in studies for i in group]
        report.instances = len(instances)
        report.studies = sum(1 for study, _ in studies if study)
        if not instances:
            return report
        if config.find:
            try:
                report.find = reconcile_by_find(config.peer, studies, log)
            except VerifyError as exc:
                report.find_problem = str(exc)
                report.unreachable = exc.unreachable
        if config.commit is not None:
            try:
                report.commit = request_commitment(config.peer, config.commit, instances, log)
            except VerifyError as exc:
                report.commit_problem = str(exc)
                report.unreachable = report.unreachable or exc.unreachable
        # One verdict per instance from both methods, written once: a
        # method's "held" never undoes the other's "not held".
        verdicts = {i.path: _verdict(i.path, report) for i in instances}
        inventory.record_verdicts(
            v for v in verdicts.values() if v.find is not None or v.commit is not None
        )
        listed = _listed(instances, verdicts)
        report.missing = len(listed)
        report.unverified = sum(1 for i in instances if not _checked(i.path, report))
        report.disagreements = sum(1 for v in verdicts.values() if _disagree(v))
        if listed:
            report.missing_csv = missing_list_path(config.log_dir, session_id)
            write_missing(report.missing_csv, listed)
    finally:
        inventory.close()
    return report


def _checked(path: str, report: VerifyReport) -> bool:
    """Whether some method that ran reached a verdict on this instance."""
    found = report.find is not None and path in report.find.states
    committed = report.commit is not None and path in report.commit.states
    return found or committed


def _verdict(path: str, report: VerifyReport) -> Verdict:
    find = report.find.states.get(path) if report.find is not None else None
    commit, reason = (
        report.commit.states.get(path, (None, "")) if report.commit is not None else (None, "")
    )
    return Verdict(path, find, commit, reason)


def _disagree(verdict: Verdict) -> bool:
    """C-FIND and Storage Commitment both decided, and not alike."""
    if verdict.find is None or verdict.commit in (None, CommitState.UNCOMMITTED):
        return False
    return (verdict.find is FindState.FOUND) != (verdict.commit is CommitState.COMMITTED)


def _listed(
    instances: Sequence[HeldInstance], verdicts: dict[str, Verdict]
) -> list[tuple[HeldInstance, str, str]]:
    """(instance, status, reason) to resend: exactly those no longer counted as held."""
    listed = []
    for instance in instances:
        verdict = verdicts[instance.path]
        if verdict.holds is not False:
            continue
        reasons = []
        status = ""
        if verdict.find is FindState.MISSING:
            reasons.append(MISSING_REASON)
        if verdict.commit is CommitState.COMMIT_FAILED:
            reasons.append(f"Storage Commitment failed: {verdict.commit_reason}")
            status = verdict.commit_reason.split(" ", 1)[0]
            if verdict.find is FindState.FOUND:
                reasons.append("although C-FIND returned it")
        elif verdict.commit is CommitState.COMMITTED:
            reasons.append("although Storage Commitment reported it committed")
        listed.append((instance, status, "; ".join(reasons)))
    return listed


def missing_list_path(log_dir: Path, session_id: str) -> Path:
    return log_dir / f"fastsend_missing_{session_id}.csv"


def write_missing(path: Path, listed: Sequence[tuple[HeldInstance, str, str]]) -> None:
    """The failures-list format (results.FAILURE_COLUMNS): `send --input-list` resends them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(FAILURE_COLUMNS)
        for instance, status, reason in listed:
            writer.writerow(
                (instance.path, instance.sop_instance_uid, status, reason, instance.attempts)
            )


def format_report(report: VerifyReport) -> list[str]:
    """The lines `fastsend verify` prints: per-state counts, then what to do."""
    lines = [
        f"verify {report.destination}: {report.instances} instance(s) in {report.studies} "
        f"stud{'y' if report.studies == 1 else 'ies'} recorded as stored ({report.journal})"
    ]
    if report.find is not None:
        counts = report.find.counts()
        queries = ", ".join(f"{n} {level}" for level, n in report.find.queries.items())
        lines.append(
            f"C-FIND: {counts[FindState.FOUND.value]} found, "
            f"{counts[FindState.MISSING.value]} missing at destination"
            + (f" ({queries} queries)" if queries else "")
        )
    elif report.find_problem:
        lines.append(f"C-FIND: not done: {report.find_problem}")
    if report.commit is not None:
        counts = report.commit.counts()
        lines.append(
            f"Storage Commitment: {counts[CommitState.COMMITTED.value]} committed, "
            f"{counts[CommitState.COMMIT_FAILED.value]} commit failed, "
            f"{counts[CommitState.UNCOMMITTED.value]} uncommitted "
            f"({report.commit.transactions} transaction(s))"
        )
    elif report.commit_problem:
        lines.append(f"Storage Commitment: not done: {report.commit_problem}")
    for outcome in (report.find, report.commit):
        if outcome is not None:
            lines.extend(f"ERROR {problem}" for problem in outcome.problems)
    if not report.instances:
        lines.append(
            "nothing to verify: the journal records no instance stored at this destination"
        )
    if report.instances and report.find is None and report.commit is None:
        if report.unreachable:
            lines.append(
                f"ERROR {report.destination} cannot be reached: nothing was verified; check "
                "-H and -p, and that it is running and lets this host connect"
            )
        else:
            lines.append(
                f"ERROR {report.destination} answered but refused both C-FIND (Study Root) and "
                "Storage Commitment: nothing was verified; ask its administrator to enable "
                "one of them for our AE title"
            )
    if report.disagreements:
        lines.append(
            f"{report.disagreements} instance(s) on which C-FIND and Storage Commitment "
            "disagree: taken as not held (any negative verdict wins), listed to send again"
        )
    if report.unverified:
        lines.append(f"{report.unverified} instance(s) could not be verified by any method")
    if report.missing_csv is not None:
        lines.append(
            f"{report.missing} instance(s) to send again: {report.missing_csv} "
            f"(fastsend send --input-list {report.missing_csv} -a ... -H ... -p ...)"
        )
    elif report.instances and report.exit_code == 0:
        lines.append(f"all {report.instances} instance(s) verified")
    return lines
