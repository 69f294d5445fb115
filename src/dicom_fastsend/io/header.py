"""Read just enough of a DICOM file to send it, without building a pydicom Dataset.

``read_header`` reads the file's head (or maps the whole file), walks the File
Meta Information (PS3.10 7.1) and then every top-level element of the data set
with the hot path's ``scan_values``, which also decodes the UIDs and texts it
finds. Walking to the end, not stopping after (0020,000D), is deliberate: a
file cut off inside its pixel data is caught here, while indexing, instead of
as a failed C-STORE halfway through a migration.
"""

from __future__ import annotations

import mmap
import os
import stat
import zlib
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from ..errors import ElementScanError
from ..protocol.hotpath import scan_values
from ..protocol.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    MEDIA_STORAGE_DIRECTORY_STORAGE,
)

HeaderErrorKind = Literal["not-dicom", "dicomdir", "unreadable"]

# PS3.10 7.1: 128-byte preamble, then the "DICM" prefix, then group 0002.
_PREAMBLE_LENGTH: Final = 128
_PREFIX: Final = b"DICM"
_META_START: Final = _PREAMBLE_LENGTH + len(_PREFIX)
_META_STOP_TAG: Final = 0x0002FFFF
_WHOLE_DATA_SET: Final = 0xFFFFFFFF
# PS3.5 7.1.2: the shortest element header (tag, VR or length, length).
_MIN_ELEMENT_HEADER: Final = 8

MEDIA_STORAGE_SOP_CLASS_UID: Final = 0x00020002
MEDIA_STORAGE_SOP_INSTANCE_UID: Final = 0x00020003
TRANSFER_SYNTAX_UID: Final = 0x00020010
SOP_CLASS_UID: Final = 0x00080016
SOP_INSTANCE_UID: Final = 0x00080018
STUDY_INSTANCE_UID: Final = 0x0020000D
SERIES_INSTANCE_UID: Final = 0x0020000E
# Study-level attributes a migration report (and a study order) needs.
STUDY_DATE: Final = 0x00080020
STUDY_TIME: Final = 0x00080030
ACCESSION_NUMBER: Final = 0x00080050
PATIENT_NAME: Final = 0x00100010
PATIENT_ID: Final = 0x00100020
# _read_mapped unpacks scan_values' results in the orders of _META_WANTED,
# _DATA_SET_UIDS and _STUDY_TEXT.
_STUDY_TEXT: Final = (PATIENT_ID, PATIENT_NAME, ACCESSION_NUMBER, STUDY_DATE, STUDY_TIME)

