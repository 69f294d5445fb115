"""The sans-IO Upper Layer state machine against PS3.8 9.2 (Tables 9-6 to 9-10).

Two Association objects, a REQUESTOR and an ACCEPTOR, are joined over an
in-memory link: what one queues in ``data_to_send()`` is fed to the other's
``receive_data()``, optionally one byte at a time.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from dicom_fastsend.errors import LocalProtocolError, PDUError
from dicom_fastsend.protocol.association import (
    TRANSITIONS,
    Aborted,
    Association,
    AssociationAccepted,
    AssociationRejected,
    AssociationRequested,
    DataReceived,
    ReleaseConfirmed,
    ReleaseRequested,
    Role,
    State,
)
from dicom_fastsend.protocol.hotpath import fragment_pdata
from dicom_fastsend.protocol.pdu import (
    PDV,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PDUReader,
    PresentationContextAC,
    PresentationContextRQ,
    UserInformation,
    decode_pdu,
    encode,
)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

RQ = AAssociateRQ(
    "STORESCP",
    "FASTSEND",
    (PresentationContextRQ(1, CT_IMAGE_STORAGE, (EXPLICIT_LE,)),),
    UserInformation(16384, "1.2.3.4"),
)
AC = AAssociateAC(
    "STORESCP",
    "FASTSEND",
    (PresentationContextAC(1, 0, EXPLICIT_LE),),
    UserInformation(16384, "1.2.3.5"),
)

# PS3.8 9.3.6 / 9.3.7 / 9.3.8: the 10-byte control PDUs, written out.
RELEASE_RQ_BYTES = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
RELEASE_RP_BYTES = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
# A-ABORT: type 07H, reserved, length 4, reserved x2, source, reason/diag.
USER_ABORT_BYTES = b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"  # source 0 (service-user)
PROVIDER_ABORT_UNEXPECTED = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x02"  # source 2, unexpected-PDU
PROVIDER_ABORT_UNRECOGNIZED = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x01"  # unrecognized-PDU


@dataclass
class Link:
    """A REQUESTOR and an ACCEPTOR joined by an in-memory byte pipe."""

    chunk: int = 0  # 0: deliver everything at once; n: deliver n bytes per receive_data
    requestor: Association = field(default_factory=lambda: Association(Role.REQUESTOR, 16384))
    acceptor: Association = field(default_factory=lambda: Association(Role.ACCEPTOR, 16384))

    @staticmethod
    def _deliver(data: bytes, to: Association, chunk: int) -> list[object]:
        if not chunk:
            return list(to.receive_data(data))
        events: list[object] = []
        for start in range(0, len(data), chunk):
            events.extend(to.receive_data(data[start : start + chunk]))
        return events

    def to_acceptor(self, data: bytes | None = None) -> list[object]:
        """Deliver what the requestor queued (or ``data``) to the acceptor."""
        payload = self.requestor.data_to_send() if data is None else data
        return self._deliver(payload, self.acceptor, self.chunk)

    def to_requestor(self, data: bytes | None = None) -> list[object]:
        payload = self.acceptor.data_to_send() if data is None else data
        return self._deliver(payload, self.requestor, self.chunk)

    def establish(self) -> None:
        self.requestor.request(RQ)
        assert self.requestor.state is State.STA4  # AE-1
        self.requestor.connection_established()
        assert self.requestor.state is State.STA5  # AE-2
        self.acceptor.connection_accepted()
        assert self.acceptor.state is State.STA2  # AE-5
        assert self.acceptor.artim_running
        events = self.to_acceptor()
        assert events == [AssociationRequested(RQ)]  # AE-6
        assert self.acceptor.state is State.STA3
        assert not self.acceptor.artim_running
        self.acceptor.accept(AC)
        assert self.acceptor.state is State.STA6  # AE-7
        events = self.to_requestor()
        assert events == [AssociationAccepted(AC)]  # AE-3
        assert self.requestor.state is State.STA6
        assert self.requestor.established and self.acceptor.established


def joined(buffers: list[object]) -> bytes:
    return b"".join(bytes(b) for b in buffers)  # type: ignore[call-overload]


@pytest.mark.parametrize("chunk", [0, 1, 7])
def test_full_lifecycle(chunk: int) -> None:
    link = Link(chunk=chunk)
    link.establish()

    # P-DATA requestor -> acceptor (DT-1 then DT-2), a command fragmented over 3 PDUs.
    command = bytes(range(40))
    sent = link.requestor.send_pdata(fragment_pdata(command, 1, True, 22))
    events = link.to_acceptor(joined(sent))
    assert all(isinstance(e, DataReceived) for e in events)
    pdvs = [pdv for e in events for pdv in e.pdata.pdvs]  # type: ignore[attr-defined]
    assert b"".join(bytes(p.data) for p in pdvs) == command
    assert [(p.presentation_context_id, p.is_command, p.is_last) for p in pdvs] == [
        (1, True, False),
        (1, True, False),
        (1, True, True),
    ]
    assert link.acceptor.state is State.STA6

    # P-DATA acceptor -> requestor.
    reply = b"\x00" * 10
    events = link.to_requestor(joined(link.acceptor.send_pdata(fragment_pdata(reply, 1, False, 0))))
    assert len(events) == 1 and isinstance(events[0], DataReceived)
    assert bytes(events[0].pdata.pdvs[0].data) == reply
    assert link.requestor.state is State.STA6

    # Release: AR-1, AR-2, AR-4, AR-3, then AR-5 when the requestor has closed.
    link.requestor.release()
    assert link.requestor.state is State.STA7
    assert link.to_acceptor() == [ReleaseRequested()]
    assert link.acceptor.state is State.STA8
    link.acceptor.release_response()
    assert link.acceptor.state is State.STA13
    assert link.acceptor.artim_running
    assert not link.acceptor.transport_should_close  # the requestor closes (PS3.8 7.2.2)
    assert link.to_requestor() == [ReleaseConfirmed()]
    assert link.requestor.state is State.STA1
    assert link.requestor.transport_should_close  # AR-3: close transport connection
    assert link.acceptor.connection_closed() == []  # Evt17 in Sta13 -> AR-5
    assert link.acceptor.state is State.STA1
    assert not link.acceptor.artim_running
    assert link.requestor.data_to_send() == b""
    assert link.acceptor.data_to_send() == b""


def test_release_pdus_on_the_wire() -> None:
    link = Link()
    link.establish()
    link.requestor.release()
    assert link.requestor.data_to_send() == RELEASE_RQ_BYTES
    link.to_acceptor(RELEASE_RQ_BYTES)
    link.acceptor.release_response()
    assert link.acceptor.data_to_send() == RELEASE_RP_BYTES


def test_pdata_while_awaiting_release_response() -> None:
    """Sta7 + Evt10 -> AR-6 and Sta8 + Evt9 -> AR-7: data still flows during release."""
    link = Link()
    link.establish()
    link.requestor.release()
    link.to_acceptor()
    assert link.acceptor.state is State.STA8
    link.acceptor.send_pdata([])  # AR-7
    assert link.acceptor.state is State.STA8
    events = link.to_requestor(joined(fragment_pdata(b"ab", 1, False, 0)))
    assert len(events) == 1 and isinstance(events[0], DataReceived)  # AR-6
    assert link.requestor.state is State.STA7


def test_rejection() -> None:
    link = Link()
    link.requestor.request(RQ)
    link.requestor.connection_established()
    link.acceptor.connection_accepted()
    link.to_acceptor()
    reject = AAssociateRJ(1, 1, 7)
    link.acceptor.reject(reject)  # AE-8
    assert link.acceptor.state is State.STA13
    assert link.acceptor.artim_running
    # PS3.8 9.3.4: 03H, reserved, length 4, reserved, result 1, source 1, reason 7
    data = link.acceptor.data_to_send()
    assert data == b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x07"
    events = link.to_requestor(data)
    assert events == [AssociationRejected(reject)]  # AE-4
    assert link.requestor.state is State.STA1
    assert link.requestor.transport_should_close
    assert link.acceptor.connection_closed() == []  # AR-5
    assert link.acceptor.state is State.STA1


@pytest.mark.parametrize("aborter", ["requestor", "acceptor"])
def test_local_abort_and_peer_abort(aborter: str) -> None:
    link = Link()
    link.establish()
    local, peer = (
        (link.requestor, link.acceptor)
        if aborter == "requestor"
        else (link.acceptor, link.requestor)
    )
    local.abort()  # Evt15 in Sta6 -> AA-1
    assert local.state is State.STA13
    assert local.artim_running
    data = local.data_to_send()
    assert data == USER_ABORT_BYTES
    events = peer.receive_data(data)  # Evt16 in Sta6 -> AA-3
    assert len(events) == 1
    (event,) = events
    assert isinstance(event, Aborted)
    assert event.abort == AAbort(0, 0)
    assert peer.state is State.STA1
    assert peer.transport_should_close
    assert local.connection_closed() == []  # Evt17 in Sta13 -> AR-5
    assert local.state is State.STA1
    assert not local.artim_running


def test_abort_is_a_no_op_when_idle_or_closing() -> None:
    association = Association(Role.REQUESTOR, 16384)
    association.abort()
    assert association.state is State.STA1
    assert association.data_to_send() == b""


def test_abort_while_connecting_closes_without_a_pdu() -> None:
    association = Association(Role.REQUESTOR, 16384)
    association.request(RQ)
    association.abort()  # Sta4 + Evt15 -> AA-2
    assert association.state is State.STA1
    assert association.transport_should_close
    assert association.data_to_send() == b""


def test_unexpected_pdu_in_sta6() -> None:
    link = Link()
    link.establish()
    events = link.to_requestor(encode(AC))  # Evt3 in Sta6 -> AA-8
    assert len(events) == 1 and isinstance(events[0], Aborted)
    assert events[0].abort is None  # an A-P-ABORT indication, not the peer's A-ABORT
    assert link.requestor.state is State.STA13
    assert link.requestor.artim_running
    assert link.requestor.data_to_send() == PROVIDER_ABORT_UNEXPECTED
    # Further PDUs while in Sta13 are ignored (AA-6) ...
    assert link.to_requestor(RELEASE_RP_BYTES) == []
    assert link.requestor.state is State.STA13
    assert link.requestor.data_to_send() == b""
    # ... and the ARTIM timer ends it (Evt18 -> AA-2).
    link.requestor.artim_expired()
    assert link.requestor.state is State.STA1
    assert link.requestor.transport_should_close


def test_release_rp_in_sta6_is_unexpected() -> None:
    link = Link()
    link.establish()
    events = link.to_acceptor(RELEASE_RP_BYTES)  # Evt13 in Sta6 -> AA-8
    assert len(events) == 1 and isinstance(events[0], Aborted)
    assert link.acceptor.state is State.STA13
    assert link.acceptor.data_to_send() == PROVIDER_ABORT_UNEXPECTED


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"\xff\x00\x00\x00\x00\x04\x01\x02\x03\x04", id="unknown-type"),
        pytest.param(b"\x00" * 10, id="type-zero"),
    ],
)
def test_garbage_is_evt19(garbage: bytes) -> None:
    link = Link()
    link.establish()
    events = link.to_acceptor(garbage)  # Evt19 in Sta6 -> AA-8
    assert len(events) == 1 and isinstance(events[0], Aborted)
    assert link.acceptor.state is State.STA13
    assert link.acceptor.data_to_send() == PROVIDER_ABORT_UNRECOGNIZED


def test_malformed_pdu_is_evt19() -> None:
    link = Link()
    link.establish()
    # An A-RELEASE-RQ whose PDU-length says 3 instead of the fixed 4 (PS3.8 9.3.6).
    events = link.to_acceptor(b"\x05\x00\x00\x00\x00\x03\x00\x00\x00")
    assert len(events) == 1 and isinstance(events[0], Aborted)
    assert link.acceptor.state is State.STA13
    abort = decode_pdu(0x07, memoryview(link.acceptor.data_to_send())[6:])
    assert isinstance(abort, AAbort)
    assert abort.source == 2  # service-provider


def test_abort_received_in_sta13_closes() -> None:
    link = Link()
    link.establish()
    link.requestor.abort()
    link.requestor.data_to_send()
    assert link.to_requestor(USER_ABORT_BYTES) == []  # Sta13 + Evt16 -> AA-2
    assert link.requestor.state is State.STA1
    assert link.requestor.transport_should_close
    assert not link.requestor.artim_running


def test_connection_closed_in_sta6() -> None:
    link = Link()
    link.establish()
    events = link.requestor.connection_closed()  # Evt17 in Sta6 -> AA-4
    assert len(events) == 1 and isinstance(events[0], Aborted)
    assert events[0].abort is None
    assert "A-P-ABORT" in events[0].reason
    assert link.requestor.state is State.STA1


def test_acceptor_connection_closed_or_artim_before_request() -> None:
    association = Association(Role.ACCEPTOR, 16384)
    association.connection_accepted()
    assert association.connection_closed() == []  # Sta2 + Evt17 -> AA-5
    assert association.state is State.STA1
    assert not association.artim_running

    association = Association(Role.ACCEPTOR, 16384)
    association.connection_accepted()
    association.artim_expired()  # Sta2 + Evt18 -> AA-2
    assert association.state is State.STA1
    assert association.transport_should_close


def test_release_collision() -> None:
    """PS3.8 9.2.2: both sides send A-RELEASE-RQ at once."""
    link = Link()
    link.establish()
    link.requestor.release()
    link.acceptor.release()
    requestor_rq = link.requestor.data_to_send()
    acceptor_rq = link.acceptor.data_to_send()
    assert requestor_rq == acceptor_rq == RELEASE_RQ_BYTES

    assert link.to_acceptor(requestor_rq) == [ReleaseRequested()]  # Sta7 + Evt12 -> AR-8
    assert link.acceptor.state is State.STA10  # acceptor side
    assert link.to_requestor(acceptor_rq) == [ReleaseRequested()]
    assert link.requestor.state is State.STA9  # requestor side

    link.requestor.release_response()  # Sta9 + Evt14 -> AR-9
    assert link.requestor.state is State.STA11
    assert link.to_acceptor() == [ReleaseConfirmed()]  # Sta10 + Evt13 -> AR-10
    assert link.acceptor.state is State.STA12

    link.acceptor.release_response()  # Sta12 + Evt14 -> AR-4
    assert link.acceptor.state is State.STA13
    assert link.to_requestor() == [ReleaseConfirmed()]  # Sta11 + Evt13 -> AR-3
    assert link.requestor.state is State.STA1
    assert link.requestor.transport_should_close
    assert link.acceptor.connection_closed() == []  # AR-5
    assert link.acceptor.state is State.STA1


def test_local_primitives_in_the_wrong_state() -> None:
    idle = Association(Role.REQUESTOR, 16384)
    for call in (
        idle.release,
        idle.release_response,
        idle.connection_established,
        idle.artim_expired,
        lambda: idle.send_pdata([]),
        lambda: idle.accept(AC),
        lambda: idle.reject(AAssociateRJ(1, 1, 1)),
    ):
        with pytest.raises(LocalProtocolError):
            call()
        assert idle.state is State.STA1
    assert idle.data_to_send() == b""

    link = Link()
    link.establish()
    with pytest.raises(LocalProtocolError):
        link.requestor.request(RQ)  # Evt1 only in Sta1
    with pytest.raises(LocalProtocolError):
        link.requestor.release_response()  # Evt14 not in Sta6
    with pytest.raises(LocalProtocolError):
        link.acceptor.accept(AC)  # Evt7 only in Sta3
    link.requestor.release()
    with pytest.raises(LocalProtocolError):
        link.requestor.send_pdata([])  # Evt9 not in Sta7
    with pytest.raises(LocalProtocolError):
        link.requestor.release()  # Evt11 only in Sta6
    assert link.requestor.state is State.STA7


def test_send_pdata_passes_buffers_through_untouched() -> None:
    link = Link()
    link.establish()
    data = bytearray(b"x" * 100)
    buffers = fragment_pdata(data, 1, False, 40)
    out = link.requestor.send_pdata(list(buffers))
    assert len(out) == len(buffers)
    assert all(a is b for a, b in zip(out, buffers, strict=True))
    assert link.requestor.data_to_send() == b""


def test_send_pdata_goes_behind_queued_pdus() -> None:
    link = Link()
    link.requestor.request(RQ)
    link.requestor.connection_established()
    link.acceptor.connection_accepted()
    link.to_acceptor()
    link.acceptor.accept(AC)  # the A-ASSOCIATE-AC is queued and not yet collected
    buffers: list[object] = [memoryview(b"header"), memoryview(b"fragment")]
    out = link.acceptor.send_pdata(buffers)
    assert out[0] == encode(AC)
    assert out[1] is buffers[0] and out[2] is buffers[1]
    assert link.acceptor.data_to_send() == b""


def test_pdata_over_our_maximum_length_aborts() -> None:
    link = Link()
    link.establish()
    # A P-DATA-TF header announcing 16385 bytes, one more than the 16384 we announced.
    events = link.to_acceptor(b"\x04\x00" + struct.pack(">I", 16385))
    assert len(events) == 1 and isinstance(events[0], Aborted)
    assert link.acceptor.state is State.STA13
    abort = decode_pdu(0x07, memoryview(link.acceptor.data_to_send())[6:])
    assert isinstance(abort, AAbort) and abort.source == 2


# ----------------------------------------------------------------- the table itself


def _expected_table() -> dict[tuple[str, str], str]:
    """PS3.8 Table 9-10 (DICOM State Transition Table), transcribed row by row.

    Blank cells are left out. Columns Sta1..Sta13.
    """
    est = [f"Sta{n}" for n in range(6, 13)]  # Sta6..Sta12: association established
    rows: dict[str, dict[str, str]] = {
        # Evt1 A-ASSOCIATE request (local user)
        "Evt1": {"Sta1": "AE-1"},
        # Evt2 Transport connect confirmation (local transport service)
        "Evt2": {"Sta4": "AE-2"},
        # Evt3 A-ASSOCIATE-AC PDU (received on transport connection)
        "Evt3": {"Sta2": "AA-1", "Sta3": "AA-8", "Sta5": "AE-3", "Sta13": "AA-6"}
        | dict.fromkeys(est, "AA-8"),
        # Evt4 A-ASSOCIATE-RJ PDU
        "Evt4": {"Sta2": "AA-1", "Sta3": "AA-8", "Sta5": "AE-4", "Sta13": "AA-6"}
        | dict.fromkeys(est, "AA-8"),
        # Evt5 Transport connection indication
        "Evt5": {"Sta1": "AE-5"},
        # Evt6 A-ASSOCIATE-RQ PDU
        "Evt6": {"Sta2": "AE-6", "Sta3": "AA-8", "Sta5": "AA-8", "Sta13": "AA-7"}
        | dict.fromkeys(est, "AA-8"),
        # Evt7 A-ASSOCIATE response primitive (accept)
        "Evt7": {"Sta3": "AE-7"},
        # Evt8 A-ASSOCIATE response primitive (reject)
        "Evt8": {"Sta3": "AE-8"},
        # Evt9 P-DATA request primitive
        "Evt9": {"Sta6": "DT-1", "Sta8": "AR-7"},
        # Evt10 P-DATA-TF PDU
        "Evt10": {"Sta2": "AA-1", "Sta3": "AA-8", "Sta5": "AA-8", "Sta13": "AA-6"}
        | dict.fromkeys(est, "AA-8")
        | {"Sta6": "DT-2", "Sta7": "AR-6"},
        # Evt11 A-RELEASE request primitive
        "Evt11": {"Sta6": "AR-1"},
        # Evt12 A-RELEASE-RQ PDU
        "Evt12": {"Sta2": "AA-1", "Sta3": "AA-8", "Sta5": "AA-8", "Sta13": "AA-6"}
        | dict.fromkeys(est, "AA-8")
        | {"Sta6": "AR-2", "Sta7": "AR-8"},
        # Evt13 A-RELEASE-RP PDU
        "Evt13": {"Sta2": "AA-1", "Sta3": "AA-8", "Sta5": "AA-8", "Sta13": "AA-6"}
        | dict.fromkeys(est, "AA-8")
        | {"Sta7": "AR-3", "Sta10": "AR-10", "Sta11": "AR-3"},
        # Evt14 A-RELEASE response primitive
        "Evt14": {"Sta8": "AR-4", "Sta9": "AR-9", "Sta12": "AR-4"},
        # Evt15 A-ABORT request primitive
        "Evt15": {"Sta3": "AA-1", "Sta4": "AA-2", "Sta5": "AA-1"} | dict.fromkeys(est, "AA-1"),
        # Evt16 A-ABORT PDU
        "Evt16": {"Sta2": "AA-2", "Sta3": "AA-3", "Sta5": "AA-3", "Sta13": "AA-2"}
        | dict.fromkeys(est, "AA-3"),
        # Evt17 Transport connection closed indication
        "Evt17": {"Sta2": "AA-5", "Sta3": "AA-4", "Sta4": "AA-4", "Sta5": "AA-4", "Sta13": "AR-5"}
        | dict.fromkeys(est, "AA-4"),
        # Evt18 ARTIM timer expired
        "Evt18": {"Sta2": "AA-2", "Sta13": "AA-2"},
        # Evt19 Unrecognized or invalid PDU received
        "Evt19": {"Sta2": "AA-1", "Sta3": "AA-8", "Sta5": "AA-8", "Sta13": "AA-7"}
        | dict.fromkeys(est, "AA-8"),
    }
    return {(event, state): action for event, row in rows.items() for state, action in row.items()}


def test_transition_table_matches_ps3_8_table_9_10() -> None:
    actual = {
        (event, state.value): action
        for event, row in TRANSITIONS.items()
        for state, action in row.items()
    }
    expected = _expected_table()
    assert sorted(set(actual) - set(expected)) == []  # cells the standard leaves blank
    assert sorted(set(expected) - set(actual)) == []  # cells missing from the code
    assert {k: v for k, v in actual.items() if expected[k] != v} == {}


def test_transcription_sanity() -> None:
    """The transcription has 19 events, 13 states and the known count of filled cells."""
    expected = _expected_table()
    assert {event for event, _ in expected} == {f"Evt{n}" for n in range(1, 20)}
    assert {state for _, state in expected} == {f"Sta{n}" for n in range(1, 14)}
    # Rows: 1+1+11+11+1+11+1+1+2+11+1+11+11+3+10+11+12+2+11
    assert len(expected) == 123


# ----------------------------------------------------------------- random walks through the table

# A model of PS3.8 9.2 drives an Association with random local primitives and
# random received PDUs (valid, unexpected in the state, unrecognized, invalid)
# and checks every step against it: the next state, the PDUs sent, the
# indications issued, the transport close, and that a primitive the table has
# no cell for raises LocalProtocolError and changes nothing. The model's table
# is _expected_table() above, transcribed from the standard, not TRANSITIONS.

TABLE = _expected_table()
MAXIMUM_LENGTH = 16384
LOCAL_REJECT = AAssociateRJ(1, 1, 7)  # rejected-permanent, called-AE-title-not-recognized


@dataclass(frozen=True)
class Action:
    """An action of PS3.8 Tables 9-6 to 9-9, as far as its caller sees it."""

    next_state: str  # "Sta9|Sta10": AR-8 goes by the role (requestor | acceptor)
    sends: type | None = None  # the PDU it sends (DT-1, AR-7: send_pdata passes it through)
    indication: type | None = None  # the indication it issues to the service user
    closes: bool = False  # it closes the transport connection


ACTIONS: dict[str, Action] = {
    "AE-1": Action("Sta4"),  # the caller issues the transport connect request
    "AE-2": Action("Sta5", sends=AAssociateRQ),
    "AE-3": Action("Sta6", indication=AssociationAccepted),
    "AE-4": Action("Sta1", indication=AssociationRejected, closes=True),
    "AE-5": Action("Sta2"),
    "AE-6": Action("Sta3", indication=AssociationRequested),  # acceptance is the user's call
    "AE-7": Action("Sta6", sends=AAssociateAC),
    "AE-8": Action("Sta13", sends=AAssociateRJ),
    "DT-1": Action("Sta6"),
    "DT-2": Action("Sta6", indication=DataReceived),
    "AR-1": Action("Sta7", sends=AReleaseRQ),
    "AR-2": Action("Sta8", indication=ReleaseRequested),
    "AR-3": Action("Sta1", indication=ReleaseConfirmed, closes=True),
    "AR-4": Action("Sta13", sends=AReleaseRP),
    "AR-5": Action("Sta1"),
    "AR-6": Action("Sta7", indication=DataReceived),
    "AR-7": Action("Sta8"),
    "AR-8": Action("Sta9|Sta10", indication=ReleaseRequested),
    "AR-9": Action("Sta11", sends=AReleaseRP),
    "AR-10": Action("Sta12", indication=ReleaseConfirmed),
    "AA-1": Action("Sta13", sends=AAbort),  # service-user source
    "AA-2": Action("Sta1", closes=True),
    "AA-3": Action("Sta1", indication=Aborted, closes=True),
    "AA-4": Action("Sta1", indication=Aborted),  # A-P-ABORT: the connection is gone
    "AA-5": Action("Sta1"),
    "AA-6": Action("Sta13"),  # the PDU is ignored
    "AA-7": Action("Sta13", sends=AAbort),
    "AA-8": Action("Sta13", sends=AAbort, indication=Aborted),  # service-provider source
}

# PS3.8 Table 9-10's events for the PDU types of PS3.8 9.3.1.
EVENT_FOR_PDU_TYPE = {
    0x01: "Evt6",
    0x02: "Evt3",
    0x03: "Evt4",
    0x04: "Evt10",
    0x05: "Evt12",
    0x06: "Evt13",
    0x07: "Evt16",
}
# A-ABORT reasons when the provider aborts (PS3.8 9.3.8).
UNRECOGNIZED_PDU, UNEXPECTED_PDU, INVALID_PDU_PARAMETER_VALUE = 1, 2, 6
CONNECTED = [s for s in State if s not in (State.STA1, State.STA4)]
# The local primitives and transport indications (PS3.8 Table 9-10's Evt1 ... Evt18).
PRIMITIVES = ("Evt1", "Evt2", "Evt5", "Evt7", "Evt8", "Evt9", "Evt11", "Evt14", "Evt15")
PRIMITIVES += ("Evt17", "Evt18")
# Blank cells the module documents as no-ops rather than misuse: an A-ABORT
# request when there is nothing left to abort, a close of no connection.
HARMLESS = {("Evt15", "Sta1"), ("Evt15", "Sta13"), ("Evt17", "Sta1")}
# How often a step follows the protocol, against the other kinds of step.
STEPS = ("protocol", "protocol", "protocol", "protocol", "allowed", "refused", "anything")
CUTS = st.lists(st.integers(1, 200), max_size=8)  # where received bytes are split
ONE_PDV = (PDV(1, True, True, memoryview(b"\x00\x01")),)


@dataclass(frozen=True)
class Incoming:
    """One PDU from the peer: its bytes and what the model makes of it."""

    raw: bytes
    kind: str  # "valid", "unrecognized" (unknown PDU type) or "invalid"
    pdu: object = None  # the decoded PDU when valid


def _valid(pdu: object) -> Incoming:
    return Incoming(encode(pdu), "valid", pdu)  # type: ignore[arg-type]


def _mutated(source: Incoming, edits: list[tuple[int, int]]) -> Incoming:
    """``source`` with bytes of its variable field changed; its header stays valid."""
    body = bytearray(source.raw[6:])
    for position, value in edits:
        body[position % len(body)] = value
    raw = source.raw[:6] + bytes(body)
    try:
        pdu = decode_pdu(raw[0], memoryview(raw)[6:])
    except PDUError:
        return Incoming(raw, "invalid")
    return Incoming(raw, "valid", pdu)


PDVS = st.lists(
    st.builds(
        PDV,
        st.integers(0, 127).map(lambda n: 2 * n + 1),
        st.booleans(),
        st.booleans(),
        st.binary(max_size=40).map(memoryview),
    ),
    min_size=1,
    max_size=3,
)
BYTE = st.integers(0, 255)
VALID_BY_TYPE: dict[int, st.SearchStrategy[Incoming]] = {
    0x01: st.just(_valid(RQ)),
    0x02: st.just(_valid(AC)),
    0x03: st.builds(AAssociateRJ, BYTE, BYTE, BYTE).map(_valid),
    0x04: PDVS.map(lambda pdvs: _valid(PDataTF(tuple(pdvs)))),
    0x05: st.just(_valid(AReleaseRQ())),
    0x06: st.just(_valid(AReleaseRP())),
    0x07: st.builds(AAbort, BYTE, BYTE).map(_valid),
}
VALID = st.one_of(*VALID_BY_TYPE.values())
MALFORMED = st.one_of(
    # A PDU type PS3.8 9.3.1 does not define.
    st.builds(
        lambda pdu_type, body: Incoming(
            bytes([pdu_type, 0]) + struct.pack(">I", len(body)) + body, "unrecognized"
        ),
        st.sampled_from([0x00, *range(0x08, 0x100)]),
        st.binary(max_size=12),
    ),
    # A P-DATA-TF longer than the Maximum Length we announced (PS3.8 D.1).
    st.integers(MAXIMUM_LENGTH + 1, 0xFFFFFFFF).map(
        lambda length: Incoming(b"\x04\x00" + struct.pack(">I", length), "invalid")
    ),
    # A fixed-size PDU (PS3.8 9.3.4, 9.3.6-9.3.8) whose variable field is not 4 bytes.
    st.builds(
        lambda pdu_type, body: Incoming(
            bytes([pdu_type, 0]) + struct.pack(">I", len(body)) + body, "invalid"
        ),
        st.sampled_from([0x03, 0x05, 0x06, 0x07]),
        st.binary(max_size=12).filter(lambda body: len(body) != 4),
    ),
)
INCOMING = st.one_of(
    VALID,
    MALFORMED,
    st.builds(
        _mutated, VALID, st.lists(st.tuples(st.integers(0, 400), BYTE), min_size=1, max_size=4)
    ),
)


def _sent(data: bytes) -> list[object]:
    """What an Association queued, decoded: it must be whole, well-formed PDUs."""
    reader = PDUReader(0)
    reader.feed(data)
    pdus: list[object] = []
    while (framed := reader.next_pdu()) is not None:
        pdus.append(decode_pdu(*framed))
    assert reader.buffered == 0, f"{reader.buffered} bytes that are not a whole PDU: {data!r}"
    return [_comparable(pdu) for pdu in pdus]


def _comparable(pdu: object) -> object:
    if isinstance(pdu, AAbort):
        # PS3.8 9.3.8: the reason is not significant when the service-user aborts.
        return ("A-ABORT", pdu.source, pdu.reason if pdu.source == 2 else None)
    if isinstance(pdu, PDataTF):
        return ("P-DATA-TF", encode(pdu))
    return pdu


def _indication(event: object) -> tuple[type, object]:
    """An indication and the PDU it carries, comparable with the model's."""
    if isinstance(event, AssociationRequested):
        return type(event), event.request
    if isinstance(event, AssociationAccepted):
        return type(event), event.accept
    if isinstance(event, AssociationRejected):
        return type(event), event.reject
    if isinstance(event, DataReceived):
        return type(event), encode(event.pdata)
    if isinstance(event, Aborted):
        return type(event), event.abort  # the peer's A-ABORT (AA-3) or None (A-P-ABORT)
    return type(event), None


