"""The hot path, run against both implementations and compared between them.

Every test is parametrized over the compiled ``_pdu`` and the pure-Python
``_pdu_py``; the hypothesis tests then check that the two give the same bytes,
the same results and the same errors on arbitrary input.
"""

from __future__ import annotations

import io
import mmap
import os
import struct
import subprocess
import sys
import warnings
from types import ModuleType
from typing import Any

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

import dicom_fastsend._pdu as c
import dicom_fastsend._pdu_py as py
from dicom_fastsend.errors import ElementScanError, PDUError

IMPLEMENTATIONS = [pytest.param(c, id="cython"), pytest.param(py, id="python")]
ALL_TAGS = 0xFFFFFFFF


# ---- P-DATA-TF headers (PS3.8 9.3.5, E.2) -------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_pack_pdata_header_golden(impl: ModuleType) -> None:
    header = impl.pack_pdata_header(3, True, True, 0x0102)
    assert header == bytes(
        [
            0x04,  # PDU-type: P-DATA-TF
            0x00,  # reserved
            0x00, 0x00, 0x01, 0x08,  # PDU-length: 6 + 0x0102 (PDV item header + data)
            0x00, 0x00, 0x01, 0x04,  # PDV item-length: 2 + 0x0102 (context ID + MCH + data)
            0x03,  # presentation context ID 3
            0x03,  # message control header: bit0 command, bit1 last fragment
        ]
    )  # fmt: skip
    assert impl.PDATA_HEADER_LENGTH == len(header) == 12
    # Data set, not last: both bits clear.
    assert impl.pack_pdata_header(255, False, False, 0)[-2:] == b"\xff\x00"
    assert impl.pack_pdata_header(1, False, True, 0)[-1] == 0x02
    assert impl.pack_pdata_header(1, True, False, 0)[-1] == 0x01


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("context_id", [0, 2, 256, -1])
def test_pack_pdata_header_rejects_even_or_out_of_range_context_id(
    impl: ModuleType, context_id: int
) -> None:
    with pytest.raises(ValueError, match="odd number 1..255"):
        impl.pack_pdata_header(context_id, False, True, 10)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("fragment_length", [-1, 0xFFFFFFFF - 5])
def test_pack_pdata_header_rejects_lengths_the_field_cannot_hold(
    impl: ModuleType, fragment_length: int
) -> None:
    with pytest.raises(ValueError, match="fragment length"):
        impl.pack_pdata_header(1, False, True, fragment_length)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_fragment_pdata_golden(impl: ModuleType) -> None:
    # Peer Maximum Length 10: each PDU carries 6 bytes of PDV header, so 4 data bytes.
    parts = impl.fragment_pdata(b"ABCDEFGHIJ", 5, False, 10)
    assert [bytes(part) for part in parts] == [
        # PDU 1: type 04, reserved, PDU-length 10, item-length 6, context 5, MCH 00
        bytes.fromhex("04 00 0000000a 00000006 05 00"),
        b"ABCD",
        # PDU 2: same, still not last
        bytes.fromhex("04 00 0000000a 00000006 05 00"),
        b"EFGH",
        # PDU 3: PDU-length 8, item-length 4, MCH 02 = data set, last fragment
        bytes.fromhex("04 00 00000008 00000004 05 02"),
        b"IJ",
    ]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_fragment_pdata_empty_data_is_one_last_pdu(impl: ModuleType) -> None:
    parts = impl.fragment_pdata(b"", 1, True, 16384)
    assert [bytes(part) for part in parts] == [bytes.fromhex("04 00 00000006 00000002 01 03"), b""]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_fragment_pdata_zero_max_means_unlimited(impl: ModuleType) -> None:
    data = bytes(impl.MAX_UNLIMITED_PDU + 100)
    parts = impl.fragment_pdata(data, 1, False, 0)
    assert len(parts) == 4
    assert len(parts[1]) == impl.MAX_UNLIMITED_PDU - 6
    assert len(parts[3]) == 106


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("max_pdu_length", [-1, 1, 6, 0x1_0000_0000])
def test_fragment_pdata_rejects_impossible_max_length(
    impl: ModuleType, max_pdu_length: int
) -> None:
    with pytest.raises(ValueError, match="maximum PDU length"):
        impl.fragment_pdata(b"abc", 1, False, max_pdu_length)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_fragment_pdata_accepts_mmap_and_readonly_memoryview(
    impl: ModuleType, tmp_path: Any
) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"0123456789" * 5)
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    parts = impl.fragment_pdata(mapped, 1, False, 26)
    assert b"".join(bytes(part) for part in parts[1::2]) == b"0123456789" * 5
    for part in parts:
        part.release()
    mapped.close()  # would raise BufferError if a fragment still held the mapping


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_fragment_pdata_is_zero_copy(impl: ModuleType) -> None:
    data = bytearray(b"x" * 100)
    parts = impl.fragment_pdata(data, 1, False, 40)
    assert all(isinstance(part, memoryview) for part in parts)
    # Writing through the input shows in the fragments: they are views, not copies.
    data[0] = ord("A")
    data[99] = ord("Z")
    assert bytes(parts[1])[0] == ord("A")
    assert bytes(parts[-1])[-1] == ord("Z")
    assert parts[1].obj is data
    # All headers are views of one buffer, not one bytes object per PDU.
    header_owners = {id(part.obj) for part in parts[0::2]}
    assert len(header_owners) == 1
    assert isinstance(parts[0].obj, bytearray)


