"""--coerce without processes: the rules file, and re-encoding checked against pydicom.

Each round trip builds a data set with pydicom in one transfer syntax, coerces
its encoded bytes, decodes ``prefix + rest`` with pydicom and compares every
element with what the rules ask for: the changed ones changed, every other one
equal, in value and in raw bytes.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from dicom_fastsend.io.coerce import (
    Coerced,
    CoercionError,
    CoercionRulesError,
    coerce_dataset,
    load_rules,
    parse_rules,
)

SYNTAXES = [
    pytest.param(ImplicitVRLittleEndian, id="implicit-le"),
    pytest.param(ExplicitVRLittleEndian, id="explicit-le"),
    pytest.param(ExplicitVRBigEndian, id="explicit-be"),
]


def _dataset(pixels: bytes = b"\x01\x02" * 64) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.StudyDate = "20240102"
    ds.AccessionNumber = "ACC1"
    ds.Modality = "OT"
    ds.PatientName = "Doe^John"
    ds.PatientID = "OLD1"
    ds.PatientBirthDate = "19700101"
    item = Dataset()
    item.CodeValue = "X"
    item.CodingSchemeDesignator = "99LOCAL"
    ds.ProcedureCodeSequence = Sequence([item])
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.SeriesNumber = 7
    ds.Rows = 8
    ds.Columns = 8
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = pixels
    return ds


def _encode(ds: Dataset, syntax: str) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR = syntax == ImplicitVRLittleEndian
    fp.is_little_endian = syntax != ExplicitVRBigEndian
    write_dataset(fp, ds)
    return fp.getvalue()


def _decode(data: bytes, syntax: str) -> Dataset:
    return read_dataset(
        io.BytesIO(data),
        is_implicit_VR=syntax == ImplicitVRLittleEndian,
        is_little_endian=syntax != ExplicitVRBigEndian,
    )


def _joined(data: bytes, coerced: Coerced) -> bytes:
    return coerced.prefix + data[coerced.resume_at :]


def _raw(ds: Dataset) -> dict[int, bytes | None]:
    """Every top-level element's raw value as read (None: a sequence)."""
    out: dict[int, bytes | None] = {}
    for tag in ds.keys():
        elem = ds.get_item(tag)
        out[int(tag)] = elem.value if isinstance(elem.value, bytes) else None
    return out


def _assert_same_except(
    before_bytes: bytes, after_bytes: bytes, syntax: str, changed: set[int]
) -> None:
    """Every element not in ``changed``: the same raw bytes, then the same value."""
    before, after = _decode(before_bytes, syntax), _decode(after_bytes, syntax)
    raw_before, raw_after = _raw(before), _raw(after)
    assert set(raw_before) - changed == set(raw_after) - changed
    for tag in set(raw_before) - changed:
        assert raw_after[tag] == raw_before[tag], f"{tag:08x} differs"
        assert after[tag].value == before[tag].value


RULES = """keyword,match,replace
PatientID,OLD1,NEW-0001
IssuerOfPatientID,*,HOSPITAL A
PatientBirthDate,*,
AccessionNumber,NOPE,X
"""


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_round_trip_replace_add_remove(syntax: str) -> None:
    ds = _dataset()
    data = _encode(ds, syntax)
    coerced = coerce_dataset(data, syntax, parse_rules(RULES))
    assert coerced is not None
    out = _decode(_joined(data, coerced), syntax)
    assert out.PatientID == "NEW-0001"
    assert out.IssuerOfPatientID == "HOSPITAL A"  # added: absent, match *
    assert "PatientBirthDate" not in out  # removed: empty replace
    assert out.AccessionNumber == "ACC1"  # its rule does not match
    changed = {0x00100020, 0x00100021, 0x00100030}
    _assert_same_except(data, _joined(data, coerced), syntax, changed)
    # Only the head up to the last change was re-encoded: the rest, from the
    # element after PatientBirthDate on (the sequence, the pixel data), is the
    # source's own bytes.
    birth = data.find(b"19700101")
    assert birth > 0 and coerced.resume_at == birth + 8
    assert [(c.keyword, c.original, c.new, c.line) for c in coerced.changes] == [
        ("PatientID", "OLD1", "NEW-0001", 2),
        ("IssuerOfPatientID", None, "HOSPITAL A", 3),
        ("PatientBirthDate", "19700101", None, 4),
    ]
    # Even lengths (PS3.5 7.1): "NEW-0001" is 8, "HOSPITAL A" 10; an odd one is padded.
    odd = coerce_dataset(data, syntax, parse_rules("keyword,match,replace\nPatientID,*,ABC\n"))
    assert odd is not None
    assert _decode(_joined(data, odd), syntax).get_item(0x00100020).value == b"ABC "


