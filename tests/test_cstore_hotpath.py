"""The per-file C-STORE path of the hot path: c_store_rq_pdus and parse_command_pdus.

Both functions run in the compiled ``_pdu`` and the pure-Python ``_pdu_py``
and must agree byte for byte. Each is also held to the general path it
replaces: ``c_store_rq(...).encode()`` fragmented by ``fragment_pdata`` for
the encoder, and PDUReader + decode_pdu + MessageAssembler + Command.decode
for the decoder, which may decline anything (the caller then takes the
general path) but must never accept what the general path rejects, nor read
it differently.
"""

from __future__ import annotations

import struct
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dicom_fastsend._pdu as c
import dicom_fastsend._pdu_py as py
from dicom_fastsend.errors import PDUError
from dicom_fastsend.protocol.association import (
    Association,
    DataReceived,
    Role,
    State,
)
from dicom_fastsend.protocol.dimse import (
    DIMSEError,
    MessageAssembler,
    Priority,
    c_echo_rq,
    c_echo_rsp,
    c_store_rq,
    c_store_rsp,
)
from dicom_fastsend.protocol.hotpath import c_store_rq_pdus, parse_command_pdus
from dicom_fastsend.protocol.pdu import PDataTF, PDUReader, decode_pdu

IMPLEMENTATIONS = [pytest.param(c, id="cython"), pytest.param(py, id="python")]
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
INSTANCE = "1.2.826.0.1.3680043.10.1447.14.20000.100.1.3.1000000123"


def general_encoding(
    context_id: int,
    message_id: int,
    class_uid: str,
    instance_uid: str,
    priority: int,
    max_pdu_length: int,
) -> bytes:
    """The C-STORE-RQ PDUs as the sender made them before the hot path did."""
    command = c_store_rq(message_id, class_uid, instance_uid, priority).encode()
    return b"".join(
        bytes(part) for part in py.fragment_pdata(command, context_id, True, max_pdu_length)
    )


def pdata(*pdvs: tuple[int, int, bytes]) -> bytes:
    """One P-DATA-TF PDU (PS3.8 9.3.5) of the given (context ID, control header, value) PDVs."""
    body = b"".join(struct.pack(">IBB", len(v) + 2, pc, mch) + v for pc, mch, v in pdvs)
    return struct.pack(">BBI", 0x04, 0, len(body)) + body


def command_pdu(command: bytes, context_id: int = 1) -> bytes:
    return pdata((context_id, 0x03, command))


def rsp(message_id: int = 7, status: int = 0x0000, comment: str = "") -> bytes:
    return c_store_rsp(c_store_rq(message_id, CT_IMAGE_STORAGE, INSTANCE), status, comment).encode()


# ---- encode: C-STORE-RQ (PS3.7 9.3.1.1) into P-DATA-TF (PS3.8 9.3.5) ------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_c_store_rq_pdus_golden(impl: ModuleType) -> None:
    pdus = impl.c_store_rq_pdus(3, 0x1234, "1.2.3", "1.2.34", Priority.HIGH, 16384)
    command = bytes.fromhex(
        "0000 0000 04000000 44000000"  # (0000,0000) UL Command Group Length 68
        "0000 0200 06000000 312e322e3300"  # (0000,0002) UI "1.2.3" + NUL pad (PS3.5 6.2)
        "0000 0001 02000000 0100"  # (0000,0100) US Command Field C-STORE-RQ
        "0000 1001 02000000 3412"  # (0000,0110) US Message ID 0x1234
        "0000 0007 02000000 0100"  # (0000,0700) US Priority HIGH
        "0000 0008 02000000 0000"  # (0000,0800) US Command Data Set Type: data set follows
        "0000 0010 06000000 312e322e3334"  # (0000,1000) UI "1.2.34" (even, no pad)
    )
    assert pdus == bytes.fromhex("04 00 00000056 00000052 03 03") + command
    assert pdus == general_encoding(3, 0x1234, "1.2.3", "1.2.34", Priority.HIGH, 16384)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("max_pdu_length", [7, 8, 20, 57, 100, 113, 114, 115, 0, 0xFFFFFFFF])
