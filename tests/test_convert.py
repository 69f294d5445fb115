"""Explicit <-> Implicit VR Little Endian conversion (PS3.5 A.1 / A.2), Explicit VR
Big Endian to either (PS3.5 A.3, 7.3), and transcode_file for compressed and deflated files."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_data_element, write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import RLELossless

from dicom_fastsend import synth
from dicom_fastsend.errors import FastsendError
from dicom_fastsend.io.convert import ConversionError, convert_dataset, transcode_file
from dicom_fastsend.io.header import read_header
from dicom_fastsend.protocol.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)
from transcoded import assert_arrived_unchanged, write_ct

EVRLE = EXPLICIT_VR_LITTLE_ENDIAN
IVRLE = IMPLICIT_VR_LITTLE_ENDIAN
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def encode(ds: Dataset, transfer_syntax: str) -> bytes:
    """The data set (without file meta) as it would travel in a P-DATA-TF.

    For big endian, pydicom swaps numbers but writes OB/OW-like values as
    given: those must already hold big endian bytes.
    """
    fp = DicomBytesIO()
    fp.is_little_endian = transfer_syntax != EXPLICIT_VR_BIG_ENDIAN
    fp.is_implicit_VR = transfer_syntax == IVRLE
    write_dataset(fp, ds)
    return bytes(fp.getvalue())


def decode(data: bytes, transfer_syntax: str) -> Dataset:
    fp = DicomBytesIO(data)
    implicit = transfer_syntax == IVRLE
    little_endian = transfer_syntax != EXPLICIT_VR_BIG_ENDIAN
    ds = read_dataset(fp, implicit, little_endian)  # type: ignore[arg-type]
    assert fp.tell() == len(data), "decoder did not consume the whole data set"
    return ds


def value_bytes(elem: DataElement) -> bytes:
    """An element's value encoded in Little Endian, header stripped."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    write_data_element(fp, elem)
    return bytes(fp.getvalue())[8:]  # implicit header: tag (4) + length (4)


def assert_same_values(a: Dataset, b: Dataset, path: str = "") -> None:
    """Every element of `a` is in `b` with the same value, recursively.

    An element whose VR one side could not know (UN, PS3.5 6.2.2) must carry
    exactly the bytes of the other side's value.
    """
    a_tags = [t for t in a.keys() if not (t.element == 0 and t.group > 6)]
    assert a_tags == list(b.keys()), f"{path}: tag lists differ"
    for tag in a_tags:
        ea, eb = a[tag], b[tag]
        where = f"{path}{tag}"
        if ea.VR == "SQ" or eb.VR == "SQ":
            assert ea.VR == eb.VR == "SQ", f"{where}: {ea.VR} vs {eb.VR}"
            assert len(ea.value) == len(eb.value), f"{where}: item counts differ"
            for i, (ia, ib) in enumerate(zip(ea.value, eb.value, strict=True)):
                assert_same_values(ia, ib, f"{where}[{i}].")
        elif ea.VR == eb.VR:
            assert ea.value == eb.value, f"{where}: {ea.value!r} != {eb.value!r}"
        else:
            assert "UN" in (ea.VR, eb.VR), f"{where}: VR {ea.VR} became {eb.VR}"
            assert value_bytes(ea) == value_bytes(eb), f"{where}: UN bytes differ"


def synth_dataset(transfer_syntax: str, modality: str = "CT", number: int = 2) -> Dataset:
    return synth.make_instance(
        modality=modality,
        study_uid="1.2.3.4",
        series_uid="1.2.3.4.5",
        instance_number=number,
        rows=8,
        columns=6,
        transfer_syntax=transfer_syntax,
        seed=7,
    )


@pytest.mark.parametrize("modality", ["CT", "MR", "SC"])
@pytest.mark.parametrize(("source", "target"), [(EVRLE, IVRLE), (IVRLE, EVRLE)])
def test_values_survive_conversion(modality: str, source: str, target: str) -> None:
    original = synth_dataset(source, modality)
    data = encode(original, source)
    converted = convert_dataset(data, source, target)
    assert converted != data
    assert_same_values(decode(data, source), decode(converted, target))
    # And back again: the original syntax decodes to the same values too.
    back = convert_dataset(converted, target, source)
    assert_same_values(decode(data, source), decode(back, source))


