"""The sans-IO Upper Layer state machine against PS3.8 9.2 (Tables 9-6 to 9-10).

Two Association objects, a REQUESTOR and an ACCEPTOR, are joined over an
in-memory link: what one queues in ``data_to_send()`` is fed to the other's
``receive_data()``, optionally one byte at a time.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import pytest

from dicom_fastsend.errors import LocalProtocolError
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
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
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
