"""Synthetic DICOM instances for the demo, the tests and the benchmarks.

Everything here is deterministic: the same arguments give the same bytes
(UIDs are derived from the arguments, pixels from a seeded RNG), so a rerun of
a benchmark or a test sends exactly the same archive.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, generate_uid

from dicom_fastsend import __version__
from dicom_fastsend.protocol.uids import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLEMENTATION_CLASS_UID_ROOT,
    IMPLICIT_VR_LITTLE_ENDIAN,
)

# Storage SOP classes (PS3.4 B.5).
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
MULTIFRAME_GRAYSCALE_WORD_SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7.3"

SOP_CLASS_FOR_MODALITY: dict[str, str] = {
    "CT": CT_IMAGE_STORAGE,
    "MR": MR_IMAGE_STORAGE,
    # Secondary Capture's own modality is whatever produced it; "OT" (other)
    # is the conventional value for a synthetic image (PS3.3 C.7.3.1.1.1).
    "SC": SECONDARY_CAPTURE_IMAGE_STORAGE,
}

# Synthetic instances live under their own arc of the project's UID root so
# they can never collide with real data or with fastsend's implementation UID.
SYNTH_UID_PREFIX = f"{IMPLEMENTATION_CLASS_UID_ROOT}.9."
IMPLEMENTATION_CLASS_UID = f"{IMPLEMENTATION_CLASS_UID_ROOT}.{__version__}"
# PS3.7 D.3.3.2.2: Implementation Version Name is at most 16 characters.
IMPLEMENTATION_VERSION_NAME = f"FASTSEND_{__version__}"[:16]

PRIVATE_CREATOR = "DICOM_FASTSEND_SYNTH"
PRIVATE_GROUP = 0x0009

SUPPORTED_TRANSFER_SYNTAXES = (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
)


def synth_uid(*parts: str) -> str:
    """A UID derived only from `parts`: same parts, same UID, on every run."""
    return str(generate_uid(prefix=SYNTH_UID_PREFIX, entropy_srcs=["fastsend-synth", *parts]))


def make_instance(
    *,
    modality: str = "CT",
    study_uid: str,
    series_uid: str,
    instance_number: int,
    rows: int = 64,
    columns: int = 64,
    transfer_syntax: str = EXPLICIT_VR_LITTLE_ENDIAN,
    seed: int = 0,
) -> Dataset:
    """One synthetic single-frame image with a Part 10 file meta.

    The SOP Instance UID is derived from the series UID and the instance
    number, the pixels from `seed` and the instance number.
    """
    if modality not in SOP_CLASS_FOR_MODALITY:
        raise ValueError(
            f"unknown modality {modality!r}; expected one of {sorted(SOP_CLASS_FOR_MODALITY)}"
        )
    if transfer_syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        raise ValueError(
            f"synthetic data is uncompressed only; {transfer_syntax!r} is not one of "
            f"{SUPPORTED_TRANSFER_SYNTAXES}"
        )
    if rows < 1 or columns < 1 or rows > 0xFFFF or columns > 0xFFFF:
        # Rows and Columns are US (PS3.3 C.7.6.3).
        raise ValueError(f"rows and columns must be in 1..65535, got {rows}x{columns}")

    sop_class = SOP_CLASS_FOR_MODALITY[modality]
    sop_instance = synth_uid(series_uid, str(instance_number))

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"] if modality == "CT" else ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.ContentDate = "20240102"
    ds.ContentTime = f"1015{instance_number % 60:02d}"
    ds.AccessionNumber = f"ACC{abs(hash_int(study_uid)) % 10**8:08d}"
    ds.Modality = "OT" if modality == "SC" else modality
    ds.Manufacturer = "dicom-fastsend synth"
    ds.ReferringPhysicianName = "Referrer^Synthetic"
    ds.StudyDescription = f"Synthetic {modality} study"
    ds.SeriesDescription = f"Synthetic {modality} series"

    # Patient module (PS3.3 C.7.1.1): one patient per study keeps it simple.
    patient_no = hash_int(study_uid) % 10**6
    ds.PatientName = f"Synthetic^Patient{patient_no:06d}"
    ds.PatientID = f"FS{patient_no:06d}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"

    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number

    if modality == "SC":
        # SC Equipment module (PS3.3 C.8.6.1): WSD = workstation.
        ds.ConversionType = "WSD"
    else:
        ds.FrameOfReferenceUID = synth_uid(study_uid, "frame-of-reference")
        ds.PositionReferenceIndicator = ""
        ds.SliceThickness = "1.0"
        ds.PixelSpacing = ["0.5", "0.5"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.ImagePositionPatient = ["0", "0", str(instance_number)]
        ds.SliceLocation = str(instance_number)
    if modality == "CT":
        ds.KVP = "120"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
    elif modality == "MR":
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.EchoTime = "10"
        ds.RepetitionTime = "500"
        ds.MagneticFieldStrength = "1.5"

    # Nested sequences exercise SQ encoding, which is where Implicit and
    # Explicit VR differ the most (PS3.5 7.5).
    code = Dataset()
    code.CodeValue = f"FS{modality}"
    code.CodingSchemeDesignator = "99FASTSEND"
    code.CodeMeaning = f"Synthetic {modality} procedure"
    ds.ProcedureCodeSequence = Sequence([code])
    if instance_number > 1:
        ref = Dataset()
        ref.ReferencedSOPClassUID = sop_class
        ref.ReferencedSOPInstanceUID = synth_uid(series_uid, str(instance_number - 1))
        purpose = Dataset()
        purpose.CodeValue = "121329"
        purpose.CodingSchemeDesignator = "DCM"
        purpose.CodeMeaning = "Source image for image processing operation"
        ref.PurposeOfReferenceCodeSequence = Sequence([purpose])
        ds.ReferencedImageSequence = Sequence([ref])

    # A private block (PS3.5 7.8.1): its VRs are unknown to a receiver without
    # the creator's dictionary, so it shows what happens to such tags.
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", f"synthetic instance {instance_number}")
    block.add_new(0x02, "US", instance_number & 0xFFFF)
    block.add_new(0x03, "FD", [float(seed), 1.5])
    block.add_new(0x04, "OB", bytes(range(16)))

    # Image Pixel module (PS3.3 C.7.6.3): 16-bit unsigned, 12 bits stored,
    # values kept within BitsStored so viewers and validators are happy.
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    rng = np.random.default_rng([seed, instance_number, hash_int(series_uid)])
    pixels = rng.integers(0, 1 << 12, size=(rows, columns), dtype=np.uint16)
    big_endian = transfer_syntax == EXPLICIT_VR_BIG_ENDIAN
    ds.PixelData = pixels.astype(">u2" if big_endian else "<u2").tobytes()
    # Implicit VR cannot say OW itself; setting it here keeps Explicit output
    # correct and is what the dictionary implies for Implicit (PS3.5 A.1).
    ds["PixelData"].VR = "OW"

    ds.set_original_encoding(
        transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN, not big_endian, "ISO_IR 100"
    )
    return ds


def hash_int(text: str) -> int:
    """A stable non-negative integer for `text` (Python's hash() is salted per run)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def write_archive(
    directory: str | Path,
    *,
    studies: int,
    instances_per_study: int,
    modality: str = "CT",
    rows: int = 64,
    columns: int = 64,
    transfer_syntax: str = EXPLICIT_VR_LITTLE_ENDIAN,
    seed: int = 0,
) -> list[Path]:
    """Write `studies` x `instances_per_study` Part 10 files under `directory`.

    Layout: ``<directory>/<study n>/<series>/<instance n>.dcm``; one series per
    study. UIDs depend on `seed`, `modality`, the transfer syntax and the
    study index, so two archives written with different syntaxes into one
    tree never share a UID. Returns the paths in write order.
    """
    if studies < 0 or instances_per_study < 0:
        raise ValueError("studies and instances_per_study must not be negative")
    root = Path(directory)
    paths: list[Path] = []
    for study_index in range(studies):
        key = (str(seed), modality, transfer_syntax, str(study_index))
        study_uid = synth_uid("study", *key)
        series_uid = synth_uid("series", *key)
        folder = root / f"study{study_index:04d}_{modality}_{seed}_{_ts_tag(transfer_syntax)}"
        folder = folder / "series0001"
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(1, instances_per_study + 1):
            ds = make_instance(
                modality=modality,
                study_uid=study_uid,
                series_uid=series_uid,
                instance_number=number,
                rows=rows,
                columns=columns,
                transfer_syntax=transfer_syntax,
                seed=seed,
            )
            path = folder / f"{number:05d}.dcm"
            # enforce_file_format: write a conformant Part 10 preamble + meta
            # (PS3.10 7.1) rather than pydicom's "as given" behaviour.
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def write_multiframe(
    path: str | Path,
    *,
    frames: int,
    rows: int = 512,
    columns: int = 512,
    seed: int = 0,
) -> Path:
    """Write one Multi-frame Grayscale Word Secondary Capture image (Explicit VR LE).

    The pixel data is streamed one frame at a time after the header that
    pydicom writes, so a file of several hundred MB needs one frame of memory.
    It is written under a temporary name and renamed when complete: an
    interrupted run never leaves a short file that looks finished.
    """
    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    frame_bytes = rows * columns * 2
    if frame_bytes * frames > 0xFFFFFFFE:
        # PS3.5 7.1.2: an explicit element length is 32 bits (FFFFFFFF is "undefined").
        raise ValueError(f"{frames} frames of {rows}x{columns} do not fit one Pixel Data element")
    key = ("multiframe", str(seed), str(frames), str(rows), str(columns))
    ds = make_instance(
        modality="SC",
        study_uid=synth_uid("study", *key),
        series_uid=synth_uid("series", *key),
        instance_number=1,
        rows=rows,
        columns=columns,
        seed=seed,
    )
    del ds.PixelData
    ds.SOPClassUID = MULTIFRAME_GRAYSCALE_WORD_SC_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPClassUID = UID(MULTIFRAME_GRAYSCALE_WORD_SC_IMAGE_STORAGE)
    # Multi-frame module (PS3.3 C.7.6.6): frames are indexed by Frame Time.
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063
    ds.FrameTime = "40"
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".part")
    rng = np.random.default_rng([seed, frames, rows, columns])
    with open(temporary, "wb") as handle:
        ds.save_as(handle, enforce_file_format=True)
        # (7FE0,0010) OW in Explicit VR LE: tag, VR, 2 reserved bytes, 32-bit length
        # (PS3.5 7.1.2); it is the data set's last element, so it goes after the rest.
        handle.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, frame_bytes * frames))
        for _ in range(frames):
            frame = rng.integers(0, 1 << 12, size=(rows, columns), dtype=np.uint16)
            handle.write(frame.astype("<u2").tobytes())
    os.replace(temporary, target)
    return target


def _ts_tag(transfer_syntax: str) -> str:
    return {
        EXPLICIT_VR_LITTLE_ENDIAN: "evrle",
        IMPLICIT_VR_LITTLE_ENDIAN: "ivrle",
        EXPLICIT_VR_BIG_ENDIAN: "evrbe",
    }[transfer_syntax]