def test_implicit_round_trip_is_byte_exact() -> None:
    data = encode(synth_dataset(IVRLE), IVRLE)
    there = convert_dataset(data, IVRLE, EVRLE)
    assert convert_dataset(there, EVRLE, IVRLE) == data


def test_implicit_to_explicit_headers() -> None:
    data = encode(synth_dataset(IVRLE), IVRLE)
    ds = decode(convert_dataset(data, IVRLE, EVRLE), EVRLE)
    assert ds["PixelData"].VR == "OW"  # PS3.5 A.1: implicit pixel data is OW
    assert ds["ProcedureCodeSequence"].VR == "SQ"
    ref = ds.ReferencedImageSequence[0]
    assert ref["PurposeOfReferenceCodeSequence"].VR == "SQ"
    assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121329"
    assert ds[0x00090010].VR == "LO"  # private creators are always LO (PS3.5 7.8.1)
    assert ds[0x00091001].VR == "UN"  # unknown creator: the VR is unknowable
    assert ds[0x00091001].value == b"synthetic instance 2"
    assert ds.Rows == 8 and ds["Rows"].VR == "US"
    assert ds.PixelData == synth_dataset(EVRLE).PixelData


def test_explicit_private_values_arrive_as_bytes() -> None:
    data = encode(synth_dataset(EVRLE), EVRLE)
    ds = decode(convert_dataset(data, EVRLE, IVRLE), IVRLE)
    assert ds[0x00091002].value == struct.pack("<H", 2)
    assert ds[0x00091003].value == struct.pack("<2d", 7.0, 1.5)


def test_ambiguous_vr_resolved_from_pixel_representation() -> None:
    # Smallest Image Pixel Value is "US or SS" (PS3.6); signed pixels make it SS.
    ds = synth_dataset(IVRLE)
    ds.PixelRepresentation = 1
    ds.add_new(0x00280106, "SS", -5)
    out = decode(convert_dataset(encode(ds, IVRLE), IVRLE, EVRLE), EVRLE)
    assert out["SmallestImagePixelValue"].VR == "SS"
    assert out.SmallestImagePixelValue == -5


def test_values_not_valid_in_their_character_set_are_kept() -> None:
    # A legacy value that is not valid UTF-8 although the data set says it is:
    # decoding and re-encoding would replace the bytes; conversion must not.
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    data = bytearray(encode(ds, EVRLE))
    data += struct.pack("<HH2sH", 0x0010, 0x0010, b"PN", 4) + b"\xff\xfeAB"
    data += struct.pack("<HH2sH", 0x0010, 0x0020, b"LO", 2) + b"X "
    out = convert_dataset(bytes(data), EVRLE, IVRLE)
    assert out.endswith(
        struct.pack("<HHI", 0x0010, 0x0010, 4)
        + b"\xff\xfeAB"
        + struct.pack("<HHI", 0x0010, 0x0020, 2)
        + b"X "
    )
    back = convert_dataset(out, IVRLE, EVRLE)
    assert back == bytes(data)


def test_group_length_is_dropped() -> None:
    # PS3.5 7.2: retired, and its value would be wrong in the other syntax.
    ds = Dataset()
    ds.Modality = "CT"
    modality = encode(ds, EVRLE)
    data = struct.pack("<HH2sHI", 0x0008, 0x0000, b"UL", 4, len(modality)) + modality
    out = decode(convert_dataset(data, EVRLE, IVRLE), IVRLE)
    assert list(out.keys()) == [0x00080060]


def test_long_value_becomes_un_in_explicit() -> None:
    # An LO longer than 64 KiB fits Implicit's 32-bit length but not
    # Explicit's 16-bit one; PS3.5 6.2.2 says to send it as UN.
    ds = Dataset()
    ds.add(DataElement(0x00081030, "LO", "x" * 70000))
    data = encode(ds, IVRLE)
    with pytest.warns(UserWarning, match="UN"):
        out = convert_dataset(data, IVRLE, EVRLE)
    elem = decode(out, EVRLE)[0x00081030]
    assert elem.VR in ("UN", "LO")  # pydicom may map a known tag's UN back
    assert value_bytes(elem) == b"x" * 70000