class AssociationWalk(RuleBasedStateMachine):
    """Random walks of one association per connection, checked step by step."""

    def __init__(self) -> None:
        super().__init__()
        self.role = Role.REQUESTOR
        self.association = Association(self.role, MAXIMUM_LENGTH)
        self.state = "Sta1"  # the model's
        self.closing = False  # the model's: an action closed the transport connection
        self.used = False
        self.cells: set[tuple[str, str]] = set()  # (event, state) pairs tried

    @initialize(role=st.sampled_from(Role))
    def choose_role(self, role: Role) -> None:
        self.role = role
        self.association = Association(role, MAXIMUM_LENGTH)

    # ------------------------------------------------------------ the model

    def apply(
        self, action_name: str, pdu: object = None, reason: int = UNEXPECTED_PDU
    ) -> tuple[list[object], list[tuple[type, object]]]:
        """Move the model on by one action; return the PDUs and indications it expects."""
        action = ACTIONS[action_name]
        sends: list[object] = []
        if action.sends is AAbort:
            source = 0 if action_name == "AA-1" else 2
            sends.append(("A-ABORT", source, reason if source == 2 else None))
        elif action.sends is AAssociateRQ:
            sends.append(RQ)
        elif action.sends is AAssociateAC:
            sends.append(AC)
        elif action.sends is AAssociateRJ:
            sends.append(LOCAL_REJECT)
        elif action.sends is not None:
            sends.append(action.sends())
        indications: list[tuple[type, object]] = []
        if action.indication is not None:
            carried = pdu if action_name in ("AE-3", "AE-4", "AE-6", "AA-3") else None
            if action.indication is DataReceived:
                carried = encode(pdu)  # type: ignore[arg-type]
            indications.append((action.indication, carried))
        if action.next_state == "Sta9|Sta10":
            self.state = "Sta9" if self.role is Role.REQUESTOR else "Sta10"
        else:
            self.state = action.next_state
        self.closing |= action.closes
        return sends, indications

    def primitive(self, event: str, pdvs: tuple[PDV, ...] = ()) -> None:
        """Issue the local primitive of `event`; a blank cell must be refused, harmlessly.

        `pdvs` are those of the P-DATA-TF for Evt9.
        """
        association = self.association
        if event in ("Evt1", "Evt5") and self.state == "Sta1" and self.used:
            # This class serves one association; a new connection gets a new one.
            association = self.association = Association(self.role, MAXIMUM_LENGTH)
            self.closing = self.used = False
        pdata = encode(PDataTF(pdvs or ONE_PDV))
        self.cells.add((event, self.state))
        calls: dict[str, Callable[[], object]] = {
            "Evt1": lambda: association.request(RQ),
            "Evt2": association.connection_established,
            "Evt5": association.connection_accepted,
            "Evt7": lambda: association.accept(AC),
            "Evt8": lambda: association.reject(LOCAL_REJECT),
            "Evt9": lambda: association.send_pdata([pdata]),
            "Evt11": association.release,
            "Evt14": association.release_response,
            "Evt15": association.abort,
            "Evt17": association.connection_closed,
            "Evt18": association.artim_expired,
        }
        call = calls[event]
        action = TABLE.get((event, self.state))
        if (event, self.state) in HARMLESS:
            result = call()
            assert result in (None, []), result  # no indication ...
            assert association.data_to_send() == b""  # ... no PDU ...
            assert association.state.value == self.state  # ... no move
            return
        if action is None:
            before = association.state
            with pytest.raises(LocalProtocolError):
                call()
            assert association.state is before
            assert association.data_to_send() == b""
            return
        result = call()
        self.used = True
        sends, indications = self.apply(action)
        assert _sent(association.data_to_send()) == sends, action
        if event == "Evt9":  # DT-1, AR-7: the caller's PDU, untouched and alone
            assert isinstance(result, list) and len(result) == 1 and result[0] is pdata
        if event == "Evt17":
            assert isinstance(result, list)
            assert [_indication(e) for e in result] == indications

    def receive(self, incoming: list[Incoming], cuts: list[int]) -> None:
        """Feed the peer's PDUs, split at `cuts` when all are valid; check what follows."""
        sends: list[object] = []
        indications: list[tuple[type, object]] = []
        for item in incoming:
            if self.state == "Sta1":
                break  # the association is over: what follows is not read
            if item.kind == "valid":
                event, reason = EVENT_FOR_PDU_TYPE[item.raw[0]], UNEXPECTED_PDU
            else:
                event = "Evt19"
                reason = (
                    UNRECOGNIZED_PDU if item.kind == "unrecognized" else INVALID_PDU_PARAMETER_VALUE
                )
            action = TABLE[(event, self.state)]  # no blank cells while connected
            self.cells.add((event, self.state))
            more_sends, more_indications = self.apply(action, item.pdu, reason)
            sends += more_sends
            indications += more_indications
            if event == "Evt19":
                break  # the stream cannot be framed any more: the rest is dropped
        data = b"".join(item.raw for item in incoming)
        if all(item.kind == "valid" for item in incoming):
            # Whole PDUs in any split: the events must not depend on it.
            positions = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
            chunks = [data[a:b] for a, b in zip(positions, positions[1:], strict=False)]
        else:
            # One read, so the bytes after a malformed PDU are dropped with it.
            chunks = [data]
        events: list[object] = []
        for chunk in chunks:
            events += self.association.receive_data(chunk)
        self.used = True
        assert [_indication(e) for e in events] == indications
        assert _sent(self.association.data_to_send()) == sends

    def moves_on(self, action: str | None) -> bool:
        return (
            action is not None
            and not action.startswith("AA-")
            and ACTIONS[action].next_state != self.state
        )

    # ------------------------------------------------------------ the walk

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        """One step: mostly what the protocol expects next, so that walks get past
        Sta5 into release and release collision; otherwise any primitive the table
        allows (aborts, closes), one it refuses, or whatever the peer may send."""
        kind = data.draw(st.sampled_from(STEPS), label="step")
        allowed = [e for e in PRIMITIVES if (e, self.state) in TABLE or (e, self.state) in HARMLESS]
        refused = [e for e in PRIMITIVES if e not in allowed]
        connected = State(self.state) in CONNECTED
        if kind == "anything" and connected:
            incoming = data.draw(st.lists(INCOMING, min_size=1, max_size=3), label="PDUs")
            self.receive(incoming, data.draw(CUTS, label="cuts"))
            return
        if kind == "refused" and refused:
            self.issue(data.draw(st.sampled_from(refused), label="event"), data)
            return
        moves: list[str | int] = list(allowed)
        if kind == "protocol":
            # Local primitives and peer PDUs that move on to another state
            # without an abort (AA-*); P-DATA, which stays, is left to the rest.
            moves = [e for e in allowed if self.moves_on(TABLE.get((e, self.state)))]
            if connected:
                moves += [
                    pdu_type
                    for pdu_type, event in EVENT_FOR_PDU_TYPE.items()
                    if self.moves_on(TABLE[(event, self.state)])
                ]
            moves = moves or list(allowed)
        move = data.draw(st.sampled_from(moves), label="move")
        if isinstance(move, int):
            pdu = data.draw(VALID_BY_TYPE[move], label="PDU")
            self.receive([pdu], data.draw(CUTS, label="cuts"))
        else:
            self.issue(move, data)

    def issue(self, event: str, data: st.DataObject) -> None:
        self.primitive(event, tuple(data.draw(PDVS, label="PDVs")) if event == "Evt9" else ())

    # ------------------------------------------------------------ PS3.8 9.2, always

    @invariant()
    def state_is_the_models(self) -> None:
        assert isinstance(self.association.state, State)
        assert self.association.state.value == self.state

    @invariant()
    def established_only_in_sta6(self) -> None:
        assert self.association.established == (self.state == "Sta6")

    @invariant()
    def artim_runs_only_awaiting_a_request_or_a_close(self) -> None:
        # PS3.8 9.1.5: ARTIM is started in Sta2 and Sta13 and stopped on leaving them.
        assert self.association.artim_running == (self.state in ("Sta2", "Sta13"))

    @invariant()
    def the_transport_is_closed_when_an_action_says_so(self) -> None:
        # AE-4, AR-3, AA-2, AA-3 close it; each ends in Sta1.
        assert self.association.transport_should_close == self.closing
        if self.closing:
            assert self.state == "Sta1"