_META_WANTED: Final = (
    MEDIA_STORAGE_SOP_CLASS_UID,
    MEDIA_STORAGE_SOP_INSTANCE_UID,
    TRANSFER_SYNTAX_UID,
)
_DATA_SET_UIDS: Final = (
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    STUDY_INSTANCE_UID,
    SERIES_INSTANCE_UID,
)
PIXEL_DATA: Final = 0x7FE00010
# Bytes read first. Headers up to the pixel data nearly always fit; when the
# pixel data then ends exactly at the end of the file, the walk is complete
# without mapping the file (mapping and unmapping cost about a third of a scan).
HEAD_LENGTH: Final = 16384
# scan_values' decoded values: the UIDs (None when absent), then the texts ("" when absent).
_Values: TypeAlias = tuple[tuple[str | None, ...], tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What the sender needs to know about one file."""

    path: str
    size: int
    mtime: float
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str  # "" when absent
    # First byte after the File Meta group (0002); 0 for a data set without Part 10 meta.
    dataset_offset: int
    series_instance_uid: str = ""  # "" when absent
    # Study-level text, "" when absent: Patient ID, Patient's Name, Accession
    # Number, Study Date (DA, YYYYMMDD) and Study Time (TM).
    patient_id: str = ""
    patient_name: str = ""
    accession_number: str = ""
    study_date: str = ""
    study_time: str = ""


class HeaderError(Exception):
    """A file that will not be sent, and why.

    ``kind`` is "not-dicom" or "dicomdir" for files that are skipped, and
    "unreadable" for DICOM files (or files that claim to be) that fail.
    """

    def __init__(self, path: str, kind: HeaderErrorKind, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.kind: HeaderErrorKind = kind
        self.reason = reason


def _looks_like_raw_data_set(view: memoryview) -> bool | None:
    """Explicit VR (True), implicit VR (False), or not a data set (None).

    Files written without the Part 10 preamble (old archives, some modalities)
    start straight with the data set; its first element is nearly always in
    group 0008 (Specific Character Set, Image Type, SOP Class UID...).
    """
    if view.nbytes < _MIN_ELEMENT_HEADER:
        return None
    group = view[0] | (view[1] << 8)
    if group != 0x0008:
        return None
    # PS3.5 7.1.2: in explicit VR the VR's two uppercase letters follow the tag.
    return 0x41 <= view[4] <= 0x5A and 0x41 <= view[5] <= 0x5A


def _scan_to_end(
    path: str, view: memoryview, offset: int, explicit_vr: bool, little_endian: bool
) -> _Values:
    """Walk the whole data set, tolerating fewer than 8 stray bytes at its end."""
    try:
        uids, texts, _ = scan_values(
            view, offset, explicit_vr, little_endian, _DATA_SET_UIDS, _STUDY_TEXT, _WHOLE_DATA_SET
        )
        return uids, texts
    except ElementScanError as error:
        # Some writers pad files with a few bytes (odd length fixes, stray NULs)
        # that cannot be an element header; everything before them is intact.
        if view.nbytes - error.offset >= _MIN_ELEMENT_HEADER:
            raise _unreadable(path, error) from error
        cut = error.offset
    with view[:cut] as intact:
        try:
            uids, texts, _ = scan_values(
                intact,
                offset,
                explicit_vr,
                little_endian,
                _DATA_SET_UIDS,
                _STUDY_TEXT,
                _WHOLE_DATA_SET,
            )
        except ElementScanError as error:
            raise _unreadable(path, error) from error
    return uids, texts


class _NeedWholeFile(Exception):
    """The head of the file does not settle the walk: map the whole file and walk it."""


def _scan_head(
    view: memoryview, offset: int, explicit_vr: bool, little_endian: bool, size: int
) -> _Values:
    """The walk of ``_scan_to_end``, from the first ``view.nbytes`` bytes of a longer file.

    It succeeds only when every element before the pixel data lies in the
    head and the pixel data's defined length ends exactly at the end of the
    file, which is what a full walk would confirm; anything else (a long
    header, encapsulated or absent pixel data, trailing bytes, a truncated
    file, big endian) raises _NeedWholeFile, and the full walk decides.
    """
    if not little_endian:
        raise _NeedWholeFile
    try:
        uids, texts, position = scan_values(
            view, offset, explicit_vr, little_endian, _DATA_SET_UIDS, _STUDY_TEXT, PIXEL_DATA - 1
        )
    except ElementScanError as error:
        raise _NeedWholeFile from error
    # PS3.5 7.1.2: tag, then (explicit VR OB/OW) VR, 2 reserved bytes and a
    # 32-bit length, or (implicit VR) a 32-bit length.
    header_length = 12 if explicit_vr else 8
    if view.nbytes - position < header_length:
        raise _NeedWholeFile
    with view[position : position + header_length] as header:
        tag = (header[0] | header[1] << 8) << 16 | (header[2] | header[3] << 8)
        if tag != PIXEL_DATA:
            raise _NeedWholeFile
        if explicit_vr and bytes(header[4:6]) not in (b"OB", b"OW"):
            raise _NeedWholeFile
        length = int.from_bytes(header[header_length - 4 :], "little")
    if position + header_length + length != size:  # undefined length (FFFFFFFF) too
        raise _NeedWholeFile
    return uids, texts


def _unreadable(path: str, error: ElementScanError) -> HeaderError:
    return HeaderError(
        path,
        "unreadable",
        f"damaged or truncated data set: {error}; the file was probably cut short while"
        " being copied, check it against its source",
    )


def _read_mapped(path: str, view: memoryview, size: int, mtime: float) -> FileInfo:
    """The FileInfo from ``view``: the whole file, or its head (then see _scan_head)."""
    head = view.nbytes < size
    if view.nbytes >= _META_START and bytes(view[_PREAMBLE_LENGTH:_META_START]) == _PREFIX:
        try:
            # PS3.10 7.1: the File Meta Information is always Explicit VR Little Endian.
            # PS3.5 6.2 UI values: None when absent, empty or not ASCII.
            (
                (media_storage_sop_class, media_storage_sop_instance, transfer_syntax),
                _,
                dataset_offset,
            ) = scan_values(view, _META_START, True, True, _META_WANTED, (), _META_STOP_TAG)
        except ElementScanError as error:
            if head:
                raise _NeedWholeFile from error
            raise HeaderError(
                path,
                "unreadable",
                f"damaged File Meta Information (group 0002, PS3.10 7.1): {error}",
            ) from error
        if media_storage_sop_class == MEDIA_STORAGE_DIRECTORY_STORAGE:
            raise HeaderError(
                path,
                "dicomdir",
                "DICOMDIR (Media Storage Directory Storage): an index of other files,"
                " not an instance to send",
            )
        if transfer_syntax is None:
            raise HeaderError(
                path,
                "unreadable",
                "no Transfer Syntax UID (0002,0010) in the File Meta Information, so the"
                " data set cannot be decoded",
            )
    else:
        explicit = _looks_like_raw_data_set(view)
        if explicit is None:
            raise HeaderError(
                path, "not-dicom", "no DICM prefix at offset 128 and not a raw DICOM data set"
            )
        dataset_offset = 0
        transfer_syntax = EXPLICIT_VR_LITTLE_ENDIAN if explicit else IMPLICIT_VR_LITTLE_ENDIAN
        media_storage_sop_class = media_storage_sop_instance = None

    if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        if head:
            raise _NeedWholeFile
        # PS3.5 A.5: the data set after the meta is a raw deflate stream of
        # Explicit VR Little Endian. Rare, so inflating into memory is fine.
        try:
            inflated = zlib.decompressobj(wbits=-zlib.MAX_WBITS).decompress(view[dataset_offset:])
        except zlib.error as error:
            raise HeaderError(
                path, "unreadable", f"deflated data set cannot be inflated: {error}"
            ) from error
        with memoryview(inflated) as data_set:
            uids, texts = _scan_to_end(path, data_set, 0, True, True)
    else:
        explicit_vr = transfer_syntax != IMPLICIT_VR_LITTLE_ENDIAN
        little_endian = transfer_syntax != EXPLICIT_VR_BIG_ENDIAN
        if head:
            uids, texts = _scan_head(view, dataset_offset, explicit_vr, little_endian, size)
        else:
            uids, texts = _scan_to_end(path, view, dataset_offset, explicit_vr, little_endian)

    # The data set is what gets stored; the meta copies it (PS3.10 7.1) and is
    # only a fallback when the data set lacks the element.
    sop_class_uid, sop_instance_uid, study_instance_uid, series_instance_uid = uids
    # Texts (PS3.5 6.2, Specific Character Set not applied): UTF-8, else Latin-1; "" when absent.
    patient_id, patient_name, accession_number, study_date, study_time = texts
    sop_class = sop_class_uid or media_storage_sop_class
    sop_instance = sop_instance_uid or media_storage_sop_instance
    if sop_class == MEDIA_STORAGE_DIRECTORY_STORAGE:
        raise HeaderError(path, "dicomdir", "DICOMDIR: an index of other files, not an instance")
    if sop_class is None:
        raise HeaderError(
            path,
            "unreadable",
            "no SOP Class UID (0008,0016) in the data set nor Media Storage SOP Class UID"
            " (0002,0002) in the meta; a receiver cannot store it",
        )
    if sop_instance is None:
        raise HeaderError(
            path,
            "unreadable",
            "no SOP Instance UID (0008,0018) in the data set nor Media Storage SOP Instance"
            " UID (0002,0003) in the meta; a receiver cannot store it",
        )
    return FileInfo(
        path=path,
        size=size,
        mtime=mtime,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        transfer_syntax_uid=transfer_syntax,
        study_instance_uid=study_instance_uid or "",
        dataset_offset=dataset_offset,
        series_instance_uid=series_instance_uid or "",
        patient_id=patient_id,
        patient_name=patient_name,
        accession_number=accession_number,
        study_date=study_date,
        study_time=study_time,
    )


def read_header(path: str | os.PathLike[str]) -> FileInfo:
    """The FileInfo of one file, or HeaderError saying why it will not be sent."""
    return read_header_and_content(path)[0]


def read_header_and_content(path: str | os.PathLike[str]) -> tuple[FileInfo, bytes | None]:
    """``read_header``, with the file's bytes when the one read of its head took it all.

    A small file (up to HEAD_LENGTH bytes) is then sent from those bytes:
    no second open, no mapping, and the data set is the one whose header
    was read and claimed.
    """
    name = os.fspath(path)
    try:
        # O_NONBLOCK: a FIFO among the inputs must not hang the scan; it is
        # rejected below as not a regular file.
        descriptor = os.open(name, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError as error:
        raise HeaderError(name, "unreadable", "no such file (moved or deleted?)") from error
    except IsADirectoryError as error:
        raise HeaderError(name, "not-dicom", "is a directory") from error
    except PermissionError as error:
        raise HeaderError(
            name, "unreadable", "permission denied; run as a user that can read the file"
        ) from error
    except OSError as error:
        raise HeaderError(name, "unreadable", f"cannot open: {error.strerror}") from error
    try:
        status = os.fstat(descriptor)
        if stat.S_ISDIR(status.st_mode):
            raise HeaderError(name, "not-dicom", "is a directory")
        if not stat.S_ISREG(status.st_mode):
            raise HeaderError(name, "not-dicom", "not a regular file")
        if status.st_size == 0:
            raise HeaderError(name, "not-dicom", "empty file")
        try:
            head = os.pread(descriptor, HEAD_LENGTH, 0)
        except OSError as error:
            raise HeaderError(name, "unreadable", f"cannot read: {error.strerror}") from error
        try:
            with memoryview(head) as view:
                info = _read_mapped(name, view, status.st_size, status.st_mtime)
            return info, head if len(head) == status.st_size else None
        except _NeedWholeFile:
            pass
        try:
            mapped = mmap.mmap(descriptor, 0, access=mmap.ACCESS_READ)
        except OSError as error:
            raise HeaderError(name, "unreadable", f"cannot map: {error.strerror}") from error
    finally:
        os.close(descriptor)
    try:
        with memoryview(mapped) as view:
            return _read_mapped(name, view, status.st_size, status.st_mtime), None
    finally:
        # The sender maps the file again when it sends; keep no mapping open
        # across a scan of millions of files.
        mapped.close()
