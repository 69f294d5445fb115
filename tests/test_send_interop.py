"""`fastsend send` against real, independent peers started on loopback.

DCMTK storescp and Orthanc are other people's code: if fastsend's PDUs,
command sets or streamed data sets were wrong, they would refuse or store
something else. Each test runs with both hot-path implementations.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicom_fastsend.io.header import read_header
from dicom_fastsend.protocol.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from fastsend_cli import IMPLEMENTATIONS, fastsend, send_args
from peers import Orthanc, PynetdicomSCP, StoreSCP, SynthArchive, dataset_bytes
from test_convert import assert_same_values


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_storescp_receives_every_dataset_byte_for_byte(
    archive: SynthArchive, storescp: StoreSCP, implementation: str
) -> None:
    run = fastsend(
        *send_args(storescp.host, storescp.port, storescp.aet, str(archive.root)),
        implementation=implementation,
    )
    assert run.returncode == 0, run.output + storescp.output()
    sent = {uid: dataset_bytes(path) for path, uid in archive.sop_instance_uids.items()}
    received = {read_header(p).sop_instance_uid: dataset_bytes(p) for p in storescp.files()}
    assert received.keys() == sent.keys()
    for uid, data in sent.items():
        assert received[uid] == data, f"{uid} differs after the trip through storescp"
    assert f"{len(sent)} stored" in run.stderr
    ct, mr = (sum(1 for p in archive.files if m in str(p)) for m in ("_CT_", "_MR_"))
    assert f"SOP classes sent: CT Image Storage {ct}, MR Image Storage {mr}" in run.stderr


def test_storescp_with_small_max_pdu_and_implicit_only(
    archive: SynthArchive, storescp_factory: Callable[..., StoreSCP]
) -> None:
    # +xi: storescp proposes nothing, it *accepts* only Implicit VR LE; with a
    # 4096-byte maximum PDU every data set goes out in many fragments.
    peer = storescp_factory(max_pdu=4096, extra_args=["+xi"])
    run = fastsend(*send_args(peer.host, peer.port, peer.aet, str(archive.root)))
    assert run.returncode == 0, run.output + peer.output()
    assert peer.sop_instance_uids() == archive.uids
    for path in peer.files():
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == IMPLICIT_VR_LITTLE_ENDIAN
        original = pydicom.dcmread(
            next(p for p, uid in archive.sop_instance_uids.items() if uid == ds.SOPInstanceUID)
        )
        assert_same_values(original, ds)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_orthanc_lists_every_instance(
    archive: SynthArchive, orthanc: Orthanc, implementation: str
) -> None:
    run = fastsend(
        *send_args("127.0.0.1", orthanc.dicom_port, orthanc.aet, str(archive.root)),
        implementation=implementation,
    )
    assert run.returncode == 0, run.output + orthanc.output()
    assert orthanc.sop_instance_uids() == archive.uids


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_pynetdicom_implicit_only_receives_equal_values(
    archive: SynthArchive,
    pynetdicom_scp_factory: Callable[..., PynetdicomSCP],
    implementation: str,
) -> None:
    scp = pynetdicom_scp_factory(transfer_syntaxes=[IMPLICIT_VR_LITTLE_ENDIAN])
    run = fastsend(
        *send_args(scp.host, scp.port, scp.ae_title, str(archive.root)),
        implementation=implementation,
    )
    assert run.returncode == 0, run.output
    records = scp.wait_for(len(archive.files))
    assert {r.sop_instance_uid for r in records} == archive.uids
    by_uid = {uid: path for path, uid in archive.sop_instance_uids.items()}
    converted = 0
    for record in records:
        assert record.transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
        path = by_uid[record.sop_instance_uid]
        original = pydicom.dcmread(path)
        assert_same_values(original, record.dataset)
        converted += archive.transfer_syntaxes[path] == EXPLICIT_VR_LITTLE_ENDIAN
    assert converted > 0, "the archive should hold Explicit VR files that needed conversion"


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_pynetdicom_max_pdu_4096_is_respected(
    tmp_path: Path,
    pynetdicom_scp_factory: Callable[..., PynetdicomSCP],
    implementation: str,
) -> None:
    from peers import make_archive

    archive = make_archive(
        tmp_path / "a", explicit_studies=1, implicit_studies=1, rows=128, columns=128
    )
    scp = pynetdicom_scp_factory(max_pdu=4096)
    run = fastsend(
        *send_args(scp.host, scp.port, scp.ae_title, str(archive.root)),
        implementation=implementation,
    )
    assert run.returncode == 0, run.output
    records = scp.wait_for(len(archive.files))
    by_uid = {uid: path for path, uid in archive.sop_instance_uids.items()}
    for record in records:
        assert record.max_pdu == 4096
        # pynetdicom itself rejects (aborts) a PDU longer than it announced,
        # so arriving intact means every fragment respected 4096.
        assert record.raw == dataset_bytes(by_uid[record.sop_instance_uid])


def test_echo_against_storescp(storescp: StoreSCP) -> None:
    run = fastsend("echo", "-a", storescp.aet, "-H", storescp.host, "-p", str(storescp.port))
    assert run.returncode == 0, run.output
    assert "0x0000 Success" in run.stdout


STATUS_CASES: list[tuple[int, int, str]] = [
    (0xB000, 0, "stored with warning 0xB000"),
    (0xB007, 0, "stored with warning 0xB007"),
    (0xA700, 1, "0xA700 Refused: Out of Resources"),
    (0xC000, 1, "0xC000 Error: Cannot understand"),
]


@pytest.mark.parametrize(("status", "exit_code", "message"), STATUS_CASES)
def test_statuses_are_reported_per_file(
    archive: SynthArchive,
    pynetdicom_scp_factory: Callable[..., PynetdicomSCP],
    status: int,
    exit_code: int,
    message: str,
) -> None:
    # Only one chosen instance gets the status; the others succeed.
    target = sorted(archive.uids)[0]

    def answer(ds: Any) -> int:
        return status if ds.SOPInstanceUID == target else 0x0000

    scp = pynetdicom_scp_factory(status=answer)
    run = fastsend(
        *send_args(scp.host, scp.port, scp.ae_title, str(archive.root)), "--retry-delay", "0.01"
    )
    assert run.returncode == exit_code, run.output
    target_path = next(p for p, uid in archive.sop_instance_uids.items() if uid == target)
    lines = [line for line in run.stderr.splitlines() if message in line]
    assert len(lines) == 1 and str(target_path) in lines[0], run.stderr
    # The run went on; A7xx (out of resources) was retried, the others were not.
    retried = 3 if status == 0xA700 else 0
    assert len(scp.records()) == len(archive.files) + retried


def test_a_large_file_streams_in_windows_byte_for_byte_with_bounded_memory(
    tmp_path: Path, archive: SynthArchive, storescp: StoreSCP
) -> None:
    from dicom_fastsend.engine.scu import STREAM_WINDOW
    from dicom_fastsend.synth import write_multiframe
    from invariants import load_summary

    def worker_peak_rss(path: Path, logs: Path) -> int:
        run = fastsend(
            *send_args(storescp.host, storescp.port, storescp.aet, str(path)),
            "--log-dir", str(logs),
        )  # fmt: skip
        assert run.returncode == 0, run.output + storescp.output()
        [worker] = load_summary(logs)["workers"]
        return int(worker["peak_rss_bytes"])

    # 136 frames of 512x512x16 bit: 68 MB, four whole windows and part of a fifth.
    path = write_multiframe(tmp_path / "multiframe.dcm", frames=136)
    size = path.stat().st_size
    assert size > 4 * STREAM_WINDOW
    peak = worker_peak_rss(path, tmp_path / "logs")
    [received] = storescp.files()
    assert dataset_bytes(received) == dataset_bytes(path)
    # Without windows the whole file stays mapped, counted in the worker's RSS,
    # until its last byte is sent; with them, about one window does.
    base = worker_peak_rss(archive.files[0], tmp_path / "logs-base")
    assert peak - base < 2 * STREAM_WINDOW, f"peak RSS {peak} for {size} bytes, {base} for a few"