def test_c_store_rq_pdus_fragments_as_fragment_pdata(impl: ModuleType, max_pdu_length: int) -> None:
    # The command set is 108 bytes here: 114 fits it whole, 113 needs two PDUs.
    expected = general_encoding(1, 65535, CT_IMAGE_STORAGE, "1.2.3.45", 2, max_pdu_length)
    assert impl.c_store_rq_pdus(1, 65535, CT_IMAGE_STORAGE, "1.2.3.45", 2, max_pdu_length) == (
        expected
    )


@settings(max_examples=400)
@given(
    context_id=st.integers(0, 127).map(lambda n: 2 * n + 1),
    message_id=st.integers(0, 0xFFFF),
    class_uid=st.text("0123456789.", max_size=70),
    instance_uid=st.text("0123456789.", max_size=70),
    priority=st.one_of(st.sampled_from(list(Priority)), st.integers(0, 0xFFFF)),
    max_pdu_length=st.one_of(st.just(0), st.integers(7, 300), st.integers(300, 1 << 20)),
)
def test_c_store_rq_pdus_is_the_general_encoding(
    context_id: int,
    message_id: int,
    class_uid: str,
    instance_uid: str,
    priority: int,
    max_pdu_length: int,
) -> None:
    arguments = (context_id, message_id, class_uid, instance_uid, priority, max_pdu_length)
    expected = general_encoding(*arguments)
    assert c.c_store_rq_pdus(*arguments) == expected
    assert py.c_store_rq_pdus(*arguments) == expected
    assert c_store_rq_pdus(*arguments) == expected  # whichever hotpath chose


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    ("message_id", "class_uid", "instance_uid", "priority"),
    [
        (1, "1.2.3é", INSTANCE, 0),  # outside ASCII: the general encoder raises DIMSEError
        (1, CT_IMAGE_STORAGE, "1.2.\udc80", 0),
        (1, "1" * 0x10000, INSTANCE, 0),  # longer than the hot path writes
        (-1, CT_IMAGE_STORAGE, INSTANCE, 0),  # (0000,0110) is US
        (0x10000, CT_IMAGE_STORAGE, INSTANCE, 0),
        (1, CT_IMAGE_STORAGE, INSTANCE, -1),
        (1, CT_IMAGE_STORAGE, INSTANCE, 0x10000),
        (1.0, CT_IMAGE_STORAGE, INSTANCE, 0),
        (1, CT_IMAGE_STORAGE, INSTANCE, "0"),
    ],
)
def test_c_store_rq_pdus_leaves_what_it_does_not_write_to_the_general_path(
    impl: ModuleType, message_id: Any, class_uid: str, instance_uid: str, priority: Any
) -> None:
    assert impl.c_store_rq_pdus(1, message_id, class_uid, instance_uid, priority, 16384) is None


def test_the_general_path_raises_for_a_uid_outside_ascii() -> None:
    # Why None is right for such a UID: the caller falls back, and gets this.
    with pytest.raises(DIMSEError, match="default character repertoire"):
        c_store_rq(1, "1.2.3é", INSTANCE).encode()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_c_store_rq_pdus_argument_errors_are_fragment_pdata_s(impl: ModuleType) -> None:
    for context_id in (0, 2, 256, -1):
        with pytest.raises(ValueError, match="odd number 1..255") as ours:
            impl.c_store_rq_pdus(context_id, 1, CT_IMAGE_STORAGE, INSTANCE, 0, 16384)
        with pytest.raises(ValueError) as theirs:
            impl.fragment_pdata(b"x", context_id, True, 16384)
        assert str(ours.value) == str(theirs.value)
    for maximum in (-1, 1, 6, 0x1_0000_0000):
        with pytest.raises(ValueError, match="maximum PDU length") as ours:
            impl.c_store_rq_pdus(1, 1, CT_IMAGE_STORAGE, INSTANCE, 0, maximum)
        with pytest.raises(ValueError) as theirs:
            impl.fragment_pdata(b"x", 1, True, maximum)
        assert str(ours.value) == str(theirs.value)


# ---- decode: command sets from P-DATA-TF (PS3.8 9.3.5, E.2; PS3.7 E.1) -------------------


Outcome = list[tuple[Any, ...]] | str