def test_nothing_to_change_is_none() -> None:
    data = _encode(_dataset(), ExplicitVRLittleEndian)
    rules = parse_rules("keyword,match,replace\nPatientID,OTHER,X\nPatientID,*,OLD1\n")
    # The * rule would write the value the element already has: no change.
    assert coerce_dataset(data, ExplicitVRLittleEndian, rules) is None


def test_exact_match_wins_over_any() -> None:
    data = _encode(_dataset(), ExplicitVRLittleEndian)
    rules = parse_rules("keyword,match,replace\nPatientID,*,ANY\nPatientID,OLD1,EXACT\n")
    coerced = coerce_dataset(data, ExplicitVRLittleEndian, rules)
    assert coerced is not None
    assert _decode(_joined(data, coerced), ExplicitVRLittleEndian).PatientID == "EXACT"


def _subset(ds: Dataset, keep: Callable[[int], bool]) -> Dataset:
    out = Dataset()
    for elem in ds:
        if keep(int(elem.tag)):
            out.add(elem)
    return out


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_group_length_is_recomputed(syntax: str) -> None:
    data = _encode(_dataset(), syntax)
    plain = _decode(data, syntax)
    # A group length (0010,0000), as older writers put in data sets (PS3.5 7.2):
    # the byte count of group 0010 after it. pydicom writes none, so it goes in
    # by hand, before the group's first element.
    at = len(_encode(_subset(plain, lambda tag: tag >> 16 < 0x0010), syntax))
    group_length = len(_encode(_subset(plain, lambda tag: tag >> 16 == 0x0010), syntax))
    order = ">" if syntax == ExplicitVRBigEndian else "<"
    if syntax == ImplicitVRLittleEndian:
        element = struct.pack("<HHII", 0x0010, 0x0000, 4, group_length)
    else:
        element = struct.pack(f"{order}HH2sHI", 0x0010, 0x0000, b"UL", 4, group_length)
    data = data[:at] + element + data[at:]
    assert _decode(data, syntax)[0x00100000].value == group_length
    rules = parse_rules("keyword,match,replace\nPatientID,*,LONGER-PATIENT-ID\nPatientSex,*,O\n")
    coerced = coerce_dataset(data, syntax, rules)
    assert coerced is not None
    joined = _joined(data, coerced)
    out = _decode(joined, syntax)
    recount = _subset(out, lambda tag: tag >> 16 == 0x0010 and tag & 0xFFFF != 0)
    assert out[0x00100000].value == len(_encode(recount, syntax)) != group_length
    _assert_same_except(data, joined, syntax, {0x00100000, 0x00100020, 0x00100040})


def test_numbers_big_and_little_endian() -> None:
    rules = parse_rules("keyword,match,replace\nSeriesNumber,7,42\n")
    for syntax in (ExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian):
        data = _encode(_dataset(), syntax)
        coerced = coerce_dataset(data, syntax, rules)
        assert coerced is not None
        assert _decode(_joined(data, coerced), syntax).SeriesNumber == 42
    # SeriesNumber is IS (text); Rows is US (binary, PS3.5 7.3 byte order).
    rows = parse_rules("keyword,match,replace\nRows,8,512\n")
    for syntax in (ExplicitVRLittleEndian, ExplicitVRBigEndian):
        data = _encode(_dataset(), syntax)
        coerced = coerce_dataset(data, syntax, rows)
        assert coerced is not None
        assert _decode(_joined(data, coerced), syntax).Rows == 512
        assert coerced.changes[0].original == "8"


def test_character_set_is_used() -> None:
    data = _encode(_dataset(), ExplicitVRLittleEndian)  # ISO_IR 100: Latin-1
    rules = parse_rules("keyword,match,replace\nPatientName,Doe^John,Müller^Jörg\n")
    coerced = coerce_dataset(data, ExplicitVRLittleEndian, rules)
    assert coerced is not None
    out = _decode(_joined(data, coerced), ExplicitVRLittleEndian)
    assert out.get_item(0x00100010).value == "Müller^Jörg".encode("latin-1") + b" "
    assert str(out.PatientName) == "Müller^Jörg"
    greek = parse_rules("keyword,match,replace\nPatientName,*,Αθηνά\n")
    with pytest.raises(CoercionError, match="Specific Character Set"):
        coerce_dataset(data, ExplicitVRLittleEndian, greek)


