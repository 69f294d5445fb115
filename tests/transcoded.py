"""Files that ``--transcode if-needed`` converts, and the check that one arrived unchanged.

RLE Lossless and Deflated Explicit VR Little Endian files are written by
pydicom from its CT_small.dcm test file (its own RLE encoder needs only
numpy). The big endian files are pydicom's test files, written by other
toolkits, with 8-bit (OW, odd length), 16-bit and 32-bit pixel data.

The reference for "unchanged" is pydicom's own reading of the source file,
decompressed by pydicom where it is compressed (PS3.5 8.2: decompression
may change only the pixel data and the attributes that describe it).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.uid import UID, RLELossless

from dicom_fastsend.synth import synth_uid

CT_SMALL = Path(get_testdata_file("CT_small.dcm") or "")
BIG_ENDIAN_FILES = (
    "MR_small_bigendian.dcm",  # 16 bits allocated
    "SC_rgb_small_odd_big_endian.dcm",  # 8 bits allocated in OW, odd number of bytes
    "rtdose_expb_1frame.dcm",  # 32 bits allocated
)
PIXEL_DATA = 0x7FE00010
# VRs whose values are binary words, compared as numbers across byte orders.
_WORD_SIZE = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def write_ct(path: Path, transfer_syntax: str, number: int) -> Path:
    """CT_small.dcm with a SOP Instance UID of its own, in RLE Lossless or deflated."""
    ds = pydicom.dcmread(CT_SMALL)
    ds.SOPInstanceUID = synth_uid("transcoded-ct", transfer_syntax, str(number))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if transfer_syntax == RLELossless:
        ds.compress(RLELossless, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def big_endian_file(name: str) -> Path:
    return Path(get_testdata_file(name) or "")


def reference(path: Path) -> Dataset:
    """pydicom's reading of a file, decompressed by pydicom if it is compressed."""
    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)
    return ds


def assert_arrived_unchanged(received: Dataset, path: Path, ignore: Collection[int] = ()) -> None:
    """``received`` holds every element of the file at ``path``, with the same value.

    Compared against pydicom's own reading (and decompression) of the file;
    pixel data as decoded pixels, and byte for byte against pydicom's
    decompressed bytes when the file is little endian. Group lengths and the
    tags in ``ignore`` are left out.
    """
    source = reference(path)
    big_endian = not source.file_meta.TransferSyntaxUID.is_little_endian
    assert received.SOPInstanceUID == source.SOPInstanceUID
    _assert_same_elements(source, received, big_endian, set(ignore) | {PIXEL_DATA}, "")
    assert received["PixelData"].value is not None
    assert np.array_equal(received.pixel_array, source.pixel_array), path.name
    if not big_endian:
        assert received.PixelData == source.PixelData, path.name


def _assert_same_elements(
    source: Dataset, received: Dataset, big_endian: bool, ignore: set[int], where: str
) -> None:
    def kept(ds: Dataset) -> list[int]:
        return [t for t in ds.keys() if not (t.element == 0 and t.group > 6) and t not in ignore]

    assert kept(source) == kept(received), f"{where}: tag lists differ"
    for tag in kept(source):
        a, b = source[tag], received[tag]
        here = f"{where}{a.tag}"
        if a.VR == "SQ" or b.VR == "SQ":
            assert a.VR == b.VR == "SQ", f"{here}: {a.VR} vs {b.VR}"
            assert len(a.value) == len(b.value), f"{here}: item counts differ"
            for i, (item_a, item_b) in enumerate(zip(a.value, b.value, strict=True)):
                _assert_same_elements(item_a, item_b, big_endian, set(), f"{here}[{i}].")
        elif a.VR == b.VR and big_endian and a.VR in _WORD_SIZE:
            # pydicom leaves OW-like values as the file's bytes: compare numbers.
            size = _WORD_SIZE[str(a.VR)]
            assert np.array_equal(
                np.frombuffer(a.value, f">u{size}"), np.frombuffer(b.value, f"<u{size}")
            ), here
        elif a.VR == b.VR:
            assert a.value == b.value, f"{here}: {a.value!r} != {b.value!r}"
        else:
            # Implicit VR cannot carry a private VR pydicom does not know: UN,
            # whose bytes must be the value's little endian encoding.
            assert b.VR == "UN", f"{here}: VR {a.VR} became {b.VR}"
            assert b.value == _little_endian_bytes(a), f"{here}: UN bytes differ"


def _little_endian_bytes(elem: DataElement) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    write_data_element(fp, elem)
    return bytes(fp.getvalue())[8:]  # implicit header: tag (4) + length (4)