def general_reading(data: bytes, maximum_length: int = 16384) -> Outcome:
    """What the general path makes of ``data``: the command sets as parse_command_pdus
    reports them, or why it would not report them so (an error, a data set, ...)."""
    reader = PDUReader(maximum_length)
    reader.feed(data)
    assembler = MessageAssembler()
    commands: list[tuple[Any, ...]] = []
    try:
        while (framed := reader.next_pdu()) is not None:
            pdu = decode_pdu(*framed)
            if not isinstance(pdu, PDataTF):
                return "another PDU"
            for message in assembler.feed(pdu.pdvs):
                elements = message.command.elements
                commands.append(
                    (
                        message.presentation_context_id,
                        message.command.command_field,
                        message.command.get_int(0x00000120),
                        message.command.get_int(0x00000900),
                        message.command.get_int(0x00000800),
                        elements.get(0x00000902),
                        elements.get(0x00000901),
                    )
                )
    except (PDUError, DIMSEError) as exc:
        return f"error: {exc}"
    if reader.buffered:
        return "partial PDU"
    if not assembler.idle:
        return "message incomplete"
    if not commands:
        return "nothing"
    return commands


def fast_reading(data: bytes, maximum_length: int = 16384) -> Outcome | None:
    """parse_command_pdus of both implementations, which must agree."""
    compiled = c.parse_command_pdus(data, maximum_length)
    pure = py.parse_command_pdus(data, maximum_length)
    assert compiled == pure
    if compiled is None:
        return None
    # Types too: the compiled twin must not hand out other int or str subclasses.
    assert [tuple(map(type, one)) for one in compiled] == [tuple(map(type, one)) for one in pure]
    return compiled


def assert_consistent(data: bytes, maximum_length: int = 16384) -> Outcome | None:
    fast = fast_reading(data, maximum_length)
    if fast is not None:
        # Accepted: the general path accepts it too and reads the same values.
        assert general_reading(data, maximum_length) == fast
    return fast


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_parse_command_pdus_golden_c_store_rsp(impl: ModuleType) -> None:
    data = command_pdu(rsp(7, 0xA700, "out of space"), context_id=5)
    assert impl.parse_command_pdus(data, 16384) == [
        (5, 0x8001, 7, 0xA700, 0x0101, "out of space", None)
    ]
    assert general_reading(data) == impl.parse_command_pdus(data, 16384)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_parse_command_pdus_several_responses_in_one_read(impl: ModuleType) -> None:
    # --max-ops: responses to pipelined C-STOREs arrive together, in one PDU or several.
    data = (
        command_pdu(rsp(1))
        + pdata((1, 0x03, rsp(2, 0xB000)), (3, 0x03, rsp(3, 0x0000)))
        + command_pdu(c_echo_rsp(c_echo_rq(4)).encode())
    )
    assert impl.parse_command_pdus(data, 16384) == [
        (1, 0x8001, 1, 0, 0x0101, None, None),
        (1, 0x8001, 2, 0xB000, 0x0101, None, None),
        (3, 0x8001, 3, 0, 0x0101, None, None),
        (1, 0x8030, 4, 0, 0x0101, None, None),
    ]
    assert_consistent(data)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_parse_command_pdus_reads_offending_element_and_repeated_elements(
    impl: ModuleType,
) -> None:
    elements = (
        struct.pack("<HHIH", 0, 0x0100, 2, 0x8001)
        + struct.pack("<HHIH", 0, 0x0120, 2, 9)
        + struct.pack("<HHIH", 0, 0x0900, 2, 0xC000)
        + struct.pack("<HHI", 0, 0x0901, 10)  # AT: two tags and a partial one, ignored
        + struct.pack("<HHHH", 0x0010, 0x0010, 0x0008, 0x0018)
        + b"\x01\x02"
        + struct.pack("<HHI", 0, 0x0902, 6)
        + b"bad \x00 "  # LO: trailing NUL and space trimmed
        + struct.pack("<HHIH", 0, 0x0900, 2, 0xC001)  # repeated: the last counts
    )
    data = command_pdu(elements)
    assert impl.parse_command_pdus(data, 16384) == [
        (1, 0x8001, 9, 0xC001, None, "bad", (0x00100010, 0x00080018))
    ]
    assert_consistent(data)


