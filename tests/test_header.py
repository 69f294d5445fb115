"""read_header against files written by pydicom, under both hot-path implementations."""

from __future__ import annotations

import os
import pwd
import random
import shutil
import subprocess
import sys
import tempfile
import traceback
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

import dicom_fastsend._pdu as compiled
import dicom_fastsend._pdu_py as pure
from dicom_fastsend.io import header
from dicom_fastsend.io.header import FileInfo, HeaderError, read_header


@pytest.fixture(params=[compiled, pure], ids=["cython", "python"], autouse=True)
def implementation(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    # header.py imported scan_values from hotpath; swap it so every test runs on both.
    monkeypatch.setattr(header, "scan_values", request.param.scan_values)
    yield


@pytest.fixture(params=[header.HEAD_LENGTH, 1024, 200], ids=["head", "head1024", "head200"])
def head_length(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Run on every file as one longer than the first read too: with a short head,
    read_header takes the head walk and its fallbacks (a head of 200 bytes ends
    inside the File Meta Information; one of 1024 holds the pixel data's header
    but not its value)."""
    monkeypatch.setattr(header, "HEAD_LENGTH", request.param)
    return int(request.param)


def _ct(*, with_sequence: bool = False, pixels: int = 512) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    if with_sequence:
        # Undefined-length sequences before (0008,0018): the walk must skip them by
        # their delimiters (PS3.5 7.5.2) to reach the SOP Instance UID.
        # (0008,0006) Language Code Sequence, PS3.16 CID 5000 code "en".
        code = Dataset()
        code.CodeValue = "en"
        code.CodingSchemeDesignator = "RFC5646"
        code.CodeMeaning = "English"
        code.is_undefined_length_sequence_item = True
        ds.LanguageCodeSequence = Sequence([code])
        ds["LanguageCodeSequence"].is_undefined_length = True
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.11"
    ds.Modality = "CT"
    # ISO_IR 100 (Latin-1): the name is not ASCII; the accession's odd
    # length gets a padding space (PS3.5 6.2) that must not come back.
    ds.PatientName = "Müller^Test"
    ds.PatientID = "PID-0042"
    ds.AccessionNumber = "ACC12"
    ds.StudyDate = "20240229"
    ds.StudyTime = "134501.5"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.12"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.13"
    ds.Rows = 16
    ds.Columns = pixels // 32
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(256)) * (pixels // 256)
    return ds


def _save(ds: Dataset, path: Path, transfer_syntax: UID) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Explicit VR Big Endian is retired
        ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    "transfer_syntax",
    [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    ],
    ids=lambda uid: uid.name,
)
@pytest.mark.parametrize("with_sequence", [False, True], ids=["flat", "sequence"])
def test_read_header_matches_pydicom(
    tmp_path: Path, transfer_syntax: UID, with_sequence: bool, head_length: int
) -> None:
    path = _save(_ct(with_sequence=with_sequence), tmp_path / "ct.dcm", transfer_syntax)
    info = read_header(path)
    reference = pydicom.dcmread(path, stop_before_pixels=True)
    stat = os.stat(path)
    assert info == FileInfo(
        path=str(path),
        size=stat.st_size,
        mtime=stat.st_mtime,
        sop_class_uid=reference.SOPClassUID,
        sop_instance_uid=reference.SOPInstanceUID,
        transfer_syntax_uid=reference.file_meta.TransferSyntaxUID,
        study_instance_uid=reference.StudyInstanceUID,
        dataset_offset=info.dataset_offset,
        series_instance_uid=reference.get("SeriesInstanceUID", ""),
        patient_id=reference.PatientID,
        patient_name=str(reference.PatientName),
        accession_number=reference.AccessionNumber,
        study_date=reference.StudyDate,
        study_time=reference.StudyTime,
    )
    assert (info.patient_name, info.accession_number) == ("Müller^Test", "ACC12")
    # dataset_offset: from there on the file holds exactly the data set pydicom encodes
    # (deflated for the deflated syntax, as a receiver expects it on the wire).
    encoded = DicomBytesIO()
    encoded.is_implicit_VR = transfer_syntax == ImplicitVRLittleEndian
    encoded.is_little_endian = transfer_syntax != ExplicitVRBigEndian
    write_dataset(encoded, pydicom.dcmread(path))
    expected = encoded.getvalue()
    actual = path.read_bytes()[info.dataset_offset :]
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        actual = zlib.decompress(actual, wbits=-zlib.MAX_WBITS)
    assert actual == expected


def test_read_header_raw_data_set_without_meta(tmp_path: Path, head_length: int) -> None:
    for implicit_vr, uid in ((False, ExplicitVRLittleEndian), (True, ImplicitVRLittleEndian)):
        path = tmp_path / f"raw-{uid}.dcm"
        ds = _ct()
        pydicom.dcmwrite(path, ds, implicit_vr=implicit_vr, little_endian=True)
        assert path.read_bytes()[128:132] != b"DICM"
        info = read_header(path)
        assert info.dataset_offset == 0
        assert info.transfer_syntax_uid == uid
        assert info.sop_instance_uid == ds.SOPInstanceUID
        assert info.sop_class_uid == ds.SOPClassUID
        assert info.study_instance_uid == ds.StudyInstanceUID


def test_read_header_falls_back_to_meta_uids_and_tolerates_short_trailer(
    tmp_path: Path, head_length: int
) -> None:
    ds = _ct()
    del ds.StudyInstanceUID
    path = _save(ds, tmp_path / "ct.dcm", ExplicitVRLittleEndian)
    # Remove (0008,0016)/(0008,0018) from the data set only, keep the meta copies,
    # and add 5 stray bytes (too short for an element header) at the end.
    reference = pydicom.dcmread(path)
    del reference.SOPClassUID
    del reference.SOPInstanceUID
    reference.save_as(path, enforce_file_format=True)
    with open(path, "ab") as handle:
        handle.write(b"\x00" * 5)
    info = read_header(path)
    assert info.sop_class_uid == CTImageStorage
    assert info.sop_instance_uid == "1.2.826.0.1.3680043.8.498.11"
    assert info.study_instance_uid == ""


def _expect(path: Path | str, kind: str, words: str) -> HeaderError:
    with pytest.raises(HeaderError) as caught:
        read_header(path)
    error = caught.value
    assert error.kind == kind
    assert error.path == str(path)
    assert str(error).startswith(f"{path}: ")
    assert words in error.reason
    return error


def test_missing_file(tmp_path: Path) -> None:
    _expect(tmp_path / "gone.dcm", "unreadable", "no such file")


def test_directory(tmp_path: Path) -> None:
    _expect(tmp_path, "not-dicom", "directory")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"")
    _expect(path, "not-dicom", "empty file")


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.bin"
    noise = random.Random(7).randbytes(4096)
    assert noise[:2] != b"\x08\x00"
    path.write_bytes(noise)
    _expect(path, "not-dicom", "no DICM prefix at offset 128")


def test_preamble_and_prefix_only(tmp_path: Path) -> None:
    path = tmp_path / "prefix.dcm"
    path.write_bytes(bytes(128) + b"DICM")
    _expect(path, "unreadable", "Transfer Syntax UID (0002,0010)")


def test_truncated_in_pixel_data(tmp_path: Path, head_length: int) -> None:
    path = _save(_ct(pixels=4096), tmp_path / "ct.dcm", ExplicitVRLittleEndian)
    data = path.read_bytes()
    path.write_bytes(data[:-1000])
    error = _expect(path, "unreadable", "element (7fe0,0010) at offset")
    assert "says 4096 bytes, only 3096 remain" in error.reason


@pytest.mark.parametrize("trailer", [0, 5], ids=["exact", "stray-bytes"])
def test_a_long_file_is_read_from_its_head_without_mapping_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trailer: int
) -> None:
    """Pixel data ending at the end of the file settles the walk from the first read;
    anything after it (here 5 stray bytes) sends read_header to the full walk."""
    pixels = 4 * header.HEAD_LENGTH
    path = _save(_ct(pixels=pixels), tmp_path / "ct.dcm", ExplicitVRLittleEndian)
    with open(path, "ab") as handle:
        handle.write(b"\x00" * trailer)
    mapped: list[int] = []
    real_mmap = header.mmap.mmap

    def counting_mmap(*args: Any, **kwargs: Any) -> Any:
        mapped.append(1)
        return real_mmap(*args, **kwargs)

    monkeypatch.setattr(header.mmap, "mmap", counting_mmap)
    info = read_header(path)
    assert info.sop_instance_uid == "1.2.826.0.1.3680043.8.498.11"
    assert info.size == path.stat().st_size > header.HEAD_LENGTH
    assert len(mapped) == (1 if trailer else 0)
    # Cut inside the pixel data, beyond the head: still caught, by the full walk.
    path.write_bytes(path.read_bytes()[: -(trailer + 1000)])
    error = _expect(path, "unreadable", "element (7fe0,0010) at offset")
    assert f"says {pixels} bytes, only {pixels - 1000} remain" in error.reason


def test_missing_sop_instance_uid(tmp_path: Path, head_length: int) -> None:
    ds = _ct()
    del ds.SOPInstanceUID
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.preamble = b"\x00" * 128
    path = tmp_path / "no-instance.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=False)
    assert path.read_bytes()[128:132] == b"DICM"
    _expect(path, "unreadable", "no SOP Instance UID (0008,0018)")


def test_dicomdir(tmp_path: Path, head_length: int) -> None:
    ds = Dataset()
    ds.FileSetID = "TEST"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.1.3.10")
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.826.0.1.3680043.8.498.99")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "DICOMDIR"
    ds.save_as(path, enforce_file_format=True)
    _expect(path, "dicomdir", "DICOMDIR")


@pytest.fixture
def unprivileged_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory an unprivileged user can search: tmp_path, or as root (whose
    pytest-of-root is private) a fresh one in the system's temporary directory."""
    if os.geteuid() != 0:
        yield tmp_path
        return
    directory = Path(tempfile.mkdtemp(prefix="fastsend-unprivileged-"))
    try:
        directory.chmod(0o755)
        yield directory
    finally:
        shutil.rmtree(directory)


def as_unprivileged(check: Callable[[], None]) -> None:
    """Run `check` as this user or, as root, in a forked child that became nobody.

    Root reads a file whatever its mode; dropping privileges lets the check see
    what a user sees. A fork, not a new interpreter: nobody cannot reach this
    Python under /root, and the child keeps the test's monkeypatched modules.
    """
    if os.geteuid() != 0:
        check()
        return
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            assert os.geteuid() == nobody.pw_uid
            check()
            status = 0
        except BaseException as exc:  # whatever it is, the parent reports it
            os.write(write_end, "".join(traceback.format_exception(exc)).encode())
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode(errors="replace")
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0, f"as nobody:\n{report}"


def test_permission_denied(unprivileged_dir: Path) -> None:
    path = _save(_ct(), unprivileged_dir / "ct.dcm", ExplicitVRLittleEndian)
    # The same file with a mode anyone may read: the denial must come from the
    # mode of the file, not from a directory on the way to it.
    readable = _save(_ct(), unprivileged_dir / "readable.dcm", ExplicitVRLittleEndian)
    readable.chmod(0o644)
    path.chmod(0)

    def check() -> None:
        assert read_header(readable).sop_instance_uid
        _expect(path, "unreadable", "permission denied")

    as_unprivileged(check)


def test_fifo_is_not_dicom_and_does_not_block(tmp_path: Path) -> None:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    _expect(path, "not-dicom", "not a regular file")


def _run_with_env(value: str | None) -> Any:
    env = {k: v for k, v in os.environ.items() if k != "FASTSEND_PURE_PYTHON"}
    if value is not None:
        env["FASTSEND_PURE_PYTHON"] = value
    code = (
        "from dicom_fastsend.protocol import hotpath; "
        "print(hotpath.IMPLEMENTATION, hotpath.impl.__name__)"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()


def test_environment_selects_implementation() -> None:
    assert _run_with_env("1") == ["python", "dicom_fastsend._pdu_py"]
    assert _run_with_env(None) == ["cython", "dicom_fastsend._pdu"]