def _reassemble(stream: bytes, max_pdu_length: int) -> tuple[bytes, list[int], set[int], bool]:
    """Decode a stream of P-DATA-TF PDUs: data, control headers, context IDs, lengths ok."""
    data = bytearray()
    controls: list[int] = []
    context_ids: set[int] = set()
    lengths_ok = True
    position = 0
    while position < len(stream):
        pdu_type, pdu_length = struct.unpack_from(">BxI", stream, position)
        assert pdu_type == 0x04
        lengths_ok = lengths_ok and pdu_length <= max_pdu_length
        body = stream[position + 6 : position + 6 + pdu_length]
        items = py.parse_pdvs(body)
        assert len(items) == 1
        context_id, control, value_offset, value_length = items[0]
        context_ids.add(context_id)
        controls.append(control)
        data += body[value_offset : value_offset + value_length]
        position += 6 + pdu_length
    return bytes(data), controls, context_ids, lengths_ok


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.binary(max_size=3000),
    max_pdu_length=st.one_of(st.integers(7, 700), st.just(0)),
    context_id=st.integers(0, 127).map(lambda n: 2 * n + 1),
    is_command=st.booleans(),
)
def test_fragment_pdata_reassembles(
    impl: ModuleType, data: bytes, max_pdu_length: int, context_id: int, is_command: bool
) -> None:
    parts = impl.fragment_pdata(data, context_id, is_command, max_pdu_length)
    stream = b"".join(bytes(part) for part in parts)
    limit = max_pdu_length or impl.MAX_UNLIMITED_PDU
    reassembled, controls, context_ids, lengths_ok = _reassemble(stream, limit)
    assert reassembled == data
    assert lengths_ok
    assert context_ids == {context_id}
    command_bit = 1 if is_command else 0
    assert controls == [command_bit] * (len(controls) - 1) + [command_bit | 2]
    # As few PDUs as the limit allows: every fragment but the last is full.
    assert all(len(part) == limit - 6 for part in parts[1:-2:2])


@settings(max_examples=300)
@given(
    data=st.binary(max_size=2000),
    max_pdu_length=st.one_of(st.integers(-3, 600), st.just(0), st.just(2**32)),
    context_id=st.integers(-2, 258),
    is_command=st.booleans(),
)
def test_fragment_pdata_implementations_agree(
    data: bytes, max_pdu_length: int, context_id: int, is_command: bool
) -> None:
    outcomes: list[object] = []
    for impl in (c, py):
        try:
            parts = impl.fragment_pdata(data, context_id, is_command, max_pdu_length)
            outcomes.append(b"".join(bytes(part) for part in parts))
        except ValueError as error:
            outcomes.append(("ValueError", str(error)))
    assert outcomes[0] == outcomes[1]


# ---- a prefix then the mapped rest (coercion, io/coerce.py) ------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prefix=st.binary(max_size=1500),
    data=st.binary(max_size=1500),
    max_pdu_length=st.one_of(st.integers(7, 400), st.just(0)),
    is_command=st.booleans(),
)
def test_fragment_pdata_prefixed_is_fragment_pdata_of_the_joined_bytes(
    impl: ModuleType, prefix: bytes, data: bytes, max_pdu_length: int, is_command: bool
) -> None:
    """Same PDUs, header for header and fragment for fragment, as the joined data set."""
    parts = impl.fragment_pdata_prefixed(prefix, data, 3, is_command, max_pdu_length)
    joined = impl.fragment_pdata(prefix + data, 3, is_command, max_pdu_length)
    assert [bytes(part) for part in parts] == [bytes(part) for part in joined]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_fragment_pdata_prefixed_copies_only_the_straddling_fragment(impl: ModuleType) -> None:
    prefix = bytearray(b"p" * 25)
    data = bytearray(b"d" * 100)
    parts = impl.fragment_pdata_prefixed(prefix, data, 1, False, 26)  # fragments of 20
    fragments = parts[1::2]
    assert [len(f) for f in fragments] == [20, 20, 20, 20, 20, 20, 5]
    assert fragments[0].obj is prefix  # 0..20 inside the prefix
    assert fragments[1].obj is not prefix and fragments[1].obj is not data  # 20..40: joined
    assert bytes(fragments[1]) == b"p" * 5 + b"d" * 15
    assert all(f.obj is data for f in fragments[2:])  # the rest: views of the mapped data
    data[99] = ord("Z")
    assert bytes(fragments[-1])[-1] == ord("Z")


