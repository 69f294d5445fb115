"""Convert a data set to Implicit or Explicit VR Little Endian on the fly.

Used when a peer accepted a file's SOP class only in the other uncompressed
little-endian syntax (PS3.5 A.1 Implicit VR LE, A.2 Explicit VR LE), and with
``--transcode if-needed`` for Explicit VR Big Endian files (PS3.5 A.3,
retired) and for compressed and deflated files (transcode_file) when the
peer takes their class only uncompressed.

Both little-endian syntaxes store every value with the same bytes in the same
order; only the element headers differ (PS3.5 7.1.2 vs 7.1.3). So values are
copied byte for byte and never decoded: decoding and re-encoding text would
risk altering legacy values that do not match their declared character set,
which a migration must not do. pydicom parses the element stream and writes
the new headers; sequences are walked recursively because their items carry
headers of their own (PS3.5 7.5).

Big endian differs from Explicit VR LE only in the byte order of binary
values (PS3.5 7.3): each value of a binary VR is byte-swapped in its own
unit (2 bytes for US, SS, OW, AT; 4 for UL, SL, FL, OF, OL; 8 for FD, OD, SV,
UV, OV; PS3.5 Table 6.2-1); text and OB bytes are copied as they are, and
so are UN bytes, whose structure is unknown (PS3.5 6.2.2). pydicom cannot do
this itself: its writer does not swap OW-like values.

Two deliberate changes: retired group length elements (gggg,0000) outside the
command and meta groups are dropped, because their value would be wrong after
re-encoding and PS3.5 7.2 retires them; and going Implicit -> Explicit an
element whose VR cannot be known (a private tag without a known creator, an
unknown public tag) is written as UN, which PS3.5 6.2.2 provides for.
"""

from __future__ import annotations

from array import array
from typing import Any, BinaryIO, cast

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import correct_ambiguous_vr_element, write_dataset
from pydicom.hooks import raw_element_vr
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.valuerep import VR

from dicom_fastsend.errors import FastsendError
from dicom_fastsend.protocol.uids import (
    CONVERTS_ON_THE_FLY,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    UNCOMPRESSED_LITTLE_ENDIAN,
    uid_name,
)

_PIXEL_DATA = 0x7FE00010
_BITS_ALLOCATED = 0x00280100
# The unit in which a binary VR's value changes byte order (PS3.5 7.3,
# Table 6.2-1). An AT value is two 16-bit numbers, group then element.
_BYTE_ORDER_UNIT = {
    **dict.fromkeys(("AT", "OW", "SS", "US"), 2),
    **dict.fromkeys(("FL", "OF", "OL", "SL", "UL"), 4),
    **dict.fromkeys(("FD", "OD", "OV", "SV", "UV"), 8),
}
_ARRAY_TYPECODE = {2: "H", 4: "I", 8: "Q"}
# The VRs of PS3.5 Table 6.2-1; anything else in an Explicit VR header is corruption.
_VRS = frozenset(str(vr) for vr in VR if len(str(vr)) == 2)


class ConversionError(FastsendError):
    """A data set that cannot be converted to the requested transfer syntax."""


def convert_dataset(
    data: bytes | memoryview, from_transfer_syntax: str, to_transfer_syntax: str
) -> bytes:
    """Re-encode a data set (no file meta) in Explicit or Implicit VR Little Endian.

    The source is either LE syntax or Explicit VR Big Endian. Returns the
    encoded data set. Converting a syntax to itself returns a copy of `data`
    unchanged. Raises ConversionError for any other pair (compressed,
    deflated, unknown, big endian as the target) and for data that cannot be
    parsed.
    """
    if (
        from_transfer_syntax not in CONVERTS_ON_THE_FLY
        or to_transfer_syntax not in UNCOMPRESSED_LITTLE_ENDIAN
    ):
        raise ConversionError(
            f"cannot convert {uid_name(from_transfer_syntax)} to "
            f"{uid_name(to_transfer_syntax)} without transcoding: only "
            f"{uid_name(EXPLICIT_VR_LITTLE_ENDIAN)}, {uid_name(IMPLICIT_VR_LITTLE_ENDIAN)} "
            f"and {uid_name(EXPLICIT_VR_BIG_ENDIAN)} convert on the fly, "
            "and only to the first two"
        )
    if from_transfer_syntax == to_transfer_syntax:
        return bytes(data)

    from_implicit = from_transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
    from_big_endian = from_transfer_syntax == EXPLICIT_VR_BIG_ENDIAN
    to_implicit = to_transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
    raw = bytes(data)
    if len(raw) % 2:
        # Every element header and value has even length (PS3.5 7.1.1).
        raise ConversionError(f"data set has odd length {len(raw)}, so it is not valid DICOM")
    try:
        fp = DicomBytesIO(raw)
        fp.is_little_endian = not from_big_endian
        fp.is_implicit_VR = from_implicit
        source = read_dataset(cast(BinaryIO, fp), from_implicit, not from_big_endian)
        if fp.tell() != len(raw):
            raise ConversionError(f"data set parsing stopped at byte {fp.tell()} of {len(raw)}")
        target = _convert(source, to_implicit, [], from_implicit, from_big_endian)
        out = DicomBytesIO()
        out.is_little_endian = True
        out.is_implicit_VR = to_implicit
        write_dataset(out, target)
        return bytes(out.getvalue())
    except ConversionError:
        raise
    except Exception as exc:
        # pydicom reports malformed input with a variety of exception types;
        # callers need one, with the reason kept.
        raise ConversionError(
            f"cannot convert {uid_name(from_transfer_syntax)} to "
            f"{uid_name(to_transfer_syntax)}: {type(exc).__name__}: {exc}"
        ) from exc