@pytest.mark.parametrize("charset", [None, "ISO_IR 6", "ISO 2022 IR 6\\ISO 2022 IR 87"])
@pytest.mark.parametrize("syntax", SYNTAXES)
def test_non_ascii_value_without_a_character_set_that_holds_it_fails(
    syntax: str, charset: str | None
) -> None:
    """PS3.5 6.1.2.3: no (0008,0005), or ISO_IR 6, is ASCII only; never undeclared Latin-1."""
    ds = _dataset()
    if charset is None:
        del ds.SpecificCharacterSet
    else:
        ds.SpecificCharacterSet = charset.split("\\")
    data = _encode(ds, syntax)
    rules = parse_rules("keyword,match,replace\nPatientName,*,Müller^Hans\n")
    single = charset in (None, "ISO_IR 6")
    message = "declares no Specific Character Set" if single else "no term of it holds"
    with pytest.raises(CoercionError, match=message):
        coerce_dataset(data, syntax, rules)
    # ASCII still goes; a non-ASCII value already there is matched (read leniently).
    ascii_rules = parse_rules("keyword,match,replace\nPatientName,*,Mueller^Hans\n")
    coerced = coerce_dataset(data, syntax, ascii_rules)
    assert coerced is not None
    assert _decode(_joined(data, coerced), syntax).PatientName == "Mueller^Hans"


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_code_extensions_escape_to_the_term_that_holds_the_value(syntax: str) -> None:
    """PS3.5 6.1.2.5: with ISO 2022 IR 6 first, G1 is empty until an escape designates
    ISO-IR 100; Latin-1 bytes with no escape before them would be undeclared."""
    ds = _dataset()
    ds.SpecificCharacterSet = ["ISO 2022 IR 6", "ISO 2022 IR 100"]
    data = _encode(ds, syntax)
    rules = parse_rules("keyword,match,replace\nPatientName,*,Müller^Hans\n")
    coerced = coerce_dataset(data, syntax, rules)
    assert coerced is not None
    out = _decode(_joined(data, coerced), syntax)
    assert out.get_item(0x00100010).value == b"\x1b-AM\xfcller^Hans"
    assert str(out.PatientName) == "Müller^Hans"


def test_encapsulated_pixel_data_untouched() -> None:
    frames = [b"\xff\xd8" + bytes(range(200)) + b"\xff\xd9"]
    ds = _dataset()
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    data = _encode(ds, ExplicitVRLittleEndian)
    coerced = coerce_dataset(data, JPEGBaseline8Bit, parse_rules(RULES))
    assert coerced is not None
    joined = _joined(data, coerced)
    pixel_at = data.index(b"\xe0\x7f\x10\x00")
    assert joined.endswith(data[pixel_at:])  # the fragments, byte for byte
    out = _decode(joined, ExplicitVRLittleEndian)
    assert out.PatientID == "NEW-0001"
    assert out.PixelData == ds.PixelData


def test_deflated_is_refused() -> None:
    with pytest.raises(CoercionError, match="Deflated"):
        coerce_dataset(b"", DeflatedExplicitVRLittleEndian, parse_rules(RULES))


