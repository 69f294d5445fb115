"""Large synthetic DICOM sets for bench/scale.py: one template, patched in place.

A million files cannot be written with pydicom in a minute (about 1 ms a file
for building and encoding a Dataset); writing the same bytes with a few values
patched costs a few microseconds of Python and one open/write/close. So one
template Part 10 file is written with pydicom, the byte offsets of the values
that differ between files are found in it, and every file is the template with
those values overwritten by values of the same length:

- SOP Instance UID, twice: (0002,0003) Media Storage SOP Instance UID in the
  file meta and (0008,0018) in the data set (PS3.10 7.1 wants them equal);
- Study Instance UID (0020,000D), Series Instance UID (0020,000E) and Frame of
  Reference UID (0020,0052);
- Instance Number (0020,0013) and Patient ID (0010,0020).

The UIDs have a fixed length within a set because every component that counts
is zero-padded behind a leading 1 (PS3.5 9.1: a component has no leading zero).
They live under the project's root 1.2.826.0.1.3680043.10.1447, in an arc of
their own (.14, issue 14), followed by the set's shape (files, files per study,
series per study), so two sets of different shapes never share a UID:

    <root>.14.<files>.<per study>.<series>.1.1SSSSSSS          Study Instance UID
    <root>.14.<files>.<per study>.<series>.2.1SSSSSSS.1EEE     Series Instance UID
    <root>.14.<files>.<per study>.<series>.3.1IIIIIIIII        SOP Instance UID
    <root>.14.<files>.<per study>.<series>.4.1SSSSSSS          Frame of Reference UID

(S: study index, E: series index in its study, I: file index in the set.)

Layout: ``<set>/dicom/studySSSSSS/seriesEEEE/NNNNN.dcm`` (N: the instance
number in its series), and ``<set>/set.json`` written last, when every file is
there: a later run reuses the set only if that marker names the same shape.
The marker sits beside the tree, not in it, so that a sender given the tree
finds DICOM files only. The files are CT Image Storage, 64x64 pixels of 16
bits, Explicit VR Little Endian: 8.6 KB each.
"""

from __future__ import annotations

import array
import io
import json
import multiprocessing
import os
import shutil
import struct
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

UID_ROOT = "1.2.826.0.1.3680043.10.1447.14"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"  # PS3.4 B.5
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"  # PS3.5 A.2
IMPLEMENTATION_CLASS_UID = f"{UID_ROOT}.0"
IMPLEMENTATION_VERSION_NAME = "FS_SCALE_BENCH"  # PS3.7 D.3.3.2.2: at most 16 characters
MAX_UID_LENGTH = 64  # PS3.5 9.1
MARKER = "set.json"
TREE = "dicom"
GENERATING = ".generating"
# Bump when the bytes of the files change, so that sets written before are rewritten.
FORMAT_VERSION = 1

# Widths of the zero-padded counters (behind their leading 1).
STUDY_DIGITS = 7
SERIES_DIGITS = 3
FILE_DIGITS = 9
INSTANCE_NUMBER_WIDTH = 6  # IS, right-aligned with leading spaces (PS3.5 6.2 allows them)
PATIENT_ID_FORMAT = "SCALE{:07d}"