def _damaged(data: bytes) -> list[bytes]:
    return [data[:cut] for cut in range(len(data))] + [
        data[:at] + bytes([data[at] ^ flip]) + data[at + 1 :]
        for at in range(len(data))
        for flip in (0x01, 0x80, 0xFF)
    ]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "nothing"),
        (command_pdu(rsp())[:-1], "partial PDU"),
        (command_pdu(rsp()) + command_pdu(rsp())[:7], "partial PDU"),
        (struct.pack(">BBI", 0x07, 0, 4) + bytes(4), "another PDU"),  # A-ABORT
        (struct.pack(">BBI", 0x09, 0, 4) + bytes(4), "error"),  # unknown PDU type
        (struct.pack(">BBI", 0x04, 0, 0), "error"),  # no PDV item
        (struct.pack(">BBI", 0x04, 0, 20000) + bytes(20000), "error"),  # beyond Maximum Length
        (pdata((1, 0x01, rsp()[:20])) + pdata((1, 0x03, rsp()[20:])), "fragmented"),
        (pdata((1, 0x02, rsp())), "error"),  # a data set fragment before any command
        (command_pdu(c_store_rq(1, CT_IMAGE_STORAGE, INSTANCE).encode()), "message incomplete"),
        (command_pdu(rsp()[:-3]), "error"),  # an element runs past the command set
        (command_pdu(rsp() + b"\x00\x00"), "error"),  # stray bytes
        (command_pdu(rsp()[12:]), "fine without the group length"),
        (command_pdu(struct.pack("<HHIH", 0, 0x0120, 2, 1)), "error"),  # no Command Field
        (command_pdu(rsp() + struct.pack("<HHI", 0, 0x0903, 3) + b"abc"), "error"),  # US of 3
        (command_pdu(struct.pack("<HHI", 0, 0, 2) + b"\x00\x00" + rsp()[12:]), "error"),  # UL
        (command_pdu(rsp() + struct.pack("<HHI", 8, 0x18, 2) + b"12"), "error"),  # not group 0
    ],
)
def test_parse_command_pdus_declines_what_it_does_not_read(data: bytes, why: str) -> None:
    fast = assert_consistent(data)
    general = general_reading(data)
    if why == "fine without the group length":
        assert fast is not None and fast == general
        return
    if why == "fragmented":
        # Valid, but a command set in two fragments is the general path's to reassemble.
        assert fast is None and isinstance(general, list)
        return
    assert fast is None
    assert isinstance(general, str) and general.startswith(why), general


def test_parse_command_pdus_on_every_truncation_and_bit_flip_of_responses() -> None:
    originals = [
        command_pdu(rsp(7, 0xA700, "out of space")),
        command_pdu(rsp(1)) + command_pdu(rsp(2, 0xB007)),
        pdata((1, 0x03, rsp(3)), (3, 0x03, rsp(4, 0x0122, "no"))),
    ]
    accepted = 0
    for original in originals:
        for data in _damaged(original):
            if assert_consistent(data) is not None:
                accepted += 1
    assert accepted > 0  # some flips land in values (status, UIDs) and stay valid


def _element(draw: Any) -> bytes:
    element = draw(
        st.one_of(
            st.sampled_from(
                [0x0000, 0x0002, 0x0100, 0x0110, 0x0120, 0x0700, 0x0800, 0x0900, 0x0901]
                + [0x0902, 0x0903, 0x1000, 0x1002, 0x1008, 0x1031]
            ),
            st.integers(0, 0xFFFF),
        )
    )
    group = draw(st.one_of(st.just(0), st.just(0), st.just(0), st.integers(0, 0xFFFF)))
    value = draw(
        st.one_of(
            st.binary(min_size=2, max_size=2),
            st.binary(min_size=4, max_size=4),
            st.binary(max_size=12),
            st.sampled_from([b"\x01\x80", b"\x01\x01", b"\x00\x00", b"1.2 \x00"]),
        )
    )
    length = draw(st.one_of(st.just(len(value)), st.integers(0, 20)))
    return struct.pack("<HHI", group, element, length) + value


@st.composite
def command_streams(draw: Any) -> bytes:
    pdus = []
    for _ in range(draw(st.integers(1, 3))):
        pdvs = []
        for _ in range(draw(st.integers(1, 3))):
            elements = [struct.pack("<HHIH", 0, 0x0100, 2, 0x8001)] if draw(st.booleans()) else []
            elements += [_element(draw) for _ in range(draw(st.integers(0, 6)))]
            draw(st.randoms()).shuffle(elements)
            control = draw(st.one_of(st.just(0x03), st.integers(0, 0xFF)))
            context_id = draw(st.one_of(st.just(1), st.integers(0, 0xFF)))
            pdvs.append((context_id, control, b"".join(elements)))
        pdus.append(pdata(*pdvs))
    data = b"".join(pdus)
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(data)))
        data = data[:cut]
    return data


