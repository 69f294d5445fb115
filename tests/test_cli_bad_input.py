"""Bad input named clearly, the rest still sent; exit codes 0/1/2/3."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dicom_fastsend import __version__
from fastsend_cli import fastsend, send_args
from peers import LOOPBACK, PynetdicomSCP, SynthArchive, free_port


@pytest.fixture
def messy_archive(archive: SynthArchive, tmp_path: Path) -> dict[str, Path]:
    """The synthetic archive plus one file of each kind of bad input."""
    bad = archive.root / "bad"
    bad.mkdir()
    good = archive.files[0]
    data = good.read_bytes()
    paths = {
        "not-dicom": bad / "notes.txt",
        "empty": bad / "empty.dcm",
        "truncated": bad / "truncated.dcm",
        "no-uid": bad / "no_uid.dcm",
    }
    paths["not-dicom"].write_text("this is not a DICOM file\n")
    paths["empty"].write_bytes(b"")
    # Cut inside the pixel data: the header still parses, the data set does not end.
    paths["truncated"].write_bytes(data[: len(data) - 100])
    import pydicom

    ds = pydicom.dcmread(good)
    del ds.SOPInstanceUID
    del ds.file_meta.MediaStorageSOPInstanceUID
    ds.save_as(paths["no-uid"], enforce_file_format=False)
    return paths


def test_bad_files_are_named_and_the_rest_is_sent(
    archive: SynthArchive, messy_archive: dict[str, Path], pynetdicom_scp: PynetdicomSCP
) -> None:
    missing = archive.root.parent / "does-not-exist"
    run = fastsend(
        *send_args(
            pynetdicom_scp.host,
            pynetdicom_scp.port,
            pynetdicom_scp.ae_title,
            str(archive.root),
            str(missing),
        )
    )
    assert run.returncode == 1, run.output  # some failed
    assert {r.sop_instance_uid for r in pynetdicom_scp.records()} == archive.uids
    lines = run.stderr.splitlines()

    def line_for(path: Path) -> str:
        found = [line for line in lines if str(path) in line]
        assert len(found) == 1, f"{path} not reported once:\n{run.stderr}"
        return found[0]

    assert "no such file or directory" in line_for(missing)
    assert line_for(messy_archive["not-dicom"]).startswith("SKIPPED")
    assert line_for(messy_archive["empty"]).startswith("SKIPPED")
    assert "empty" in line_for(messy_archive["empty"])
    truncated = line_for(messy_archive["truncated"])
    assert truncated.startswith("FAILED") and "(7fe0,0010)" in truncated
    no_uid = line_for(messy_archive["no-uid"])
    assert no_uid.startswith("FAILED") and "(0008,0018)" in no_uid
    n = len(archive.files)
    assert f"{n + 5} files: {n} stored, 0 stored with warning, 3 failed, 2 skipped" in run.stderr


def test_connection_refused_exits_3() -> None:
    port = free_port()  # nothing listens there
    run = fastsend("echo", "-a", "NOBODY", "-H", LOOPBACK, "-p", str(port))
    assert run.returncode == 3
    assert f"cannot connect to {LOOPBACK}:{port}" in run.stderr


def test_connection_refused_on_send_exits_3(archive: SynthArchive) -> None:
    port = free_port()
    run = fastsend(*send_args(LOOPBACK, port, "NOBODY", str(archive.root)))
    assert run.returncode == 3, run.output
    assert f"cannot connect to {LOOPBACK}:{port}" in run.stderr
    # One message for the association, not one per file.
    assert run.stderr.count("cannot connect") == 1
    assert f"{len(archive.files)} failed" in run.stderr


def test_association_rejected_is_explained_and_exits_3(
    archive: SynthArchive, pynetdicom_scp_factory: Callable[..., PynetdicomSCP]
) -> None:
    strict = pynetdicom_scp_factory(ae_title="STRICT", require_called_aet=True)
    run = fastsend(*send_args(LOOPBACK, strict.port, "WRONG_AET", str(archive.root)))
    assert run.returncode == 3, run.output
    assert "rejected" in run.stderr
    # result, source and reason in the standard's words (PS3.8 9.3.4)
    assert "rejected-permanent" in run.stderr
    assert "DICOM UL service-user" in run.stderr
    assert "called-AE-title-not-recognized" in run.stderr
    assert "WRONG_AET" in run.stderr


def test_usage_error_exits_2() -> None:
    run = fastsend("send", "-i", ".")
    assert run.returncode == 2
    assert "Missing option" in run.stderr


def test_invalid_ae_title_is_a_usage_error() -> None:
    run = fastsend("echo", "-a", "THIS_TITLE_IS_TOO_LONG", "-H", LOOPBACK, "-p", "104")
    assert run.returncode == 2
    assert "AE title" in run.stderr


def test_version_names_the_hot_path() -> None:
    assert __version__ in fastsend("-V").stdout
    assert "hot path: python" in fastsend("-V", implementation="python").stdout


def test_demo_sends_synthetic_studies_to_its_own_sink() -> None:
    run = fastsend("demo", "--studies", "2", "--instances", "3", "--size", "16")
    assert run.returncode == 0, run.output
    assert "6 files: 6 stored" in run.stderr
    assert "the sink received 6 instances" in run.stderr


def test_sink_on_a_port_in_use_says_so_without_a_traceback() -> None:
    import socket

    with socket.create_server((LOOPBACK, 0)) as taken:
        port = taken.getsockname()[1]
        run = fastsend("sink", "--port", str(port))
    assert run.returncode == 1, run.output
    assert "Traceback" not in run.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in run.stderr
    assert "choose another --port" in run.stderr


def test_dicom_file_given_directly_without_recursion(
    archive: SynthArchive, pynetdicom_scp: PynetdicomSCP
) -> None:
    path = archive.files[0]
    run = fastsend(
        "send",
        "-i",
        str(path),
        "-a",
        pynetdicom_scp.ae_title,
        "-H",
        pynetdicom_scp.host,
        "-p",
        str(pynetdicom_scp.port),
    )
    assert run.returncode == 0, run.output
    assert [r.sop_instance_uid for r in pynetdicom_scp.records()] == [
        archive.sop_instance_uids[path]
    ]


def test_sop_class_the_peer_refuses_fails_with_its_class_and_syntax(
    archive: SynthArchive, pynetdicom_scp: PynetdicomSCP
) -> None:
    import pydicom

    private_class = "1.2.826.0.1.3680043.10.1447.99.1"
    odd = archive.root / "private.dcm"
    ds = pydicom.dcmread(archive.files[0])
    ds.SOPClassUID = private_class
    ds.file_meta.MediaStorageSOPClassUID = private_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = private_class + ".7"
    ds.save_as(odd, enforce_file_format=True)
    run = fastsend(
        *send_args(
            pynetdicom_scp.host, pynetdicom_scp.port, pynetdicom_scp.ae_title, str(archive.root)
        )
    )
    assert run.returncode == 1, run.output
    [line] = [line for line in run.stderr.splitlines() if str(odd) in line]
    assert "no accepted presentation context" in line
    assert private_class in line and "Explicit VR Little Endian" in line
    assert "abstract-syntax-not-supported" in line
    assert {r.sop_instance_uid for r in pynetdicom_scp.records()} == archive.uids


def test_hostile_file_tree_is_reported_file_by_file(
    archive: SynthArchive, pynetdicom_scp: PynetdicomSCP, tmp_path: Path
) -> None:
    """Issue 4's bad inputs in one run: none stops it, each has its reason."""
    import os

    import pydicom
    from pydicom.dataset import FileMetaDataset

    bad = archive.root / "hostile"
    bad.mkdir()
    os.symlink(archive.root, bad / "loop")  # a directory link back up: must not recurse forever
    os.symlink(bad / "gone.dcm", bad / "broken.dcm")  # a dangling link
    os.mkfifo(bad / "pipe.dcm")  # reading it would block
    (bad / "preamble.dcm").write_bytes(bytes(128) + b"DICM")
    data = archive.files[0].read_bytes()
    (bad / "short.dcm").write_bytes(data[: len(data) // 2])  # pixel data says more than remains
    dicomdir = pydicom.Dataset()
    dicomdir.file_meta = FileMetaDataset()
    dicomdir.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    dicomdir.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    dicomdir.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    dicomdir.FileSetID = "TEST"
    dicomdir.save_as(bad / "DICOMDIR", enforce_file_format=True)

    run = fastsend(
        *send_args(
            pynetdicom_scp.host, pynetdicom_scp.port, pynetdicom_scp.ae_title, str(archive.root)
        ),
        timeout=60,
    )
    assert run.returncode == 1, run.output
    assert {r.sop_instance_uid for r in pynetdicom_scp.records()} == archive.uids
    lines = run.stderr.splitlines()

    def line_for(name: str) -> str:
        found = [line for line in lines if str(bad / name) + ":" in line]
        assert len(found) == 1, f"{name} not reported once:\n{run.stderr}"
        return found[0]

    assert line_for("broken.dcm").startswith("FAILED")
    assert line_for("pipe.dcm").startswith("SKIPPED")
    assert line_for("preamble.dcm").startswith(("SKIPPED", "FAILED"))
    assert "(7fe0,0010)" in line_for("short.dcm")
    assert "DICOMDIR" in line_for("DICOMDIR") and line_for("DICOMDIR").startswith("SKIPPED")
    # The link loop was not followed: each archive file was found once, not again under loop/.
    assert str(bad / "loop") not in run.stderr
    n = len(archive.files)
    assert f"{n + 5} files: {n} stored" in run.stderr