def _convert(
    source: Dataset,
    to_implicit: bool,
    ancestors: list[Dataset],
    expect_implicit: bool | None = None,
    from_big_endian: bool = False,
) -> Dataset:
    """A copy of `source` whose raw elements carry headers for the target syntax.

    `expect_implicit` is the source encoding the top level must have; items
    inside sequences are not checked against it because an explicit UN
    sequence legitimately holds Implicit VR items (PS3.5 6.2.2). With
    `from_big_endian`, binary values are byte-swapped to little endian.
    """
    target = Dataset()
    # Marking the copy as already in the target encoding makes write_dataset
    # write the raw values as they are instead of decoding every element.
    target.set_original_encoding(to_implicit, True, source.original_character_set)
    for tag in source.keys():
        elem = source.get_item(tag)
        if tag.element == 0 and tag.group > 6:
            continue  # retired group length, see module docstring
        if isinstance(elem, DataElement):
            # pydicom decodes a few elements while reading (Pixel
            # Representation, to resolve "US or SS" VRs; sequences). A
            # sequence's items still hold raw elements; anything else is a
            # binary number or code string that re-encodes to the same bytes
            # (a number read big endian is written little endian, as wanted).
            if elem.VR == "SQ":
                target.add(_convert_sequence(elem, source, to_implicit, ancestors, from_big_endian))
            else:
                target.add(elem)
            continue
        if (
            (expect_implicit is not None and elem.is_implicit_VR != expect_implicit)
            or elem.is_implicit_VR != (elem.VR is None)
            or (elem.VR is not None and elem.VR not in _VRS)
        ):
            # pydicom silently switches to the other VR encoding when the
            # first element looks like it, and reads unknown VRs somehow; both
            # mean the data is not what its transfer syntax says.
            found = "Implicit" if elem.is_implicit_VR else f"Explicit (VR {elem.VR!r})"
            raise ConversionError(
                f"element {tag} is encoded as {found} VR, contrary to the transfer syntax"
            )
        vr = _source_vr(elem, source, ancestors)
        if vr == "SQ":
            # Indexing parses the sequence into item datasets of raw elements.
            target.add(
                _convert_sequence(source[tag], source, to_implicit, ancestors, from_big_endian)
            )
            continue
        if elem.value is None:
            raise ConversionError(f"element {tag} has no value bytes")
        if elem.length == 0xFFFFFFFF and tag != _PIXEL_DATA:
            raise ConversionError(f"element {tag} ({vr}) has undefined length but is no sequence")
        if elem.length == 0xFFFFFFFF:
            # Encapsulated pixel data means a compressed syntax mislabelled
            # as uncompressed (PS3.5 A.4); converting it would mislead.
            raise ConversionError("encapsulated (compressed) Pixel Data in an uncompressed syntax")
        if len(elem.value) != elem.length:
            # pydicom returns a short read without complaint.
            raise ConversionError(
                f"element {tag} is truncated: {len(elem.value)} of {elem.length} value bytes"
            )
        value = _to_little_endian(tag, vr, elem.value, source) if from_big_endian else elem.value
        target[tag] = RawDataElement(
            BaseTag(tag),
            None if to_implicit else vr,
            elem.length,
            value,
            0,
            to_implicit,
            True,
        )
    return target


def _convert_sequence(
    elem: DataElement,
    parent: Dataset,
    to_implicit: bool,
    ancestors: list[Dataset],
    from_big_endian: bool = False,
) -> DataElement:
    items = Sequence(
        [
            _convert(item, to_implicit, [parent, *ancestors], None, from_big_endian)
            for item in elem.value
        ]
    )
    new = DataElement(elem.tag, "SQ", items)
    new.is_undefined_length = elem.is_undefined_length
    return new