def test_memoryview_input_and_identity() -> None:
    data = encode(synth_dataset(EVRLE), EVRLE)
    assert convert_dataset(memoryview(data), EVRLE, EVRLE) == data
    assert convert_dataset(memoryview(data), EVRLE, IVRLE) == convert_dataset(data, EVRLE, IVRLE)


def test_empty_dataset() -> None:
    assert convert_dataset(b"", EVRLE, IVRLE) == b""


@pytest.mark.parametrize(
    ("source", "target", "fragment"),
    [
        (JPEG_BASELINE, IVRLE, "cannot convert JPEG Baseline (Process 1) to Implicit VR Little"),
        (EVRLE, JPEG_BASELINE, "to JPEG Baseline (Process 1) without transcoding"),
        (EVRLE, EXPLICIT_VR_BIG_ENDIAN, "to Explicit VR Big Endian"),
        (DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, IVRLE, "Deflated"),
        ("1.2.3.999", EVRLE, "1.2.3.999"),
        (JPEG_BASELINE, JPEG_BASELINE, "JPEG Baseline"),
    ],
)
def test_unsupported_syntaxes(source: str, target: str, fragment: str) -> None:
    data = encode(synth_dataset(EVRLE), EVRLE)
    with pytest.raises(ConversionError, match="without transcoding") as info:
        convert_dataset(data, source, target)
    assert fragment in str(info.value)
    assert isinstance(info.value, FastsendError)


def test_truncated_input() -> None:
    data = encode(synth_dataset(EVRLE), EVRLE)
    with pytest.raises(ConversionError):
        convert_dataset(data[:-100], EVRLE, IVRLE)
    with pytest.raises(ConversionError, match="odd length"):
        convert_dataset(data[:-1], EVRLE, IVRLE)


def test_explicit_header_read_as_implicit_is_rejected() -> None:
    # Explicit data labelled Implicit: the VR bytes are read as a huge length.
    data = encode(synth_dataset(EVRLE), EVRLE)
    with pytest.raises(ConversionError):
        convert_dataset(data, IVRLE, EVRLE)


def test_garbage() -> None:
    with pytest.raises(ConversionError, match="'ZZ'"):
        convert_dataset(b"\x08\x00\x60\x00ZZ\xff\xff" + b"\x00" * 8, EVRLE, IVRLE)
    with pytest.raises(ConversionError):
        convert_dataset(b"\x08\x00\x60\x00CS\xff\xff" + b"\x00" * 8, EVRLE, IVRLE)


def test_encapsulated_pixel_data_is_rejected() -> None:
    ds = Dataset()
    ds.Rows = 1
    data = bytearray(encode(ds, EVRLE))
    # (7FE0,0010) OB, undefined length, empty offset table item, one fragment,
    # sequence delimiter (PS3.5 A.4): compressed data mislabelled as EVRLE.
    data += struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF)
    data += struct.pack("<HHI", 0xFFFE, 0xE000, 0)
    data += struct.pack("<HHI", 0xFFFE, 0xE000, 2) + b"\xff\xd8"
    data += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    with pytest.raises(ConversionError, match="encapsulated"):
        convert_dataset(bytes(data), EVRLE, IVRLE)


def _ds_from(values: dict[str, Any]) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\\"),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(
    patient_id=_text,
    description=_text,
    numbers=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=4),
    items=st.lists(_text, max_size=3),
    private=st.binary(max_size=30).map(lambda b: b + b"\0" * (len(b) % 2)),
)
def test_property_round_trip(
    patient_id: str, description: str, numbers: list[int], items: list[str], private: bytes
) -> None:
    ds = _ds_from({"PatientID": patient_id, "StudyDescription": description})
    ds.add_new(0x00181310, "US", numbers)  # Acquisition Matrix, VM 4 but any VM encodes
    seq = []
    for text in items:
        item = Dataset()
        item.CodeMeaning = text
        seq.append(item)
    ds.ProcedureCodeSequence = Sequence(seq)
    block = ds.private_block(0x0011, "FUZZ", create=True)
    block.add_new(0x01, "OB", private)
    for source, target in [(EVRLE, IVRLE), (IVRLE, EVRLE)]:
        data = encode(ds, source)
        out = convert_dataset(data, source, target)
        assert_same_values(decode(data, source), decode(out, target))
        assert_same_values(
            decode(data, source), decode(convert_dataset(out, target, source), source)
        )