@settings(max_examples=200)
@given(
    prefix=st.binary(max_size=800),
    data=st.binary(max_size=800),
    max_pdu_length=st.one_of(st.integers(-3, 300), st.just(0), st.just(2**32)),
    context_id=st.integers(-2, 258),
)
def test_fragment_pdata_prefixed_implementations_agree(
    prefix: bytes, data: bytes, max_pdu_length: int, context_id: int
) -> None:
    outcomes: list[object] = []
    for impl in (c, py):
        try:
            parts = impl.fragment_pdata_prefixed(prefix, data, context_id, False, max_pdu_length)
            outcomes.append(b"".join(bytes(part) for part in parts))
        except ValueError as error:
            outcomes.append(("ValueError", str(error)))
    assert outcomes[0] == outcomes[1]


# ---- PDV items (PS3.8 9.3.5.1) ------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_parse_pdvs_golden(impl: ModuleType) -> None:
    body = bytes.fromhex(
        "00000004 01 03 abcd"  # item-length 4: context 1, command + last, 2 bytes
        "00000002 03 00"  # item-length 2: context 3, data set, empty fragment
        "00000005 03 02 010203"  # item-length 5: context 3, data set + last, 3 bytes
    )
    assert impl.parse_pdvs(body) == [(1, 3, 6, 2), (3, 0, 14, 0), (3, 2, 20, 3)]
    assert impl.parse_pdvs(bytearray(body)) == impl.parse_pdvs(memoryview(body))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "no PDV items"),
        (bytes.fromhex("00000001 01"), "too short"),
        (bytes.fromhex("00000001 01 03"), "item-length 1"),
        (bytes.fromhex("00000005 01 03 ab"), "says 5 bytes, only 3 remain"),
        (bytes.fromhex("00000003 01 03 ab 0000"), "2 trailing bytes"),
    ],
)
def test_parse_pdvs_rejects(impl: ModuleType, body: bytes, message: str) -> None:
    with pytest.raises(PDUError, match=message):
        impl.parse_pdvs(body)


def _outcome(function: Any, *args: Any) -> Any:
    try:
        return function(*args)
    except (PDUError, ElementScanError) as error:
        return (type(error).__name__, str(error), getattr(error, "offset", None))


pdv_like = st.lists(
    st.tuples(st.integers(0, 12), st.binary(min_size=2, max_size=10)), max_size=5
).map(lambda items: b"".join(struct.pack(">I", n) + payload for n, payload in items))


@settings(max_examples=400)
@given(body=st.one_of(st.binary(max_size=64), pdv_like))
def test_parse_pdvs_implementations_agree(body: bytes) -> None:
    assert _outcome(c.parse_pdvs, body) == _outcome(py.parse_pdvs, body)


# ---- element scanning (PS3.5 7.1) ---------------------------------------------------