AssociationWalk.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None
)
test_random_walks_follow_ps3_8_9_2 = AssociationWalk.TestCase


# ----------------------------------------------------------------- every cell, on purpose

# A path from Sta1 to each state: local primitives by event, peer PDUs by type.
_TO_STA6 = ["Evt1", "Evt2", 0x02]  # requestor: A-ASSOCIATE-RQ sent, -AC received
_TO_STA10 = ["Evt5", 0x01, "Evt7", "Evt11", 0x05]  # acceptor: release collision
PATHS: dict[str, tuple[Role, list[str | int]]] = {
    "Sta1": (Role.REQUESTOR, []),
    "Sta2": (Role.ACCEPTOR, ["Evt5"]),
    "Sta3": (Role.ACCEPTOR, ["Evt5", 0x01]),
    "Sta4": (Role.REQUESTOR, ["Evt1"]),
    "Sta5": (Role.REQUESTOR, ["Evt1", "Evt2"]),
    "Sta6": (Role.REQUESTOR, _TO_STA6),
    "Sta7": (Role.REQUESTOR, [*_TO_STA6, "Evt11"]),
    "Sta8": (Role.REQUESTOR, [*_TO_STA6, 0x05]),
    "Sta9": (Role.REQUESTOR, [*_TO_STA6, "Evt11", 0x05]),
    "Sta10": (Role.ACCEPTOR, _TO_STA10),
    "Sta11": (Role.REQUESTOR, [*_TO_STA6, "Evt11", 0x05, "Evt14"]),
    "Sta12": (Role.ACCEPTOR, [*_TO_STA10, 0x06]),
    "Sta13": (Role.REQUESTOR, [*_TO_STA6, "Evt15"]),
}
FIXED_PDUS: dict[str | int, Incoming] = {
    0x01: _valid(RQ),
    0x02: _valid(AC),
    0x03: _valid(AAssociateRJ(2, 3, 1)),
    0x04: _valid(PDataTF(ONE_PDV)),
    0x05: _valid(AReleaseRQ()),
    0x06: _valid(AReleaseRP()),
    0x07: _valid(AAbort(2, 0)),
    "unrecognized": Incoming(b"\x09\x00\x00\x00\x00\x04\x00\x00\x00\x00", "unrecognized"),
    "invalid": Incoming(b"\x05\x00\x00\x00\x00\x03\x00\x00\x00", "invalid"),  # 3-byte body
}


