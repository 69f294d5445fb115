"""The DICOM Upper Layer association state machine (PS3.8 9.2), without I/O.

Bytes from the peer go in through ``receive_data`` and come out as events;
local primitives (``request``, ``release``, ``abort`` ...) queue the PDUs
they produce, which the caller collects with ``data_to_send``. The caller
owns the socket and the ARTIM timer: it reports ``connection_established``,
``connection_closed`` and ``artim_expired``, and closes the connection when
``transport_should_close`` becomes true.

The transitions are Table 9-10 of PS3.8 written out as data: a pair
(event, state) not in the table is a misuse by the caller
(``LocalProtocolError``); what the peer sends in the wrong state is handled
the way the table says, usually with an A-ABORT (AA-8).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum
from typing import TYPE_CHECKING

import msgspec

from ..errors import LocalProtocolError, PDUError, UnrecognizedPDUError
from .hotpath import parse_command_pdus
from .pdu import (
    PDU,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AbortReason,
    AbortSource,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PDUReader,
    decode_pdu,
    encode,
)

if TYPE_CHECKING:
    from .._pdu_py import CommandSummary


class State(Enum):
    """The thirteen states of PS3.8 Table 9-9."""

    STA1 = "Sta1"  # Idle
    STA2 = "Sta2"  # Transport connection open (awaiting A-ASSOCIATE-RQ PDU)
    STA3 = "Sta3"  # Awaiting local A-ASSOCIATE response primitive
    STA4 = "Sta4"  # Awaiting transport connection opening to complete
    STA5 = "Sta5"  # Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU
    STA6 = "Sta6"  # Association established and ready for data transfer
    STA7 = "Sta7"  # Awaiting A-RELEASE-RP PDU
    STA8 = "Sta8"  # Awaiting local A-RELEASE response primitive
    STA9 = "Sta9"  # Release collision requestor side; awaiting A-RELEASE response
    STA10 = "Sta10"  # Release collision acceptor side; awaiting A-RELEASE-RP PDU
    STA11 = "Sta11"  # Release collision requestor side; awaiting A-RELEASE-RP PDU
    STA12 = "Sta12"  # Release collision acceptor side; awaiting A-RELEASE response primitive
    STA13 = "Sta13"  # Awaiting Transport Connection Close Indication


class Role(Enum):
    REQUESTOR = "requestor"
    ACCEPTOR = "acceptor"


# ---------------------------------------------------------------- events out


class AssociationRequested(msgspec.Struct, frozen=True):
    """A-ASSOCIATE indication: the peer asks for an association (acceptor side)."""

    request: AAssociateRQ


class AssociationAccepted(msgspec.Struct, frozen=True):
    """A-ASSOCIATE confirmation (accept)."""

    accept: AAssociateAC


class AssociationRejected(msgspec.Struct, frozen=True):
    """A-ASSOCIATE confirmation (reject)."""

    reject: AAssociateRJ


class DataReceived(msgspec.Struct, frozen=True):
    """P-DATA indication."""

    pdata: PDataTF


class ReleaseRequested(msgspec.Struct, frozen=True):
    """A-RELEASE indication: the peer asks to release."""


class ReleaseConfirmed(msgspec.Struct, frozen=True):
    """A-RELEASE confirmation: the association is released."""


class Aborted(msgspec.Struct, frozen=True):
    """A-ABORT or A-P-ABORT indication.

    ``abort`` is the peer's A-ABORT PDU when it sent one; otherwise the
    provider aborted (protocol error, connection lost) and ``reason`` says why.
    """

    reason: str
    abort: AAbort | None = None


Event = (
    AssociationRequested
    | AssociationAccepted
    | AssociationRejected
    | DataReceived
    | ReleaseRequested
    | ReleaseConfirmed
    | Aborted
)


# ---------------------------------------------------------------- the table

_S = State
_ALL_ESTABLISHED = (_S.STA6, _S.STA7, _S.STA8, _S.STA9, _S.STA10, _S.STA11, _S.STA12)


def _row(**cells: str) -> dict[State, str]:
    return {State(f"Sta{name[3:]}"): action for name, action in cells.items()}


def _fill(states: Sequence[State], action: str) -> dict[State, str]:
    return dict.fromkeys(states, action)


# PS3.8 Table 9-10, one row per event: state -> action.
TRANSITIONS: dict[str, dict[State, str]] = {
    "Evt1": _row(Sta1="AE-1"),  # A-ASSOCIATE request (local user)
    "Evt2": _row(Sta4="AE-2"),  # Transport connect confirmation
    "Evt3": {  # A-ASSOCIATE-AC PDU received
        **_row(Sta2="AA-1", Sta3="AA-8", Sta5="AE-3", Sta13="AA-6"),
        **_fill(_ALL_ESTABLISHED, "AA-8"),
    },
    "Evt4": {  # A-ASSOCIATE-RJ PDU received
        **_row(Sta2="AA-1", Sta3="AA-8", Sta5="AE-4", Sta13="AA-6"),
        **_fill(_ALL_ESTABLISHED, "AA-8"),
    },
    "Evt5": _row(Sta1="AE-5"),  # Transport connection indication
    "Evt6": {  # A-ASSOCIATE-RQ PDU received
        **_row(Sta2="AE-6", Sta3="AA-8", Sta5="AA-8", Sta13="AA-7"),
        **_fill(_ALL_ESTABLISHED, "AA-8"),
    },
    "Evt7": _row(Sta3="AE-7"),  # A-ASSOCIATE response primitive (accept)
    "Evt8": _row(Sta3="AE-8"),  # A-ASSOCIATE response primitive (reject)
    "Evt9": _row(Sta6="DT-1", Sta8="AR-7"),  # P-DATA request primitive
    "Evt10": {  # P-DATA-TF PDU received
        **_fill(_ALL_ESTABLISHED, "AA-8"),
        **_row(Sta2="AA-1", Sta3="AA-8", Sta5="AA-8", Sta6="DT-2", Sta7="AR-6", Sta13="AA-6"),
    },
    "Evt11": _row(Sta6="AR-1"),  # A-RELEASE request primitive
    "Evt12": {  # A-RELEASE-RQ PDU received
        **_fill(_ALL_ESTABLISHED, "AA-8"),
        **_row(Sta2="AA-1", Sta3="AA-8", Sta5="AA-8", Sta6="AR-2", Sta7="AR-8", Sta13="AA-6"),
    },
    "Evt13": {  # A-RELEASE-RP PDU received
        **_fill(_ALL_ESTABLISHED, "AA-8"),
        **_row(Sta2="AA-1", Sta3="AA-8", Sta5="AA-8", Sta7="AR-3", Sta10="AR-10"),
        **_row(Sta11="AR-3", Sta13="AA-6"),
    },
    "Evt14": _row(Sta8="AR-4", Sta9="AR-9", Sta12="AR-4"),  # A-RELEASE response primitive
    "Evt15": {  # A-ABORT request primitive
        **_row(Sta3="AA-1", Sta4="AA-2", Sta5="AA-1"),
        **_fill(_ALL_ESTABLISHED, "AA-1"),
    },
    "Evt16": {  # A-ABORT PDU received
        **_row(Sta2="AA-2", Sta3="AA-3", Sta5="AA-3", Sta13="AA-2"),
        **_fill(_ALL_ESTABLISHED, "AA-3"),
    },
    "Evt17": {  # Transport connection closed indication
        **_row(Sta2="AA-5", Sta3="AA-4", Sta4="AA-4", Sta5="AA-4", Sta13="AR-5"),
        **_fill(_ALL_ESTABLISHED, "AA-4"),
    },
    "Evt18": _row(Sta2="AA-2", Sta13="AA-2"),  # ARTIM timer expired
    "Evt19": {  # Unrecognized or invalid PDU received
        **_row(Sta2="AA-1", Sta3="AA-8", Sta5="AA-8", Sta13="AA-7"),
        **_fill(_ALL_ESTABLISHED, "AA-8"),
    },
}

_EVENT_FOR_PDU: dict[type, str] = {
    AAssociateAC: "Evt3",
    AAssociateRJ: "Evt4",
    AAssociateRQ: "Evt6",
    PDataTF: "Evt10",
    AReleaseRQ: "Evt12",
    AReleaseRP: "Evt13",
    AAbort: "Evt16",
}


class Association:
    """One association's Upper Layer state, for either role."""

    def __init__(self, role: Role, maximum_length: int) -> None:
        """``maximum_length`` is the Maximum Length this side announces (PS3.8 D.1)."""
        self.role = role
        self.state = State.STA1
        self.transport_should_close = False
        self.artim_running = False
        self._reader = PDUReader(maximum_length)
        self._outgoing: list[bytes] = []
        self._events: list[Event] = []
        self._pending_rq: AAssociateRQ | None = None
        self._pdu: PDU | None = None  # the PDU that triggered the current event
        self._abort_reason = AbortReason.NOT_SPECIFIED
        self._problem = ""
        self._actions: dict[str, Callable[[], State]] = {
            "AE-1": self._ae_1,
            "AE-2": self._ae_2,
            "AE-3": self._ae_3,
            "AE-4": self._ae_4,
            "AE-5": self._ae_5,
            "AE-6": self._ae_6,
            "AE-7": self._ae_7,
            "AE-8": self._ae_8,
            "DT-1": lambda: State.STA6,
            "DT-2": self._dt_2,
            "AR-1": self._ar_1,
            "AR-2": self._ar_2,
            "AR-3": self._ar_3,
            "AR-4": self._ar_4,
            "AR-5": self._ar_5,
            "AR-6": self._ar_6,
            "AR-7": lambda: State.STA8,
            "AR-8": self._ar_8,
            "AR-9": self._ar_9,
            "AR-10": self._ar_10,
            "AA-1": self._aa_1,
            "AA-2": self._aa_2,
            "AA-3": self._aa_3,
            "AA-4": self._aa_4,
            "AA-5": self._aa_5,
            "AA-6": lambda: State.STA13,
            "AA-7": self._aa_7,
            "AA-8": self._aa_8,
        }
        self._reply: PDU | None = None  # AC or RJ handed to Evt7/Evt8

    # ------------------------------------------------------------ plumbing

    def _fire(self, event: str) -> None:
        action = TRANSITIONS[event].get(self.state)
        if action is None:
            raise LocalProtocolError(
                f"{event} is not allowed in {self.state.value} (PS3.8 Table 9-10)"
            )
        self.state = self._actions[action]()

    def data_to_send(self) -> bytes:
        """Bytes queued by local primitives and by actions on received PDUs."""
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        return data

    @property
    def established(self) -> bool:
        return self.state == State.STA6

    # ------------------------------------------------------------ local primitives

    def request(self, request: AAssociateRQ) -> None:
        """A-ASSOCIATE request (Evt1); the caller then opens the connection."""
        self._pending_rq = request
        self._fire("Evt1")

    def connection_established(self) -> None:
        """Transport connect confirmation (Evt2): queues the A-ASSOCIATE-RQ."""
        self._fire("Evt2")

    def connection_accepted(self) -> None:
        """Transport connection indication (Evt5), acceptor side."""
        self._fire("Evt5")

    def accept(self, accept: AAssociateAC) -> None:
        """A-ASSOCIATE response primitive, accept (Evt7)."""
        self._reply = accept
        self._fire("Evt7")

    def reject(self, reject: AAssociateRJ) -> None:
        """A-ASSOCIATE response primitive, reject (Evt8)."""
        self._reply = reject
        self._fire("Evt8")

    def send_pdata(self, buffers: list[object]) -> list[object]:
        """P-DATA request (Evt9), with the PDUs passed through untouched.

        The hot path builds P-DATA-TF PDUs as a scatter-gather list over
        mapped file bytes; they go to the socket unchanged, behind anything
        this object had queued, so that zero copy survives the state machine.
        """
        self._fire("Evt9")
        if self._outgoing:
            return [self.data_to_send(), *buffers]
        return buffers

    def release(self) -> None:
        """A-RELEASE request (Evt11): queues the A-RELEASE-RQ."""
        self._fire("Evt11")

    def release_response(self) -> None:
        """A-RELEASE response (Evt14): queues the A-RELEASE-RP."""
        self._fire("Evt14")

    def abort(self) -> None:
        """A-ABORT request (Evt15); harmless when already idle or closing."""
        if self.state in (State.STA1, State.STA13):
            return
        self._fire("Evt15")

    def connection_closed(self) -> list[Event]:
        """Transport connection closed indication (Evt17)."""
        if self.state == State.STA1:
            return []
        self._fire("Evt17")
        return self._take_events()

    def artim_expired(self) -> None:
        """ARTIM timer expired (Evt18)."""
        self._fire("Evt18")

    # ------------------------------------------------------------ input

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Feed bytes from the peer; return the events they complete."""
        self._reader.feed(data)
        while self.state != State.STA1:
            try:
                framed = self._reader.next_pdu()
                if framed is None:
                    break
                pdu = decode_pdu(*framed)
            except PDUError as exc:
                self._problem = str(exc)
                self._abort_reason = (
                    AbortReason.UNRECOGNIZED_PDU
                    if isinstance(exc, UnrecognizedPDUError)
                    else AbortReason.INVALID_PDU_PARAMETER_VALUE
                )
                self._pdu = None
                self._fire("Evt19")
                # The stream can no longer be framed; drop what is left.
                self._reader = PDUReader(self._reader.maximum_length)
                break
            self._pdu = pdu
            self._abort_reason = AbortReason.UNEXPECTED_PDU
            self._problem = f"unexpected {type(pdu).__name__} in {self.state.value}"
            self._fire(_EVENT_FOR_PDU[type(pdu)])
        return self._take_events()

    def receive_commands(self, data: bytes | bytearray | memoryview) -> list[CommandSummary] | None:
        """Feed bytes that are whole P-DATA-TF PDUs of whole command sets; None if not.

        The usual answer to a C-STORE, read without a PDU, PDV or Command
        object: the compiled hot path (``parse_command_pdus``) decodes the
        command sets. It takes only what ``receive_data`` would take and read
        the same way, in Sta6; for anything else (a partial PDU, a data set,
        another PDU, a malformed one) it returns None and has changed
        nothing, and the caller gives the same bytes to ``receive_data``,
        which reports what is wrong as it always has. The start of a PDU that
        an earlier ``receive_data`` buffered counts as the start of ``data``
        (a peer that writes the PDU header and the PDV apart, as DCMTK does,
        is sometimes read in two parts).
        """
        if self.state is not State.STA6:
            return None
        pending = self._reader.buffered
        if pending:
            data = self._reader.pending() + data
        commands = parse_command_pdus(data, self._reader.pdata_limit)
        if commands is None:
            return None
        if pending:
            self._reader.discard_pending()
        # Each PDU is Evt10 (P-DATA-TF received), which in Sta6 is DT-2: a
        # P-DATA indication, the commands here, and Sta6 again (PS3.8 Table
        # 9-10). The table is asked rather than assumed.
        action = TRANSITIONS["Evt10"][self.state]
        if action != "DT-2":  # pragma: no cover - the table says DT-2
            raise LocalProtocolError(f"Evt10 in {self.state.value} is {action}, not DT-2")
        return commands

    def _take_events(self) -> list[Event]:
        events = self._events
        self._events = []
        return events

    # ------------------------------------------------ actions (PS3.8 Tables 9-6 to 9-9)

    def _queue(self, pdu: PDU) -> None:
        self._outgoing.append(encode(pdu))

    def _ae_1(self) -> State:
        return State.STA4  # the caller issues the transport connect

    def _ae_2(self) -> State:
        assert self._pending_rq is not None
        self._queue(self._pending_rq)
        return State.STA5

    def _ae_3(self) -> State:
        assert isinstance(self._pdu, AAssociateAC)
        self._events.append(AssociationAccepted(self._pdu))
        return State.STA6

    def _ae_4(self) -> State:
        assert isinstance(self._pdu, AAssociateRJ)
        self._events.append(AssociationRejected(self._pdu))
        self.transport_should_close = True
        return State.STA1

    def _ae_5(self) -> State:
        self.artim_running = True
        return State.STA2

    def _ae_6(self) -> State:
        # Whether the request is acceptable is the local user's call (Evt7/Evt8).
        assert isinstance(self._pdu, AAssociateRQ)
        self.artim_running = False
        self._events.append(AssociationRequested(self._pdu))
        return State.STA3

    def _ae_7(self) -> State:
        assert isinstance(self._reply, AAssociateAC)
        self._queue(self._reply)
        return State.STA6

    def _ae_8(self) -> State:
        assert isinstance(self._reply, AAssociateRJ)
        self._queue(self._reply)
        self.artim_running = True
        return State.STA13

    def _dt_2(self) -> State:
        assert isinstance(self._pdu, PDataTF)
        self._events.append(DataReceived(self._pdu))
        return State.STA6

    def _ar_1(self) -> State:
        self._queue(AReleaseRQ())
        return State.STA7

    def _ar_2(self) -> State:
        self._events.append(ReleaseRequested())
        return State.STA8

    def _ar_3(self) -> State:
        self._events.append(ReleaseConfirmed())
        self.transport_should_close = True
        return State.STA1

    def _ar_4(self) -> State:
        self._queue(AReleaseRP())
        self.artim_running = True
        return State.STA13

    def _ar_5(self) -> State:
        self.artim_running = False
        return State.STA1

    def _ar_6(self) -> State:
        assert isinstance(self._pdu, PDataTF)
        self._events.append(DataReceived(self._pdu))
        return State.STA7

    def _ar_8(self) -> State:
        self._events.append(ReleaseRequested())
        return State.STA9 if self.role is Role.REQUESTOR else State.STA10

    def _ar_9(self) -> State:
        self._queue(AReleaseRP())
        return State.STA11

    def _ar_10(self) -> State:
        self._events.append(ReleaseConfirmed())
        return State.STA12

    def _aa_1(self) -> State:
        self._queue(AAbort(AbortSource.SERVICE_USER, AbortReason.NOT_SPECIFIED))
        self.artim_running = True
        return State.STA13

    def _aa_2(self) -> State:
        self.artim_running = False
        self.transport_should_close = True
        return State.STA1

    def _aa_3(self) -> State:
        abort = self._pdu if isinstance(self._pdu, AAbort) else None
        self._events.append(Aborted(abort.describe() if abort else "aborted", abort))
        self.transport_should_close = True
        return State.STA1

    def _aa_4(self) -> State:
        self._events.append(Aborted("the peer closed the connection (A-P-ABORT)"))
        return State.STA1

    def _aa_5(self) -> State:
        self.artim_running = False
        return State.STA1

    def _aa_7(self) -> State:
        self._queue(AAbort(AbortSource.SERVICE_PROVIDER, self._abort_reason))
        return State.STA13

    def _aa_8(self) -> State:
        self._queue(AAbort(AbortSource.SERVICE_PROVIDER, self._abort_reason))
        self._events.append(Aborted(f"protocol error, association aborted: {self._problem}"))
        self.artim_running = True
        return State.STA13