def test_explicit_un_sequence_becomes_a_sequence() -> None:
    # PS3.5 6.2.2: a sequence sent as UN with undefined length holds Implicit
    # VR items; Implicit output is a plain sequence, Explicit output says SQ.
    item = struct.pack("<HHI", 0x0008, 0x0060, 2) + b"CT"
    data = (
        struct.pack("<HH2sHI", 0x0008, 0x1032, b"UN", 0, 0xFFFFFFFF)
        + struct.pack("<HHI", 0xFFFE, 0xE000, len(item))
        + item
        + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )
    implicit = convert_dataset(data, EVRLE, IVRLE)
    assert decode(implicit, IVRLE).ProcedureCodeSequence[0].Modality == "CT"
    explicit = decode(convert_dataset(implicit, IVRLE, EVRLE), EVRLE)
    assert explicit["ProcedureCodeSequence"].VR == "SQ"
    assert explicit.ProcedureCodeSequence[0]["Modality"].VR == "CS"


# ------------------------------------------------------------ big endian


@pytest.mark.parametrize("modality", ["CT", "MR", "SC"])
@pytest.mark.parametrize("target", [EVRLE, IVRLE])
def test_big_endian_values_survive_conversion(modality: str, target: str) -> None:
    data = encode(synth_dataset(EXPLICIT_VR_BIG_ENDIAN, modality), EXPLICIT_VR_BIG_ENDIAN)
    source = decode(data, EXPLICIT_VR_BIG_ENDIAN)
    out = decode(convert_dataset(data, EXPLICIT_VR_BIG_ENDIAN, target), target)
    # pydicom keeps OW values as the file's bytes: pixels compared as numbers.
    pixels = np.frombuffer(source.PixelData, ">u2")
    assert np.array_equal(np.frombuffer(out.PixelData, "<u2"), pixels)
    assert len(set(pixels.tolist())) > 10  # real data, not a constant
    del source.PixelData, out.PixelData
    # Numbers as pydicom reads them from each side; an Implicit UN private
    # value must hold the little endian bytes of the big endian number.
    assert_same_values(source, out)


def test_big_endian_binary_values_are_swapped_in_their_own_unit() -> None:
    # PS3.5 7.3 and Table 6.2-1: each binary VR in its own unit; text, OB and
    # UN bytes are not numbers and keep their order.
    numbers = {
        0x01: ("US", [1, 0x1234], "H"),
        0x02: ("SS", [-2, 300], "h"),
        0x03: ("UL", [0x01020304], "L"),
        0x04: ("SL", [-70000], "l"),
        0x05: ("FL", [1.5, -2.25], "f"),
        0x06: ("FD", [3.0e100], "d"),
        0x07: ("SV", [-(2**40)], "q"),
        0x08: ("UV", [2**63 + 5], "Q"),
    }
    words = {  # OB/OW-like VRs: pydicom writes and reads their bytes as they are
        0x10: ("OW", "H", [1, 0xABCD, 7]),
        0x11: ("OF", "f", [0.5, -1.0]),
        0x12: ("OL", "L", [0xDEADBEEF]),
        0x13: ("OD", "d", [1e-300]),
        0x14: ("OV", "Q", [2**64 - 2]),
    }
    unchanged = {0x20: ("OB", b"\x01\x02\x03\x04"), 0x21: ("UN", b"\x05\x06"), 0x22: ("LO", b"AB")}

    def dataset(byte_order: str) -> Dataset:
        ds = Dataset()
        block = ds.private_block(0x0011, "FASTSEND BYTE ORDER", create=True)
        for offset, (vr, values, _) in numbers.items():
            block.add_new(offset, vr, values)
        for offset, (vr, fmt, values) in words.items():
            block.add_new(offset, vr, struct.pack(f"{byte_order}{len(values)}{fmt}", *values))
        for offset, (vr, raw) in unchanged.items():
            block.add_new(offset, vr, raw)
        ds.add_new(0x00209165, "AT", [0x00100020, 0x7FE00010])  # Dimension Index Pointer
        item = Dataset()
        item.add_new(0x00280010, "US", 0x0102)  # Rows, inside a sequence item
        item.add_new(0x00283006, "OW", struct.pack(f"{byte_order}2H", 0x0A0B, 5))  # LUT Data
        ds.ModalityLUTSequence = Sequence([item])
        return ds

    data = encode(dataset(">"), EXPLICIT_VR_BIG_ENDIAN)
    out = convert_dataset(data, EXPLICIT_VR_BIG_ENDIAN, EVRLE)
    # The same data set written little endian by pydicom, with little endian
    # words: the converted bytes must be exactly these.
    assert out == encode(dataset("<"), EVRLE)
    ds = decode(out, EVRLE)
    assert ds[0x00111001].value == [1, 0x1234]
    assert ds[0x00111008].value == 2**63 + 5
    assert ds[0x00111010].value == struct.pack("<3H", 1, 0xABCD, 7)
    assert ds[0x00111021].value == b"\x05\x06"
    assert ds.DimensionIndexPointer == [0x00100020, 0x7FE00010]
    assert ds.ModalityLUTSequence[0].Rows == 0x0102