@settings(max_examples=1500)
@given(data=command_streams(), maximum_length=st.sampled_from([0, 16384, 40]))
def test_parse_command_pdus_agrees_with_the_general_path(data: bytes, maximum_length: int) -> None:
    assert_consistent(data, maximum_length)


@settings(max_examples=500)
@given(data=st.binary(max_size=80))
def test_parse_command_pdus_on_garbage(data: bytes) -> None:
    assert_consistent(data)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_parse_command_pdus_takes_any_buffer(impl: ModuleType) -> None:
    data = command_pdu(rsp())
    expected = impl.parse_command_pdus(data, 16384)
    assert expected is not None
    assert impl.parse_command_pdus(bytearray(data), 16384) == expected
    assert impl.parse_command_pdus(memoryview(data), 16384) == expected
    # Limits: at the PDU-length is taken, one below is not; beyond 32 bits is no limit.
    length = len(data) - 6
    assert impl.parse_command_pdus(data, length) == expected
    assert impl.parse_command_pdus(data, length - 1) is None
    assert impl.parse_command_pdus(data, 1 << 40) == expected
    assert impl.parse_command_pdus(data, -1) is None


# ---- the association: Evt10 in Sta6 (PS3.8 Table 9-10) ----------------------------------


def established(maximum_length: int = 16384) -> Association:
    association = Association(Role.REQUESTOR, maximum_length)
    association.state = State.STA6  # as after AE-3 (A-ASSOCIATE-AC received)
    return association


def test_receive_commands_in_sta6_is_dt_2_without_events() -> None:
    association = established()
    data = command_pdu(rsp(1)) + command_pdu(rsp(2))
    assert association.receive_commands(data) == parse_command_pdus(data, 16384)
    assert association.state is State.STA6
    assert association.data_to_send() == b""
    # The reader is where it was: the next PDU takes the general path as usual.
    events = association.receive_data(pdata((1, 0x01, rsp(3)[:10]), (1, 0x03, rsp(3)[10:])))
    [event] = events
    assert isinstance(event, DataReceived)
    assert b"".join(pdv.data for pdv in event.pdata.pdvs) == rsp(3)


def test_receive_commands_completes_a_pdu_whose_start_the_general_path_buffered() -> None:
    # DCMTK writes the PDU and PDV headers apart from the command set: a read may
    # end after those 12 bytes.
    association = established()
    data = command_pdu(rsp(5, 0xB000)) + command_pdu(rsp(6))
    assert association.receive_commands(data[:12]) is None  # a partial PDU: declined
    assert association.receive_data(data[:12]) == []  # buffered by the general path
    assert association.receive_commands(data[12:]) == parse_command_pdus(data, 16384)
    assert association.receive_data(command_pdu(rsp(7)))[0].pdata.pdvs[0].data == rsp(7)


def test_receive_commands_declined_leaves_everything_to_receive_data() -> None:
    association = established()
    assert association.receive_data(command_pdu(rsp(5))[:3]) == []
    # Declined (the rest is a data set's PDV): the reader still holds its 3 bytes.
    rest = command_pdu(rsp(5))[3:] + pdata((1, 0x02, b"xx"))
    assert association.receive_commands(rest) is None
    events = association.receive_data(rest)
    assert [len(event.pdata.pdvs) for event in events if isinstance(event, DataReceived)] == [1, 1]


@pytest.mark.parametrize("state", [State.STA7, State.STA13, State.STA1, State.STA5])
def test_receive_commands_only_in_sta6(state: State) -> None:
    # Sta7 (awaiting A-RELEASE-RP) is AR-6 for a P-DATA-TF, the rest abort or ignore:
    # all for receive_data.
    association = established()
    association.state = state
    assert association.receive_commands(command_pdu(rsp(1))) is None
    assert association.state is state


def test_receive_commands_honours_the_announced_maximum_length() -> None:
    data = command_pdu(rsp(1))
    assert established(len(data) - 6).receive_commands(data) is not None
    too_long = established(len(data) - 7)
    assert too_long.receive_commands(data) is None
    [aborted] = too_long.receive_data(data)
    assert "beyond the limit" in aborted.reason  # type: ignore[union-attr]