def _to_little_endian(tag: BaseTag, vr: str, value: bytes, ds: Dataset) -> bytes:
    """A big endian value's bytes in little endian order (PS3.5 7.3)."""
    unit = _BYTE_ORDER_UNIT.get(vr, 1)
    if tag == _PIXEL_DATA and vr == "OW":
        # Native pixel cells of 32 or 64 bits change byte order as one number,
        # which is how pydicom reads them and how its little endian twin of
        # its big endian RT Dose test file stores them. (DCMTK swaps such OW
        # data in 16-bit words instead; the two disagree only for these.)
        # 8-bit data in OW swaps in words like any OW value, as both do.
        bits_allocated = ds.get(_BITS_ALLOCATED)
        if bits_allocated is not None and bits_allocated.value in (32, 64):
            unit = int(bits_allocated.value) // 8
    if unit == 1 or not value:
        return value
    if len(value) % unit:
        raise ConversionError(
            f"element {tag} ({vr}) has {len(value)} value bytes, "
            f"not a multiple of its {unit}-byte unit"
        )
    numbers = array(_ARRAY_TYPECODE[unit], value)
    numbers.byteswap()
    return numbers.tobytes()


def _source_vr(elem: RawDataElement, ds: Dataset, ancestors: list[Dataset]) -> str:
    """The VR of a raw element: explicit in the source, or looked up (PS3.5 A.1)."""
    if elem.VR is not None:
        return str(elem.VR)
    found: dict[str, Any] = {}
    # pydicom's own lookup: public dictionary, private dictionary by creator,
    # UL for group lengths, else UN.
    raw_element_vr(elem, found, ds=ds)
    vr = str(found["VR"])
    if len(vr) == 2:
        return vr
    # "US or SS", "OB or OW", ...: the choice depends on other elements such
    # as Pixel Representation (PS3.5 A.1 note); pydicom knows the rules.
    probe = DataElement(elem.tag, vr, elem.value)
    try:
        corrected = correct_ambiguous_vr_element(probe, ds, True, [ds, *ancestors])
    except AttributeError:
        # The deciding element (e.g. Pixel Representation) is absent.
        return "UN"
    resolved = str(corrected.VR)
    # If the rules cannot decide, UN keeps the bytes and says so honestly.
    return resolved if len(resolved) == 2 else "UN"


def transcode_file(path: str, to_transfer_syntax: str = EXPLICIT_VR_LITTLE_ENDIAN) -> bytes:
    """Decode a compressed or deflated file's data set to uncompressed Little Endian.

    Used with ``--transcode if-needed`` when the peer accepted the file's SOP
    class only uncompressed. Decompression uses pydicom's pixel data plugins
    (``pip install 'dicom-fastsend[codecs]'`` brings pylibjpeg and its
    plugins); RLE needs only numpy. pydicom writes the result in Explicit VR
    LE, the encoding its elements were read in, so their values are written
    back as they were; for `to_transfer_syntax` Implicit VR LE, convert_dataset
    then rewrites the headers. The whole data set is decoded in memory: this
    path is for exceptions, not for the bulk of a migration.
    """
    import pydicom

    if to_transfer_syntax not in UNCOMPRESSED_LITTLE_ENDIAN:
        raise ConversionError(f"cannot transcode to {uid_name(to_transfer_syntax)}")
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises many kinds for damaged files
        raise ConversionError(f"cannot read it to decompress it: {exc}") from exc
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax in CONVERTS_ON_THE_FLY:
        # pydicom would write big endian values in the wrong byte order
        # (its writer does not swap OW and the like); convert_dataset does.
        raise ConversionError(f"{uid_name(syntax)} is converted on the fly, not transcoded")
    try:
        if syntax.is_compressed:
            # pydicom would give the decompressed image a new SOP Instance UID;
            # a migration must store the same instance under its own identity.
            ds.decompress(generate_instance_uid=False)
        # A deflated file needs nothing more: dcmread inflated it (PS3.5 A.5).
        buffer = DicomBytesIO()
        buffer.is_little_endian = True
        buffer.is_implicit_VR = False
        write_dataset(buffer, ds)
    except Exception as exc:  # the codecs raise many kinds
        raise ConversionError(
            f"cannot decompress {uid_name(str(syntax))} to "
            f"{uid_name(EXPLICIT_VR_LITTLE_ENDIAN)}: {exc}. "
            "The codecs come with pip install 'dicom-fastsend[codecs]'"
        ) from exc
    explicit: bytes = buffer.getvalue()
    if to_transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN:
        return explicit
    return convert_dataset(explicit, EXPLICIT_VR_LITTLE_ENDIAN, to_transfer_syntax)