BIG_ENDIAN_TWINS = [
    ("MR_small_expb.dcm", "MR_small.dcm"),  # 16 bits allocated
    ("rtdose_expb_1frame.dcm", "rtdose_1frame.dcm"),  # 32 bits allocated, OW
    ("SC_rgb_small_odd_big_endian.dcm", "SC_rgb_small_odd.dcm"),  # 8 bits in OW, odd
    ("liver_expb_1frame.dcm", "liver_1frame.dcm"),  # 1 bit allocated, OB
]


@pytest.mark.parametrize(("big", "little"), BIG_ENDIAN_TWINS)
@pytest.mark.parametrize("target", [EVRLE, IVRLE])
def test_big_endian_pixel_data_matches_pydicoms_little_endian_twin(
    big: str, little: str, target: str
) -> None:
    # pydicom ships each of these images in both byte orders; converting the
    # big endian file must give the little endian file's pixel bytes exactly.
    path = Path(get_testdata_file(big) or "")
    data = path.read_bytes()[read_header(path).dataset_offset :]
    out = decode(convert_dataset(data, EXPLICIT_VR_BIG_ENDIAN, target), target)
    twin = pydicom.dcmread(get_testdata_file(little))
    assert out.PixelData == twin.PixelData
    out.file_meta = FileMetaDataset()
    out.file_meta.TransferSyntaxUID = target
    assert np.array_equal(out.pixel_array, pydicom.dcmread(path).pixel_array)


def test_big_endian_value_not_a_whole_number_of_units_is_rejected() -> None:
    # (7FE0,0008) Float Pixel Data is OF: 4-byte floats, and 6 bytes are not.
    data = struct.pack(">HH2sHI", 0x7FE0, 0x0008, b"OF", 0, 6) + b"\x00" * 6
    with pytest.raises(ConversionError, match="6 value bytes, not a multiple of its 4-byte"):
        convert_dataset(data, EXPLICIT_VR_BIG_ENDIAN, EVRLE)


# ------------------------------------------------------------ transcode_file


@pytest.mark.parametrize("syntax", [RLELossless, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN])
@pytest.mark.parametrize("target", [EVRLE, IVRLE])
def test_transcode_file_writes_the_accepted_le_syntax(
    tmp_path: Path, syntax: str, target: str
) -> None:
    path = write_ct(tmp_path / "ct.dcm", syntax, 0)
    out = decode(transcode_file(str(path), target), target)
    out.file_meta = FileMetaDataset()
    out.file_meta.TransferSyntaxUID = target
    assert_arrived_unchanged(out, path)


def test_transcode_file_leaves_big_endian_to_convert_dataset() -> None:
    # pydicom's writer would keep big endian OW bytes in a little endian data set.
    path = get_testdata_file("MR_small_bigendian.dcm")
    with pytest.raises(ConversionError, match="converted on the fly"):
        transcode_file(str(path), EVRLE)