def _walk(role: Role, moves: list[str | int]) -> AssociationWalk:
    walk = AssociationWalk()
    walk.choose_role(role)
    for move in moves:
        if isinstance(move, str) and move.startswith("Evt"):
            walk.primitive(move)
        else:
            walk.receive([FIXED_PDUS[move]], [])
        walk.state_is_the_models()
        walk.established_only_in_sta6()
        walk.artim_runs_only_awaiting_a_request_or_a_close()
        walk.the_transport_is_closed_when_an_action_says_so()
    return walk


def test_every_cell_of_table_9_10_against_the_model() -> None:
    """Each state reached on purpose, then every event tried there: the random walks
    reach the release collision states too rarely to try all of their cells."""
    tried: set[tuple[str, str]] = set()
    for state, (role, path) in PATHS.items():
        assert _walk(role, path).state == state, path
        for stimulus in [*PRIMITIVES, *FIXED_PDUS]:
            if not isinstance(stimulus, str) or not stimulus.startswith("Evt"):
                if State(state) not in CONNECTED:
                    continue  # no connection to receive on
            walk = _walk(role, [*path, stimulus])
            tried |= walk.cells
    assert set(TABLE) <= tried, sorted(set(TABLE) - tried)
    # Every blank cell of a local primitive was tried too, and refused.
    assert {(e, s.value) for e in PRIMITIVES for s in State} <= tried
