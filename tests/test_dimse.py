"""DIMSE command sets (PS3.7 6.3.1, Annex E), status codes (PS3.7 Annex C,
PS3.4 B.2.3) and message reassembly from PDVs (PS3.8 Annex E)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicom_fastsend.protocol.dimse import (
    _VR,
    Command,
    CommandField,
    DIMSEError,
    MessageAssembler,
    StatusCategory,
    c_echo_rq,
    c_echo_rsp,
    c_store_rq,
    c_store_rsp,
    status_category,
    status_text,
)
from dicom_fastsend.protocol.hotpath import fragment_pdata
from dicom_fastsend.protocol.pdu import PDV, PDataTF, decode_pdu

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"  # 25 characters: odd
SOP_INSTANCE = "1.2.826.0.1.3680043.10.1447.1.2.3"  # 33 characters: odd

# C-ECHO-RQ, message ID 7 (PS3.7 9.3.5.1 Table 9.3-12; field values PS3.7 E.1 Table E.1-1).
# Implicit VR Little Endian (PS3.7 6.3.1), each element: group (2, LE), element (2, LE),
# value length (4, LE), value (PS3.5 7.1.2 Table 7.1-2). Ascending tag order (PS3.5 7.1).
C_ECHO_RQ_GOLDEN = b"".join(
    [
        # (0000,0000) Command Group Length, UL: bytes after this element = 26 + 10 + 10 + 10
        b"\x00\x00\x00\x00",  # tag (0000,0000)
        b"\x04\x00\x00\x00",  # value length 4
        b"\x38\x00\x00\x00",  # 56
        # (0000,0002) Affected SOP Class UID, UI: Verification SOP Class (PS3.4 A.4)
        b"\x00\x00\x02\x00",  # tag (0000,0002)
        b"\x12\x00\x00\x00",  # value length 18: 17 characters + 1 NUL pad (PS3.5 6.2 UI)
        b"1.2.840.10008.1.1\x00",
        # (0000,0100) Command Field, US: 0030H = C-ECHO-RQ
        b"\x00\x00\x00\x01",
        b"\x02\x00\x00\x00",
        b"\x30\x00",
        # (0000,0110) Message ID, US: 7
        b"\x00\x00\x10\x01",
        b"\x02\x00\x00\x00",
        b"\x07\x00",
        # (0000,0800) Command Data Set Type, US: 0101H = no data set
        b"\x00\x00\x00\x08",
        b"\x02\x00\x00\x00",
        b"\x01\x01",
    ]
)


def walk_implicit(data: bytes) -> list[tuple[int, bytes]]:
    """An independent Implicit VR LE element walk (PS3.5 7.1.2): [(tag, value)]."""
    elements = []
    pos = 0
    while pos < len(data):
        group, element, length = struct.unpack_from("<HHI", data, pos)
        pos += 8
        elements.append(((group << 16) | element, data[pos : pos + length]))
        pos += length
    assert pos == len(data)
    return elements


def without_group_length(command: Command) -> dict[int, object]:
    """Decoded elements minus (0000,0000), which ``encode`` computes rather than stores."""
    return {tag: value for tag, value in command.elements.items() if tag != 0x00000000}


def test_golden_arithmetic() -> None:
    assert len(C_ECHO_RQ_GOLDEN) == 12 + 0x38


def test_c_echo_rq_golden() -> None:
    assert c_echo_rq(7).encode() == C_ECHO_RQ_GOLDEN


def test_c_echo_rq_decodes() -> None:
    command = Command.decode(C_ECHO_RQ_GOLDEN)
    assert command.command_field == 0x0030
    assert command.get_int(0x00000110) == 7
    assert command.get_str(0x00000002) == "1.2.840.10008.1.1"  # NUL pad removed
    assert not command.has_dataset


def test_c_store_rq_layout_and_round_trip() -> None:
    command = c_store_rq(513, CT_IMAGE_STORAGE, SOP_INSTANCE, priority=2)
    raw = command.encode()
    elements = walk_implicit(raw)
    tags = [tag for tag, _ in elements]
    # Group length first, then ascending order (PS3.5 7.1); PS3.7 9.3.1.1 Table 9.3-1 fields.
    assert tags == [
        0x00000000,
        0x00000002,
        0x00000100,
        0x00000110,
        0x00000700,
        0x00000800,
        0x00001000,
    ]
    values = dict(elements)
    assert struct.unpack("<I", values[0x00000000])[0] == len(raw) - 12
    assert values[0x00000002] == CT_IMAGE_STORAGE.encode() + b"\x00"  # UI padded with NUL
    assert values[0x00001000] == SOP_INSTANCE.encode() + b"\x00"
    assert values[0x00000100] == b"\x01\x00"  # C-STORE-RQ 0001H
    assert values[0x00000110] == struct.pack("<H", 513)
    assert values[0x00000700] == b"\x02\x00"  # priority LOW = 0002H (PS3.7 E.1)
    assert values[0x00000800] != b"\x01\x01"  # a data set follows

    decoded = Command.decode(raw)
    assert without_group_length(decoded) == command.elements
    assert decoded.get_int(0x00000000) == len(raw) - 12
    assert decoded.has_dataset
    assert decoded.get_str(0x00001000) == SOP_INSTANCE
    assert decoded.encode() == raw


def test_c_store_rsp_answers_the_request() -> None:
    request = c_store_rq(9, CT_IMAGE_STORAGE, SOP_INSTANCE)
    response = Command.decode(c_store_rsp(request, 0xB000, "coerced").encode())
    assert response.command_field == 0x8001  # C-STORE-RSP (PS3.7 E.1)
    assert response.get_int(0x00000120) == 9  # Message ID Being Responded To
    assert response.get_int(0x00000900) == 0xB000  # Status
    assert response.get_str(0x00000002) == CT_IMAGE_STORAGE
    assert response.get_str(0x00001000) == SOP_INSTANCE
    assert response.get_str(0x00000902) == "coerced"
    assert not response.has_dataset


def test_c_echo_rsp() -> None:
    response = Command.decode(c_echo_rsp(c_echo_rq(3)).encode())
    assert response.command_field == 0x8030
    assert response.get_int(0x00000120) == 3
    assert response.get_int(0x00000900) == 0x0000


def _element(group: int, element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, element, len(value)) + value


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            C_ECHO_RQ_GOLDEN + _element(0x0008, 0x0016, b"1.2\x00"), id="non-command-group"
        ),
        pytest.param(
            C_ECHO_RQ_GOLDEN + struct.pack("<HHI", 0x0000, 0x0902, 100) + b"ab", id="overrun"
        ),
        pytest.param(C_ECHO_RQ_GOLDEN + b"\x00\x00\x02", id="stray-bytes"),
        pytest.param(
            _element(0, 0, struct.pack("<I", 10)) + _element(0, 0x0110, b"\x01\x00"),
            id="no-command-field",
        ),
        pytest.param(_element(0, 0x0100, b"\x30\x00\x00"), id="US-of-3-bytes"),
        pytest.param(b"", id="empty"),
    ],
)
def test_decode_errors(data: bytes) -> None:
    with pytest.raises(DIMSEError):
        Command.decode(data)


def test_answering_a_uid_outside_ascii_is_a_dimse_error() -> None:
    """Found by the fuzzing below: a peer's UID with a byte outside the default character
    repertoire decodes (as U+FFFD), and the C-STORE-RSP that copies it must fail as a
    DIMSEError, which a receiver handles by aborting, not as a UnicodeEncodeError."""
    request = bytearray(c_store_rq(1, CT_IMAGE_STORAGE, SOP_INSTANCE).encode())
    request[request.index(SOP_INSTANCE.encode())] = 0x80
    command = Command.decode(bytes(request))
    assert command.get_str(0x00001000).startswith("\ufffd")
    with pytest.raises(DIMSEError, match=r"\(0000,1000\): not in the default character"):
        c_store_rsp(command, 0x0000).encode()


# PS3.7 Annex C and PS3.4 B.2.3 (C-STORE statuses).
@pytest.mark.parametrize(
    ("status", "category"),
    [
        (0x0000, StatusCategory.SUCCESS),
        (0xB000, StatusCategory.WARNING),  # Coercion of Data Elements
        (0xB006, StatusCategory.WARNING),  # Elements Discarded
        (0xB007, StatusCategory.WARNING),  # Data Set does not match SOP Class
        (0x0001, StatusCategory.WARNING),  # Requested optional Attributes are not supported
        (0xA700, StatusCategory.FAILURE),  # Refused: Out of Resources
        (0xA7FF, StatusCategory.FAILURE),
        (0xA900, StatusCategory.FAILURE),  # Error: Data Set does not match SOP Class
        (0xC000, StatusCategory.FAILURE),  # Error: Cannot understand
        (0xC123, StatusCategory.FAILURE),
        (0x0122, StatusCategory.FAILURE),  # Refused: SOP Class not supported
        (0xFE00, StatusCategory.CANCEL),
        (0xFF00, StatusCategory.PENDING),
    ],
)
def test_status_category(status: int, category: StatusCategory) -> None:
    assert status_category(status) is category


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (0xA700, "0xA700 Refused: Out of Resources"),
        (0xA702, "0xA702 Refused: Out of Resources"),  # A7xx (PS3.4 B.2.3)
        (0xA900, "0xA900 Error: Data Set does not match SOP Class"),
        (0xC005, "0xC005 Error: Cannot understand"),  # Cxxx
        (0xB007, "0xB007 Warning: Data Set does not match SOP Class"),
        (0x0122, "0x0122 Refused: SOP Class not supported"),
        (0x0000, "0x0000 Success"),
    ],
)
def test_status_text(status: int, text: str) -> None:
    assert status_text(status) == text


# ----------------------------------------------------------------- reassembly


def _pdvs(data: bytes, pc_id: int, is_command: bool, sizes: list[int]) -> list[PDV]:
    """Split ``data`` at the given fragment sizes; the final fragment is marked last."""
    out = []
    pos = 0
    for index, size in enumerate(sizes):
        last = index == len(sizes) - 1
        chunk = data[pos:] if last else data[pos : pos + size]
        pos += size
        out.append(PDV(pc_id, is_command, last, memoryview(chunk)))
    return out


def test_reassembles_command_and_dataset_over_several_pdvs() -> None:
    command = c_store_rq(1, CT_IMAGE_STORAGE, SOP_INSTANCE)
    command_bytes = command.encode()
    dataset = bytes(range(256)) * 3
    assembler = MessageAssembler()
    pdvs = _pdvs(command_bytes, 5, True, [10, 30, 0]) + _pdvs(dataset, 5, False, [100, 500, 0])
    done = []
    for pdv in pdvs[:-1]:
        done += assembler.feed((pdv,))
    assert done == []  # nothing completes before the last data set fragment
    (message,) = assembler.feed((pdvs[-1],))
    assert message.presentation_context_id == 5
    assert without_group_length(message.command) == command.elements
    assert message.dataset() == dataset
    assert assembler.dataset_bytes == len(dataset)


def test_reassembles_from_real_pdata_pdus() -> None:
    """Through fragment_pdata and decode_pdu: several PDUs per message, several messages."""
    command_bytes = c_store_rq(2, CT_IMAGE_STORAGE, SOP_INSTANCE).encode()
    dataset = b"\x08\x00\x16\x00" * 50
    wire = fragment_pdata(command_bytes, 3, True, 40) + fragment_pdata(dataset, 3, False, 64)
    wire += fragment_pdata(c_echo_rq(3).encode(), 1, True, 30)
    assembler = MessageAssembler(keep_dataset=False)
    messages = []
    for index in range(0, len(wire), 2):
        header, fragment = bytes(wire[index]), bytes(wire[index + 1])
        pdu = decode_pdu(header[0], memoryview(header[6:] + fragment))
        assert isinstance(pdu, PDataTF)
        messages += assembler.feed(pdu.pdvs)
    assert [m.command.command_field for m in messages] == [0x0001, 0x0030]
    assert messages[0].dataset_fragments == []  # keep_dataset=False drops the bytes
    assert assembler.dataset_bytes == len(dataset)  # ... but counts them
    assert messages[1].presentation_context_id == 1


def test_command_without_dataset_completes_at_its_last_fragment() -> None:
    assembler = MessageAssembler()
    pdvs = _pdvs(c_echo_rq(4).encode(), 1, True, [20, 0])
    assert assembler.feed((pdvs[0],)) == []
    (message,) = assembler.feed((pdvs[1],))
    assert message.command.get_int(0x00000110) == 4
    assert message.dataset() == b""


def test_dataset_before_command() -> None:
    assembler = MessageAssembler()
    with pytest.raises(DIMSEError, match="before any command"):
        assembler.feed((PDV(1, False, True, memoryview(b"\x00\x00")),))


def test_dataset_on_the_wrong_presentation_context() -> None:
    assembler = MessageAssembler()
    command = _pdvs(c_store_rq(1, CT_IMAGE_STORAGE, SOP_INSTANCE).encode(), 1, True, [0])
    assert assembler.feed(tuple(command)) == []
    with pytest.raises(DIMSEError):
        assembler.feed((PDV(3, False, True, memoryview(b"\x00\x00")),))


def test_command_fragment_while_dataset_expected() -> None:
    assembler = MessageAssembler()
    raw = c_store_rq(1, CT_IMAGE_STORAGE, SOP_INSTANCE).encode()
    assembler.feed(tuple(_pdvs(raw, 1, True, [0])))
    with pytest.raises(DIMSEError):
        assembler.feed(tuple(_pdvs(raw, 1, True, [0])))


def test_command_fragments_on_different_contexts_are_rejected() -> None:
    command = c_echo_rq(1).encode()
    first = PDV(1, True, False, memoryview(command[:10]))
    second = PDV(3, True, True, memoryview(command[10:]))
    with pytest.raises(DIMSEError, match="first fragment came on 1"):
        MessageAssembler().feed((first, second))


# ----------------------------------------------------------------- properties

# Values a command element can hold and get back (PS3.5 6.2): text without the
# trailing spaces or NULs that pad it to even length, US within 16 bits, AT tags.
TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=64).map(
    lambda text: text.rstrip(" ")
)
US_TAGS = [tag for tag, vr in _VR.items() if vr == "US"]
TEXT_TAGS = [tag for tag, vr in _VR.items() if vr in ("UI", "AE", "LO")]
# Group 0000 elements this module has no VR for: decoded as text.
OTHER_TAGS = st.integers(0x0001, 0xFFFF).filter(lambda tag: tag not in _VR)
COMMANDS = st.builds(
    lambda command_field, us, text, at, other: Command(
        {0x00000100: command_field, **us, **text, **at, **other}
    ),
    st.sampled_from(CommandField),
    st.dictionaries(st.sampled_from(US_TAGS), st.integers(0, 0xFFFF)),
    st.dictionaries(st.sampled_from(TEXT_TAGS), TEXT),
    st.dictionaries(
        st.just(0x00000901), st.lists(st.integers(0, 0xFFFFFFFF), max_size=4).map(tuple)
    ),
    st.dictionaries(OTHER_TAGS, TEXT, max_size=2),
)
GOLDEN_COMMANDS = [
    C_ECHO_RQ_GOLDEN,
    c_store_rq(513, CT_IMAGE_STORAGE, SOP_INSTANCE, priority=2).encode(),
    c_store_rsp(c_store_rq(9, CT_IMAGE_STORAGE, SOP_INSTANCE), 0xB000, "coerced").encode(),
    c_echo_rsp(c_echo_rq(3)).encode(),
]


@settings(max_examples=300)
@given(command=COMMANDS)
def test_a_valid_command_round_trips(command: Command) -> None:
    raw = command.encode()
    assert len(raw) % 2 == 0  # every value is padded to even length (PS3.5 7.1.1)
    decoded = Command.decode(raw)
    assert without_group_length(decoded) == command.elements
    assert decoded.get_int(0x00000000) == len(raw) - 12
    assert decoded.encode() == raw


@settings(max_examples=500)
@given(data=st.binary(max_size=300))
def test_decode_arbitrary_bytes_raises_only_dimse_error(data: bytes) -> None:
    try:
        Command.decode(data)
    except DIMSEError:
        pass


@settings(max_examples=500)
@given(
    golden=st.sampled_from(GOLDEN_COMMANDS),
    edits=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 300),
)
def test_decode_mutated_commands_raises_only_dimse_error(
    golden: bytes, edits: list[tuple[int, int]], cut: int
) -> None:
    """Byte flips and truncations of real command sets reach the value decoders.

    What decodes must encode again: a receiver answers with values taken from
    the request (c_store_rsp copies the UIDs), whatever bytes the peer sent.
    """
    data = bytearray(golden)
    for position, value in edits:
        data[position % len(data)] = value
    del data[cut:]
    try:
        command = Command.decode(bytes(data))
    except DIMSEError:
        return
    # Accepted only if its elements exactly fill it, by an independent walk.
    assert {tag for tag, _ in walk_implicit(bytes(data))} == set(command.elements)
    try:
        command.encode()
        c_store_rsp(command, 0x0000, "error comment").encode()
    except DIMSEError:
        pass


# One message's PDVs: presentation context ID, command or data set, last, bytes.
PDV_FIELDS = st.tuples(
    st.sampled_from([1, 3, 255]), st.booleans(), st.booleans(), st.binary(max_size=40)
)


@settings(max_examples=500)
@given(
    pdvs=st.lists(
        st.one_of(
            PDV_FIELDS,
            # Pieces of real command sets, so that some messages complete.
            st.tuples(
                st.sampled_from([1, 3]),
                st.just(True),
                st.booleans(),
                st.sampled_from(GOLDEN_COMMANDS).flatmap(
                    lambda raw: st.integers(0, len(raw)).map(lambda cut: raw[cut:])
                ),
            ),
        ),
        max_size=12,
    )
)
def test_assembler_raises_only_dimse_error_on_any_pdv_sequence(
    pdvs: list[tuple[int, bool, bool, bytes]],
) -> None:
    assembler = MessageAssembler()
    try:
        for pc_id, is_command, is_last, data in pdvs:
            for message in assembler.feed((PDV(pc_id, is_command, is_last, memoryview(data)),)):
                assert message.command.command_field is not None
    except DIMSEError:
        pass


@settings(max_examples=200)
@given(
    messages=st.lists(
        st.tuples(COMMANDS, st.binary(max_size=200), st.sampled_from([1, 3, 255])), max_size=4
    ),
    fragment=st.integers(1, 64),
)
def test_any_fragmentation_reassembles_the_messages(
    messages: list[tuple[Command, bytes, int]], fragment: int
) -> None:
    """PS3.8 E.2: a command's fragments, then its data set's if it says one follows."""
    pdvs: list[PDV] = []
    for command, dataset, pc_id in messages:
        raw = command.encode()
        chunks = [raw[i : i + fragment] for i in range(0, len(raw), fragment)]
        pdvs += [
            PDV(pc_id, True, i == len(chunks) - 1, memoryview(c)) for i, c in enumerate(chunks)
        ]
        if command.has_dataset:
            pieces = [dataset[i : i + fragment] for i in range(0, len(dataset), fragment)] or [b""]
            pdvs += [
                PDV(pc_id, False, i == len(pieces) - 1, memoryview(p)) for i, p in enumerate(pieces)
            ]
    assembler = MessageAssembler()
    received = []
    for pdv in pdvs:
        received += assembler.feed((pdv,))
    assert [m.presentation_context_id for m in received] == [pc for _, _, pc in messages]
    for message, (command, dataset, _) in zip(received, messages, strict=True):
        assert without_group_length(message.command) == command.elements
        assert message.dataset() == (dataset if command.has_dataset else b"")