def _explicit_le(tag: int, vr: str, value: bytes) -> bytes:
    """One Explicit VR Little Endian element (PS3.5 7.1.2)."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    if vr in ("OB", "OW", "SQ", "UN", "UT", "UC", "UR", "OD", "OF", "OL", "OV", "SV", "UV"):
        return head + struct.pack("<HI", 0, len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def _item(content: bytes, *, little_endian: bool = True) -> bytes:
    order = "<" if little_endian else ">"
    return struct.pack(order + "HHI", 0xFFFE, 0xE000, len(content)) + content


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_scan_elements_golden_explicit_little(impl: ModuleType) -> None:
    data = (
        _explicit_le(0x00080016, "UI", b"1.2\x00")  # offset 0: short header, value at 8
        # offset 12: SQ header 12 + item header 8 + nested element 12 = 32 bytes
        + _explicit_le(0x00081140, "SQ", _item(_explicit_le(0x00081150, "UI", b"9.9\x00")))
        + _explicit_le(0x00100010, "PN", b"A^B ")  # offset 44, value at 52
        + _explicit_le(0x7FE00010, "OB", b"\x01\x02")  # offset 56: long header, value at 68
    )
    wanted = (0x00080016, 0x00100010, 0x7FE00010)
    found, end = impl.scan_elements(data, 0, True, True, wanted, ALL_TAGS)
    assert found == {0x00080016: (8, 4), 0x00100010: (52, 4), 0x7FE00010: (68, 2)}
    assert end == len(data) == 70
    # The nested (0008,1150) is not top level, so it is never reported.
    assert 0x00081150 not in impl.scan_elements(data, 0, True, True, (0x00081150,), ALL_TAGS)[0]
    # stop_tag: the walk ends where the first larger tag starts.
    assert impl.scan_elements(data, 0, True, True, (0x00100010,), 0x0008FFFF) == ({}, 44)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_scan_elements_undefined_length_un_holds_implicit_little_endian(impl: ModuleType) -> None:
    # PS3.5 6.2.2: even inside an explicit VR data set, an undefined-length UN's
    # items are Implicit VR Little Endian. The nested element here has a 4-byte
    # length that would be misread as VR "\x04\x00" if parsed as explicit VR.
    nested = struct.pack("<HHI", 0x0008, 0x0100, 4) + b"abcd"
    content = (
        struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + nested
        + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )
    un = struct.pack("<HH", 0x0009, 0x1010) + b"UN" + struct.pack("<HI", 0, 0xFFFFFFFF) + content
    data = un + _explicit_le(0x00100010, "PN", b"X^Y ")
    found, end = impl.scan_elements(data, 0, True, True, (0x00091010, 0x00100010), ALL_TAGS)
    assert found == {0x00091010: (12, len(content)), 0x00100010: (len(un) + 8, 4)}
    assert end == len(data)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    ("data", "message", "offset"),
    [
        (
            _explicit_le(0x00080016, "UI", b"1.2\x00")
            + _explicit_le(0x7FE00010, "OB", bytes(1000))[:-500],
            r"element \(7fe0,0010\) at offset 12 says 1000 bytes, only 500 remain",
            12,
        ),
        (b"\x08\x00\x16\x00ui\x04\x00", r"\(0008,0016\) at offset 0 has unknown explicit VR", 0),
        (b"\x08\x00\x16", r"at offset 0 is truncated: only 3 bytes remain", 0),
        (
            b"\xe0\x7f\x10\x00OB\x00\x00\x00",
            r"\(7fe0,0010\) at offset 0 is truncated: its header needs 12 bytes, only 9",
            0,
        ),
        (
            _explicit_le(0x00081140, "SQ", b"")[:8] + b"\xff\xff\xff\xff",
            r"\(0008,1140\) at offset 0 has undefined length but no Sequence Delimitation",
            0,
        ),
        (
            b"\x10\x00\x10\x00PN\xff\xff",
            r"\(0010,0010\) at offset 0 says 65535 bytes, only 0 remain",  # 0xffff is defined
            0,
        ),
        (
            b"\x10\x00\x10\x00UT\x00\x00\xff\xff\xff\xff",
            r"undefined length, which VR UT cannot have",
            0,
        ),
    ],
)
def test_scan_elements_rejects(impl: ModuleType, data: bytes, message: str, offset: int) -> None:
    with pytest.raises(ElementScanError, match=message) as caught:
        impl.scan_elements(data, 0, True, True, (), ALL_TAGS)
    assert caught.value.offset == offset


def _nested_undefined_sequences(depth: int) -> bytes:
    data = b""
    for _ in range(depth):
        data = (
            struct.pack("<HH", 0x0040, 0xA730)
            + b"SQ\x00\x00\xff\xff\xff\xff"
            + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
            + data
            + struct.pack("<HHIHHI", 0xFFFE, 0xE00D, 0, 0xFFFE, 0xE0DD, 0)
        )
    return data


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_scan_elements_nesting_limit(impl: ModuleType) -> None:
    deepest_allowed = _nested_undefined_sequences(impl.MAX_NESTING_DEPTH)
    assert impl.scan_elements(deepest_allowed, 0, True, True, (), ALL_TAGS)[1] == len(
        deepest_allowed
    )
    too_deep = _nested_undefined_sequences(impl.MAX_NESTING_DEPTH + 1)
    with pytest.raises(ElementScanError, match="nested deeper than 64"):
        impl.scan_elements(too_deep, 0, True, True, (), ALL_TAGS)


def _make_dataset(undefined_lengths: bool) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    code = Dataset()
    code.CodeValue = "12345"
    code.CodingSchemeDesignator = "99TEST"
    code.CodeMeaning = "nested"
    reference = Dataset()
    reference.ReferencedSOPClassUID = CTImageStorage
    reference.ReferencedSOPInstanceUID = "1.2.3.4.5"
    reference.PurposeOfReferenceCodeSequence = Sequence([code])
    ds.ReferencedImageSequence = Sequence([reference, Dataset()])
    ds.PatientName = "Hot^Path"
    ds.PatientID = "HP1"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.Rows = 4
    ds.Columns = 4
    ds.BitsAllocated = 16
    ds.PixelData = bytes(range(32))
    if undefined_lengths:
        for sequence_element in (
            ds["ReferencedImageSequence"],
            reference["PurposeOfReferenceCodeSequence"],
        ):
            sequence_element.is_undefined_length = True
            for item in sequence_element.value:
                item.is_undefined_length_sequence_item = True
    return ds


CASES = [
    (ImplicitVRLittleEndian, False, True),
    (ExplicitVRLittleEndian, True, True),
    (ExplicitVRBigEndian, True, False),
]


def _write(ds: Dataset, transfer_syntax: UID) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # big endian is retired; pydicom says so
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _encapsulated() -> bytes:
    ds = _make_dataset(undefined_lengths=True)
    ds.PixelData = encapsulate([b"\xff\xd8frame-one\xff\xd9", b"\xff\xd8frame-2\xff\xd9"])
    ds["PixelData"].VR = "OB"
    return _write(ds, JPEGBaseline8Bit)


def _pydicom_files() -> list[Any]:
    files = []
    for transfer_syntax, explicit_vr, little_endian in CASES:
        for undefined in (False, True):
            data = _write(_make_dataset(undefined), transfer_syntax)
            label = f"{transfer_syntax.name}-{'undefined' if undefined else 'defined'}"
            files.append(pytest.param(data, explicit_vr, little_endian, id=label))
    files.append(pytest.param(_encapsulated(), True, True, id="encapsulated"))
    return files


PYDICOM_FILES = _pydicom_files()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(("data", "explicit_vr", "little_endian"), PYDICOM_FILES)
def test_scan_elements_matches_pydicom(
    impl: ModuleType, data: bytes, explicit_vr: bool, little_endian: bool
) -> None:
    meta, dataset_offset = impl.scan_elements(data, 132, True, True, (0x00020010,), 0x0002FFFF)
    assert 0x00020010 in meta
    reference = pydicom.dcmread(io.BytesIO(data))
    tags = tuple(int(element.tag) for element in reference)
    found, end = impl.scan_elements(
        data, dataset_offset, explicit_vr, little_endian, tags, ALL_TAGS
    )
    assert end == len(data)
    assert set(found) == set(tags)
    for tag in tags:
        raw: Any = reference.get_item(tag)  # RawDataElement until accessed
        value_offset, value_length = found[tag]
        if raw.VR == "SQ" or not hasattr(raw, "value_tell"):
            continue  # pydicom parses sequences eagerly and keeps no raw offset
        if raw.length == 0xFFFFFFFF:
            # Encapsulated pixel data: our length runs to the end of the delimiter.
            assert value_offset == raw.value_tell
            assert data[value_offset + value_length - 8 : value_offset + value_length] == (
                b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
            )
            continue
        assert (value_offset, value_length) == (raw.value_tell, raw.length)
        assert data[value_offset : value_offset + value_length] == raw.value
    # Elements in sequences are walked but not reported.
    assert 0x00081150 not in found


@st.composite
def mutated_files(draw: st.DrawFn) -> tuple[bytes, bool, bool]:
    data, explicit_vr, little_endian = draw(st.sampled_from([p.values for p in PYDICOM_FILES]))
    buffer = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, len(buffer) - 1))
        buffer[position] = draw(st.integers(0, 255))
    cut = draw(st.integers(132, len(buffer)))
    return bytes(buffer[:cut]), explicit_vr, little_endian


@settings(max_examples=400)
@given(
    case=mutated_files(),
    wanted=st.lists(st.sampled_from([0x00080016, 0x00080018, 0x0020000D, 0x7FE00010]), max_size=4),
)
def test_scan_elements_implementations_agree_on_damaged_files(
    case: tuple[bytes, bool, bool], wanted: list[int]
) -> None:
    data, explicit_vr, little_endian = case
    args = (data, 132, explicit_vr, little_endian, tuple(wanted), ALL_TAGS)
    assert _outcome(c.scan_elements, *args) == _outcome(py.scan_elements, *args)


element_like = st.lists(
    st.one_of(
        st.binary(min_size=1, max_size=12),
        st.sampled_from(
            [
                b"\xfe\xff\x00\xe0\xff\xff\xff\xff",  # item, undefined length
                b"\xfe\xff\x0d\xe0\x00\x00\x00\x00",  # item delimitation
                b"\xfe\xff\xdd\xe0\x00\x00\x00\x00",  # sequence delimitation
                b"\x08\x00\x40\x11SQ\x00\x00\xff\xff\xff\xff",  # SQ, undefined length
                b"\x09\x00\x10\x10UN\x00\x00\xff\xff\xff\xff",  # UN, undefined length
                b"\x08\x00\x40\x11\xff\xff\xff\xff",  # implicit SQ, undefined length
                b"\x08\x00\x16\x00UI\x02\x001\x00",
            ]
        ),
    ),
    max_size=20,
).map(b"".join)


# Arguments of a walk over bytes that are mostly not a data set.
GARBAGE_WALK = {
    "data": st.one_of(st.binary(max_size=80), element_like),
    "offset": st.integers(0, 4),
    "explicit_vr": st.booleans(),
    "little_endian": st.booleans(),
    "stop_tag": st.one_of(st.just(ALL_TAGS), st.integers(0, ALL_TAGS)),
}


@settings(max_examples=1000)
@given(**GARBAGE_WALK)
def test_scan_elements_implementations_agree_on_garbage(
    data: bytes, offset: int, explicit_vr: bool, little_endian: bool, stop_tag: int
) -> None:
    offset = min(offset, len(data))
    wanted = (0x00080016, 0x00081140, 0x00091010, 0xFFFEE000)
    args = (data, offset, explicit_vr, little_endian, wanted, stop_tag)
    result = _outcome(c.scan_elements, *args)
    assert result == _outcome(py.scan_elements, *args)
    if isinstance(result[0], dict):
        found, end = result
        assert offset <= end <= len(data)
        for value_offset, value_length in found.values():
            assert offset <= value_offset <= value_offset + value_length <= end


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_scan_elements_reads_mmap_without_holding_it(impl: ModuleType, tmp_path: Any) -> None:
    data = PYDICOM_FILES[2].values[0]
    path = tmp_path / "ct.dcm"
    path.write_bytes(data)
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    found, end = impl.scan_elements(mapped, 132, True, True, (0x00020010,), 0x0002FFFF)
    assert found and end > 132
    mapped.close()  # BufferError here would mean the scan kept an export alive


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_scan_elements_rejects_bad_arguments(impl: ModuleType) -> None:
    with pytest.raises(ValueError, match="offset 5 is outside"):
        impl.scan_elements(b"abc", 5, True, True, (), ALL_TAGS)
    with pytest.raises(ValueError, match="stop tag"):
        impl.scan_elements(b"abc", 0, True, True, (), ALL_TAGS + 1)
    assert impl.scan_elements(b"abc", 3, True, True, (), ALL_TAGS) == ({}, 3)


# ---- decoded values (scan_values, PS3.5 6.2) ----------------------------------------


def _element(tag: int, vr: str, value: bytes, explicit_vr: bool, little_endian: bool) -> bytes:
    """One element with a 16-bit length (explicit VR) or a 32-bit one (implicit, PS3.5 7.1)."""
    order = "<" if little_endian else ">"
    head = struct.pack(order + "HH", tag >> 16, tag & 0xFFFF)
    if explicit_vr:
        return head + vr.encode() + struct.pack(order + "H", len(value)) + value
    return head + struct.pack(order + "I", len(value)) + value


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    ("value", "as_ui", "as_text"),
    [
        (b"1.2.840.10008.1.2.1\x00", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1"),
        (b"1.2 \x00 \x00", "1.2", "1.2"),  # NULs and spaces mixed, all stripped
        (b" 1.2", " 1.2", " 1.2"),  # leading spaces are kept
        (b"1\x002\x00", "1\x002", "1\x002"),  # only trailing padding goes
        (b"\x00 \x00 ", None, ""),  # padding only: empty
        (b"", None, ""),
        (b"Caf\xc3\xa9 ", None, "Caf\u00e9"),  # UTF-8; not ASCII, so no UID
        (b"Caf\xe9", None, "Caf\u00e9"),  # not UTF-8: Latin-1
        (b"\xed\xa0\x80", None, "\u00ed\u00a0\u0080"),  # an encoded surrogate is not UTF-8
        (b"\x7f", "\x7f", "\x7f"),
    ],
)
def test_scan_values_golden(
    impl: ModuleType, value: bytes, as_ui: str | None, as_text: str
) -> None:
    for explicit_vr, little_endian in ((True, True), (False, True), (True, False)):
        data = (
            _element(0x00080016, "UI", b"1.2\x00", explicit_vr, little_endian)
            + _element(0x00100010, "PN", value, explicit_vr, little_endian)
            + _element(0x00100020, "LO", b"ID ", explicit_vr, little_endian)
        )
        ui_tags = (0x00100010, 0x00080016, 0x00080018)
        text_tags = (0x00100010, 0x00100020, 0x00100030)
        assert impl.scan_values(
            data, 0, explicit_vr, little_endian, ui_tags, text_tags, ALL_TAGS
        ) == ((as_ui, "1.2", None), (as_text, "ID", ""), len(data))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_scan_values_stops_like_scan_elements_and_keeps_the_last_repeat(
    impl: ModuleType,
) -> None:
    data = (
        _element(0x00080016, "UI", b"1.1\x00", True, True)
        + _element(0x00080016, "UI", b"1.2\x00", True, True)
        + _element(0x00100010, "PN", b"A^B ", True, True)
    )
    stop = len(data) - 12
    assert impl.scan_values(data, 0, True, True, (0x00080016,), (0x00100010,), 0x0008FFFF) == (
        ("1.2",),
        ("",),
        stop,
    )
    assert impl.scan_elements(data, 0, True, True, (), 0x0008FFFF)[1] == stop
    # Tags outside 0..0xffffffff are never found; an empty request still walks.
    assert impl.scan_values(data, 0, True, True, (-1, 1 << 32), (1 << 40,), ALL_TAGS) == (
        (None, None),
        ("",),
        len(data),
    )
    assert impl.scan_values(data, 24, True, True, (), (), ALL_TAGS) == ((), (), len(data))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_scan_values_rejects_like_scan_elements(impl: ModuleType) -> None:
    with pytest.raises(ValueError, match="offset 5 is outside"):
        impl.scan_values(b"abc", 5, True, True, (), (), ALL_TAGS)
    with pytest.raises(ValueError, match="stop tag"):
        impl.scan_values(b"abc", 0, True, True, (), (), ALL_TAGS + 1)
    with pytest.raises(ElementScanError, match="says 4 bytes, only 2 remain"):
        impl.scan_values(
            b"\x08\x00\x16\x00UI\x04\x001.", 0, True, True, (0x00080016,), (), ALL_TAGS
        )
    # Not C-contiguous: the compiled module falls back to the twin's memoryview and its error.
    with pytest.raises(TypeError, match="C-contiguous"):
        impl.scan_values(memoryview(b"abcd")[::2], 0, True, True, (), (), ALL_TAGS)
    with pytest.raises(TypeError, match="bytes-like object is required"):
        impl.scan_values("text", 0, True, True, (), (), ALL_TAGS)


def test_compiled_scan_values_frees_its_tag_array_when_an_argument_is_rejected() -> None:
    # More tags than the compiled walk keeps on its stack: it allocates an
    # array for them, which an offset that is not an integer must not leak.
    import resource

    # A leaked array costs at least the page its allocation header is written
    # to: some 80 MB over these calls, against nothing when it is freed.
    tags = tuple(range(0x00080000, 0x00080000 + 2000))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(20_000):
        with pytest.raises(TypeError):
            c.scan_values(bytes(16), 1.0, True, True, tags, (), ALL_TAGS)  # type: ignore[arg-type]
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 40_000, f"peak RSS grew {grown_kib} KiB: the array leaks"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_scan_values_reads_mmap_and_other_buffers_without_holding_them(
    impl: ModuleType, tmp_path: Any
) -> None:
    data = PYDICOM_FILES[2].values[0]
    path = tmp_path / "ct.dcm"
    path.write_bytes(data)
    wanted = ((0x00020010, 0x00020003), ())
    expected = ("1.2.840.10008.1.2.1", "1.2.826.0.1.3680043.8.498.1"), ()
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    assert impl.scan_values(mapped, 132, True, True, *wanted, 0x0002FFFF)[:2] == expected
    mapped.close()  # BufferError here would mean the scan kept an export alive
    grown = bytearray(data)
    for buffer, offset in (
        (grown, 132),
        (memoryview(data)[100:], 32),
        (memoryview(data).cast("H"), 132),  # read as bytes, as the twin's cast("B") does
    ):
        assert impl.scan_values(buffer, offset, True, True, *wanted, 0x0002FFFF)[:2] == expected
    grown.extend(b"\x00\x00")  # BufferError here: an export of the bytearray still held


# A value's bytes: padding, ASCII, UTF-8, Latin-1 and broken UTF-8 in pieces.
value_bytes = st.lists(
    st.one_of(
        st.sampled_from(
            [b"\x00", b" ", b"1.2.840", b"\xc3\xa9", b"\xc3", b"\xff", b"\xed\xa0\x80", b"\x80"]
        ),
        st.binary(max_size=4),
    ),
    max_size=6,
).map(b"".join)
VALUE_TAGS = [0x00080016, 0x00080018, 0x00080020, 0x00100010, 0x00100020, 0x0020000D]


@st.composite
def value_data_sets(draw: st.DrawFn) -> tuple[bytes, bool, bool]:
    explicit_vr, little_endian = draw(st.booleans()), draw(st.booleans())
    # Sorted as a writer would; repeats and absent tags included.
    tags = sorted(draw(st.lists(st.sampled_from(VALUE_TAGS), max_size=8)))
    data = b"".join(
        _element(tag, draw(st.sampled_from(["UI", "LO", "PN"])), draw(value_bytes), explicit_vr,
                 little_endian)
        for tag in tags
    )  # fmt: skip
    return data, explicit_vr, little_endian


# Up to 24 tags in all: more than the compiled module keeps on its stack (16).
wanted_tags = st.lists(
    st.one_of(st.sampled_from(VALUE_TAGS), st.integers(-1, 1 << 33)), max_size=12
)


@settings(max_examples=1000)
@given(
    case=value_data_sets(),
    ui_tags=wanted_tags,
    text_tags=wanted_tags,
    stop_tag=st.one_of(st.just(ALL_TAGS), st.sampled_from(VALUE_TAGS)),
)
def test_scan_values_implementations_agree(
    case: tuple[bytes, bool, bool], ui_tags: list[int], text_tags: list[int], stop_tag: int
) -> None:
    data, explicit_vr, little_endian = case
    args = (data, 0, explicit_vr, little_endian, tuple(ui_tags), tuple(text_tags), stop_tag)
    result = c.scan_values(*args)
    assert result == py.scan_values(*args)
    assert len(result[0]) == len(ui_tags) and len(result[1]) == len(text_tags)
    assert result[2] == c.scan_elements(data, 0, explicit_vr, little_endian, (), stop_tag)[1]


@settings(max_examples=500)
@given(**GARBAGE_WALK)
def test_scan_values_implementations_agree_on_garbage(
    data: bytes, offset: int, explicit_vr: bool, little_endian: bool, stop_tag: int
) -> None:
    offset = min(offset, len(data))
    args = (data, offset, explicit_vr, little_endian, (0x00080016,), (0x00081140,), stop_tag)
    assert _outcome(c.scan_values, *args) == _outcome(py.scan_values, *args)


@settings(max_examples=300)
@given(case=mutated_files())
def test_scan_values_implementations_agree_on_damaged_files(
    case: tuple[bytes, bool, bool],
) -> None:
    data, explicit_vr, little_endian = case
    uids = (0x00080016, 0x00080018, 0x0020000D)
    args = (data, 132, explicit_vr, little_endian, uids, (0x00100010, 0x00100020), ALL_TAGS)
    assert _outcome(c.scan_values, *args) == _outcome(py.scan_values, *args)


def test_compiled_and_pure_export_the_same_api() -> None:
    imported = {"struct", "ElementScanError", "PDUError", "Final", "NamedTuple", "TYPE_CHECKING"}
    public = {name for name in dir(py) if not name.startswith("_")} - imported - {"annotations"}
    assert public <= set(dir(c))
    for name in ("PDATA_HEADER_LENGTH", "MAX_UNLIMITED_PDU", "MAX_NESTING_DEPTH"):
        assert getattr(c, name) == getattr(py, name)


def test_selector_falls_back_with_a_warning_when_extension_missing() -> None:
    # sys.modules[name] = None makes `import` of that name raise ImportError,
    # as it would in a source checkout where _pdu.pyx was never compiled.
    code = (
        "import sys, warnings\n"
        "sys.modules['dicom_fastsend._pdu'] = None\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from dicom_fastsend.protocol import hotpath\n"
        "print(hotpath.IMPLEMENTATION, hotpath.impl.__name__,"
        " any('not built' in str(w.message) for w in caught))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "FASTSEND_PURE_PYTHON"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["python", "dicom_fastsend._pdu_py", "True"]