@dataclass(frozen=True, slots=True)
class SetShape:
    """How many files, grouped how: what a set on disk is, and what its marker records."""

    files: int
    files_per_study: int = 100
    series_per_study: int = 1
    rows: int = 64
    columns: int = 64

    def __post_init__(self) -> None:
        if self.files < 1 or self.files >= 10**FILE_DIGITS:
            raise ValueError(f"files must be in 1..{10**FILE_DIGITS - 1}, got {self.files}")
        if self.files_per_study < 1:
            raise ValueError(f"files per study must be at least 1, got {self.files_per_study}")
        if not 1 <= self.series_per_study <= min(self.files_per_study, 10**SERIES_DIGITS - 1):
            raise ValueError(
                f"series per study must be in 1..{min(self.files_per_study, 999)} "
                f"(and at most the files per study), got {self.series_per_study}"
            )
        if self.studies >= 10**STUDY_DIGITS:
            raise ValueError(f"at most {10**STUDY_DIGITS - 1} studies, got {self.studies}")
        if not (1 <= self.rows <= 0xFFFF and 1 <= self.columns <= 0xFFFF):
            raise ValueError("rows and columns must be in 1..65535 (US, PS3.3 C.7.6.3)")
        longest = max(len(self.series_uid(0, 0)), len(self.sop_instance_uid(0)))
        if longest > MAX_UID_LENGTH:
            raise ValueError(
                f"this shape gives UIDs of {longest} characters, more than the "
                f"{MAX_UID_LENGTH} of PS3.5 9.1: use fewer files per study or series"
            )

    @property
    def studies(self) -> int:
        return -(-self.files // self.files_per_study)

    @property
    def uid_prefix(self) -> str:
        return f"{UID_ROOT}.{self.files}.{self.files_per_study}.{self.series_per_study}"

    def study_uid(self, study: int) -> str:
        return f"{self.uid_prefix}.1.1{study:0{STUDY_DIGITS}d}"

    def series_uid(self, study: int, series: int) -> str:
        return f"{self.uid_prefix}.2.1{study:0{STUDY_DIGITS}d}.1{series:0{SERIES_DIGITS}d}"

    def sop_instance_uid(self, index: int) -> str:
        return f"{self.uid_prefix}.3.1{index:0{FILE_DIGITS}d}"

    def frame_of_reference_uid(self, study: int) -> str:
        return f"{self.uid_prefix}.4.1{study:0{STUDY_DIGITS}d}"

    def series_sizes(self, study: int) -> list[int]:
        """Files in each series of `study`; the last study holds what is left over."""
        in_study = min(self.files_per_study, self.files - study * self.files_per_study)
        base, extra = divmod(in_study, self.series_per_study)
        sizes = [base + (1 if series < extra else 0) for series in range(self.series_per_study)]
        return [size for size in sizes if size > 0]

    def relative_path(self, study: int, series: int, instance_number: int) -> str:
        return f"study{study:06d}/series{series + 1:04d}/{instance_number:05d}.dcm"


@dataclass(frozen=True, slots=True)
class Patch:
    """Where one value sits in the template: byte offset and length of the value field."""

    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Template:
    """The template file's bytes and where the per-file values go."""

    data: bytes
    meta_sop_instance_uid: Patch
    sop_instance_uid: Patch
    study_uid: Patch
    series_uid: Patch
    frame_of_reference_uid: Patch
    instance_number: Patch
    patient_id: Patch


def _uid_value(uid: str, length: int) -> bytes:
    """A UID as a value field of `length` bytes: NUL-padded to even length (PS3.5 9.1)."""
    raw = uid.encode("ascii")
    if len(raw) + (len(raw) & 1) != length:
        raise ValueError(f"UID {uid} does not fit a value field of {length} bytes")
    return raw.ljust(length, b"\0")


def _find_value(data: bytes, end: int, group: int, element: int, vr: bytes) -> Patch:
    """The value field of element (group,element) of `vr` in data[:end], Explicit VR LE.

    PS3.5 7.1.2: tag (2 + 2 bytes), VR (2 bytes), 16-bit length, then the value
    (the VRs patched here all have a 16-bit length). The template has no
    sequences, so each tag appears once before the pixel data.
    """
    header = struct.pack("<HH", group, element) + vr
    first = data.find(header, 0, end)
    if first < 0 or data.find(header, first + 1, end) >= 0:
        raise RuntimeError(f"({group:04X},{element:04X}) is not in the template exactly once")
    (length,) = struct.unpack_from("<H", data, first + 6)
    return Patch(first + 8, length)


def build_template(shape: SetShape) -> Template:
    """Write the template with pydicom and locate its per-file values."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(shape.sop_instance_uid(0))
    meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = shape.sop_instance_uid(0)
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = "dicom-fastsend scale bench"
    ds.ReferringPhysicianName = ""
    ds.PatientName = "Scale^Bench"
    ds.PatientID = PATIENT_ID_FORMAT.format(0)
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.KVP = "120"
    ds.StudyInstanceUID = shape.study_uid(0)
    ds.SeriesInstanceUID = shape.series_uid(0, 0)
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    # A placeholder of the fixed width (pydicom strips the spaces of "     1"),
    # so that every instance number fits the field; each file gets its own.
    ds.InstanceNumber = 10 ** (INSTANCE_NUMBER_WIDTH - 1)
    ds.ImagePositionPatient = ["0", "0", "0"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = shape.frame_of_reference_uid(0)
    ds.PositionReferenceIndicator = ""
    # Image Pixel module (PS3.3 C.7.6.3) and CT Image module (C.8.2.1): 16 bits
    # allocated, 12 stored, values within them.
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = shape.rows
    ds.Columns = shape.columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    pixels = array.array(
        "H",
        (
            (row * 37 + column * 11) % 4096
            for row in range(shape.rows)
            for column in range(shape.columns)
        ),
    )
    if pixels.itemsize != 2:
        raise RuntimeError("array 'H' is not 16 bits on this platform")
    if struct.pack("=H", 1) != struct.pack("<H", 1):
        pixels.byteswap()  # the file is little endian
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"

    buffer = io.BytesIO()
    # enforce_file_format: the 128-byte preamble, "DICM" and a complete file
    # meta (PS3.10 7.1), not pydicom's "as given".
    ds.save_as(buffer, enforce_file_format=True, little_endian=True, implicit_vr=False)
    data = buffer.getvalue()
    end = data.find(struct.pack("<HH", 0x7FE0, 0x0010) + b"OW")
    if end < 0:
        raise RuntimeError("the template has no Pixel Data")
    template = Template(
        data=data,
        meta_sop_instance_uid=_find_value(data, end, 0x0002, 0x0003, b"UI"),
        sop_instance_uid=_find_value(data, end, 0x0008, 0x0018, b"UI"),
        study_uid=_find_value(data, end, 0x0020, 0x000D, b"UI"),
        series_uid=_find_value(data, end, 0x0020, 0x000E, b"UI"),
        frame_of_reference_uid=_find_value(data, end, 0x0020, 0x0052, b"UI"),
        instance_number=_find_value(data, end, 0x0020, 0x0013, b"IS"),
        patient_id=_find_value(data, end, 0x0010, 0x0020, b"LO"),
    )
    if template.instance_number.length != INSTANCE_NUMBER_WIDTH:
        raise RuntimeError(
            f"pydicom wrote Instance Number in {template.instance_number.length} bytes, "
            f"not the {INSTANCE_NUMBER_WIDTH} it was given"
        )
    return template


def _file_plan(shape: SetShape, study: int) -> Iterator[tuple[int, int, int]]:
    """(series, instance number, file index) of every file of `study`, in order."""
    index = study * shape.files_per_study
    for series, size in enumerate(shape.series_sizes(study)):
        for number in range(1, size + 1):
            yield series, number, index
            index += 1


def _write_studies(tree: str, shape: SetShape, template: Template, first: int, last: int) -> int:
    """Write studies first..last-1 under `tree`; the number of files written."""
    blob = bytearray(template.data)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    written = 0

    def put(patch: Patch, value: bytes) -> None:
        blob[patch.offset : patch.offset + patch.length] = value

    for study in range(first, last):
        put(template.study_uid, _uid_value(shape.study_uid(study), template.study_uid.length))
        put(
            template.frame_of_reference_uid,
            _uid_value(shape.frame_of_reference_uid(study), template.frame_of_reference_uid.length),
        )
        put(template.patient_id, PATIENT_ID_FORMAT.format(study).encode("ascii"))
        current_series = -1
        for series, number, index in _file_plan(shape, study):
            if series != current_series:
                current_series = series
                put(
                    template.series_uid,
                    _uid_value(shape.series_uid(study, series), template.series_uid.length),
                )
                folder = os.path.join(tree, os.path.dirname(shape.relative_path(study, series, 1)))
                os.makedirs(folder, exist_ok=True)
            uid = _uid_value(shape.sop_instance_uid(index), template.sop_instance_uid.length)
            put(template.meta_sop_instance_uid, uid)
            put(template.sop_instance_uid, uid)
            put(template.instance_number, str(number).rjust(INSTANCE_NUMBER_WIDTH).encode("ascii"))
            path = os.path.join(tree, shape.relative_path(study, series, number))
            descriptor = os.open(path, flags, 0o644)
            try:
                os.write(descriptor, blob)
            finally:
                os.close(descriptor)
            written += 1
    return written


def _write_chunk(arguments: tuple[str, SetShape, Template, int, int]) -> int:
    return _write_studies(*arguments)


def _marker(shape: SetShape, template: Template) -> dict[str, object]:
    return {
        "format_version": FORMAT_VERSION,
        "shape": asdict(shape),
        "file_bytes": len(template.data),
    }


def read_marker(directory: Path) -> dict[str, object] | None:
    try:
        document = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


@dataclass(frozen=True, slots=True)
class GeneratedSet:
    tree: Path
    shape: SetShape
    file_bytes: int
    seconds: float  # 0 when an existing set was reused
    reused: bool

    @property
    def total_bytes(self) -> int:
        return self.file_bytes * self.shape.files


def generate(directory: Path, shape: SetShape, processes: int | None = None) -> GeneratedSet:
    """The set of `shape` under `directory`: reused if its marker matches, else written.

    A directory that holds something else (neither a set of ours nor one being
    written) is left alone with an error, since rewriting means deleting it.
    """
    template = build_template(shape)
    expected = _marker(shape, template)
    tree = directory / TREE
    if read_marker(directory) == expected and tree.is_dir():
        return GeneratedSet(tree, shape, len(template.data), 0.0, reused=True)
    if directory.exists() and any(directory.iterdir()):
        ours = (directory / MARKER).exists() or (directory / GENERATING).exists()
        if not ours:
            raise FileExistsError(
                f"{directory} is not empty and holds no scale set ({MARKER}); "
                "give an empty or new --data directory"
            )
        # An older shape, format, or an interrupted generation: start again.
        (directory / MARKER).unlink(missing_ok=True)
        shutil.rmtree(tree, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / GENERATING).write_text("")
    started = time.perf_counter()
    tree.mkdir()
    workers = max(1, min(processes or os.cpu_count() or 1, shape.studies))
    # Chunks of about 20,000 files keep every process busy to the end.
    per_chunk = max(1, 20_000 // shape.files_per_study)
    chunks = [
        (str(tree), shape, template, first, min(first + per_chunk, shape.studies))
        for first in range(0, shape.studies, per_chunk)
    ]
    if workers == 1 or len(chunks) == 1:
        written = sum(_write_chunk(chunk) for chunk in chunks)
    else:
        # fork: the children need nothing but the arguments, and start at once.
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            written = sum(pool.imap_unordered(_write_chunk, chunks))
    if written != shape.files:
        raise RuntimeError(f"wrote {written} files instead of {shape.files} under {tree}")
    (directory / MARKER).write_text(json.dumps(expected, indent=2) + "\n")
    (directory / GENERATING).unlink()
    return GeneratedSet(
        tree, shape, len(template.data), time.perf_counter() - started, reused=False
    )