# ---- the rules file ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("key,match\nPatientID,a,b\n", "line 1: the first line must be the header"),
        ("keyword,match,replace\n", "no rules"),
        ("keyword,match,replace\nPatientId,a,b\n", "line 2: unknown keyword 'PatientId'"),
        ("keyword,match,replace\nPatientID,a\n", "line 2: 2 fields"),
        ("keyword,match,replace\n\nPatientID,a,b,c\n", "line 3: 4 fields"),
        ('keyword,match,replace\nPatientID,"a,b\n', "malformed CSV"),
        (
            "keyword,match,replace\nPatientID,*," + "x" * 70 + "\n",
            re.escape(
                "line 2: replace value '" + "x" * 70 + "' is not valid for PatientID (VR LO)"
                ": The value length (70) exceeds the maximum length of 64"
            ),
        ),
        ("keyword,match,replace\nStudyDate,*,2024\n", "line 2: replace value '2024'"),
        ("keyword,match,replace\nRows,*,70000\n", "must be between 0 and 65535"),
        ("keyword,match,replace\nModality,*,Ünï\n", "default character repertoire"),
        ("keyword,match,replace\nReferencedStudySequence,*,x\n", "line 2: .* sequence \\(SQ\\)"),
        ("keyword,match,replace\nPixelData,*,x\n", "pixel data or after it: not supported"),
        ("keyword,match,replace\n(0009,0010),*,x\n", "private element"),
        ("keyword,match,replace\nTransferSyntaxUID,*,1.2\n", "file meta information"),
        ("keyword,match,replace\n(0010,0000),*,1\n", "group length"),
        *(
            (f"keyword,match,replace\nPatientID,a,b\n{name},*,1.2.3\n", f"line 3: {why}")
            for name in (
                "SOPInstanceUID",
                "SOPClassUID",
                "StudyInstanceUID",
                "SeriesInstanceUID",
                "(0008,0018)",
                "(0020,000d)",
            )
            for why in [".* cannot be coerced: UIDs identify the instance"]
        ),
        (
            "keyword,match,replace\nSpecificCharacterSet,*,ISO_IR 192\n",
            "line 2: SpecificCharacterSet \\(0008,0005\\) cannot be coerced: it declares how",
        ),
        # Only \r and \n end a line: U+2028 and U+001C are characters of a value.
        ("keyword,match,replace\nStudyDescription,*,CT\u2028HEAD\nNoSuch,*,x\n", "line 3: unk"),
        ("keyword,match,replace\nStudyDescription,*,CT\x1cHEAD\nNoSuch,*,x\n", "line 3: unk"),
        ("keyword,match,replace\nPatientID,a,b\nPatientID,a,c\n", "line 3: .*already given"),
    ],
)
def test_bad_rules_name_the_line(text: str, message: str) -> None:
    with pytest.raises(CoercionRulesError, match=message):
        parse_rules(text, "rules.csv")


def test_rules_file_with_bom_tags_and_quotes(tmp_path: Path) -> None:
    path = tmp_path / "rules.csv"
    path.write_text(
        # A tag's comma need not be quoted; a value's must.
        '\ufeffkeyword,match,replace\n(0010,0020),"A,1",B\n"PatientName",*,"X^Y"\n',
        encoding="utf-8",
    )
    rules = load_rules(path)
    assert [(r.line, r.keyword, r.tag, r.vr, r.match, r.replace) for r in rules.rules] == [
        (2, "PatientID", 0x00100020, "LO", "A,1", "B"),
        (3, "PatientName", 0x00100010, "PN", "*", "X^Y"),
    ]
    assert rules.tags == (0x00100010, 0x00100020)


def test_digest_is_what_the_rules_do() -> None:
    """The journal compares it between runs: line order and tag spelling do not count."""
    one = parse_rules("keyword,match,replace\nPatientID,*,A\nIssuerOfPatientID,X,B\n")
    same = parse_rules("keyword,match,replace\n\nIssuerOfPatientID,X,B\n(0010,0020),*,A\n")
    other = parse_rules("keyword,match,replace\nPatientID,*,A\nIssuerOfPatientID,X,C\n")
    assert one.digest == same.digest != other.digest
    assert len(one.digest) == 32


_LO_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='\\,"'),
    min_size=1,
    max_size=64,
)


@settings(max_examples=150, deadline=None)
@example(
    syntax=ExplicitVRLittleEndian, patient_id="OLD1", issuer="", rows=8, remove_birth_date=False
)
@given(
    syntax=st.sampled_from([ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian]),
    patient_id=_LO_TEXT,
    issuer=st.one_of(st.just(""), _LO_TEXT),
    rows=st.integers(0, 0xFFFF),
    remove_birth_date=st.booleans(),
)
def test_any_rules_round_trip_against_pydicom(
    syntax: str, patient_id: str, issuer: str, rows: int, remove_birth_date: bool
) -> None:
    """Whatever the values, pydicom reads back what the rules say and everything else as it was."""
    lines = [
        "keyword,match,replace",
        f"PatientID,OLD1,{patient_id}",
        f"IssuerOfPatientID,*,{issuer}",
        f"Rows,*,{rows}",
    ]
    if remove_birth_date:
        lines.append("PatientBirthDate,*,")
    data = _encode(_dataset(), syntax)
    coerced = coerce_dataset(data, syntax, parse_rules("\n".join(lines) + "\n"))
    unchanged = patient_id == "OLD1" and not issuer and rows == 8 and not remove_birth_date
    assert (coerced is None) is unchanged
    joined = data if coerced is None else _joined(data, coerced)
    out = _decode(joined, syntax)
    assert out.PatientID == patient_id
    assert out.get("IssuerOfPatientID") == (issuer or None)
    assert out.Rows == rows
    assert ("PatientBirthDate" in out) is not remove_birth_date
    changed = {0x00100020, 0x00100021, 0x00280010, 0x00100030}
    _assert_same_except(data, joined, syntax, changed)
