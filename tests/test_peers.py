"""The peer fixtures work, proven with independent clients (DCMTK, pynetdicom).

These guard the fixtures themselves: if one of these fails, a failure in a
fastsend test that uses the same peer says nothing about fastsend.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_fastsend.protocol.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from peers import (
    Orthanc,
    PeerStartError,
    PynetdicomSCP,
    StoreSCP,
    SynthArchive,
    port_accepts,
    require_dcmtk,
    run_dcmtk,
    start_storescp,
)


def test_archive_fixture(archive: SynthArchive) -> None:
    assert len(archive.files) == 12
    assert len(archive.uids) == 12
    assert sorted(archive.transfer_syntaxes.values()).count(IMPLICIT_VR_LITTLE_ENDIAN) == 3
    assert len(set(archive.study_uids.values())) == 4
    for path in archive.files:
        assert path.is_file() and path.is_relative_to(archive.root)


def test_archive_is_deterministic(tmp_path: Path, archive: SynthArchive) -> None:
    from peers import make_archive

    again = make_archive(tmp_path / "again")
    assert again.uids == archive.uids
    first = sorted(p.relative_to(archive.root) for p in archive.files)
    assert first == sorted(p.relative_to(again.root) for p in again.files)
    for rel in first:
        assert (archive.root / rel).read_bytes() == (again.root / rel).read_bytes()


def test_storescp_receives_archive(storescp: StoreSCP, archive: SynthArchive) -> None:
    run_dcmtk(
        "storescu",
        "-aet",
        "TESTSCU",
        "-aec",
        storescp.aet,
        "+sd",
        "+r",
        storescp.host,
        str(storescp.port),
        str(archive.root),
    )
    assert len(storescp.files()) == len(archive.files), storescp.output()
    assert storescp.sop_instance_uids() == archive.uids
    # storescp keeps the syntax it accepted; values arrive intact.
    by_uid = {uid: path for path, uid in archive.sop_instance_uids.items()}
    for stored in storescp.files():
        ds = pydicom.dcmread(stored)
        original = pydicom.dcmread(by_uid[str(ds.SOPInstanceUID)])
        assert ds.PixelData == original.PixelData
        assert ds.PatientName == original.PatientName


def test_storescp_options(storescp_factory: Callable[..., StoreSCP], archive: SynthArchive) -> None:
    # --fork, --max-pdu, TCP_NODELAY and +xi (prefer Implicit VR LE) all at once.
    scp = storescp_factory(
        aet="FORKSCP", max_pdu=4096, fork=True, tcp_nodelay=True, extra_args=["+xi"]
    )
    assert "--fork" in scp.command and "4096" in scp.command and "+xi" in scp.command
    one = next(p for p, ts in archive.transfer_syntaxes.items() if ts == EXPLICIT_VR_LITTLE_ENDIAN)
    # storescu proposes Explicit and Implicit for the file; +xi makes
    # storescp pick Implicit, so the stored file says so.
    assert scp.process.poll() is None, scp.output()
    run_dcmtk("storescu", "-aec", "FORKSCP", "-xe", scp.host, str(scp.port), str(one))
    (stored,) = scp.files()
    assert pydicom.dcmread(stored).file_meta.TransferSyntaxUID == IMPLICIT_VR_LITTLE_ENDIAN
    scp.stop()
    assert scp.process.poll() is not None
    assert not port_accepts(scp.port)


def test_storescp_start_failure_shows_output(tmp_path: Path) -> None:
    require_dcmtk("storescp")  # a missing DCMTK is a missing peer, not the error under test
    with pytest.raises(PeerStartError, match="storescp exited") as info:
        start_storescp(tmp_path / "out", extra_args=["--no-such-option"])
    assert "no-such-option" in str(info.value)


def test_orthanc_receives_archive(orthanc: Orthanc, archive: SynthArchive) -> None:
    assert orthanc.sop_instance_uids() == set()
    run_dcmtk(
        "dcmsend",
        "-aet",
        "TESTSCU",
        "-aec",
        orthanc.aet,
        "--scan-directories",
        "--recurse",
        orthanc.host,
        str(orthanc.dicom_port),
        str(archive.root),
    )
    assert orthanc.sop_instance_uids() == archive.uids, orthanc.output()
    assert orthanc.statistics()["CountInstances"] == len(archive.files)
    path, uid = next(iter(archive.sop_instance_uids.items()))
    stored = pydicom.dcmread(io.BytesIO(orthanc.instance_file(uid)))
    original = pydicom.dcmread(path)
    assert stored.SOPInstanceUID == uid
    assert stored.PixelData == original.PixelData
    assert stored.ProcedureCodeSequence[0].CodeValue == original.ProcedureCodeSequence[0].CodeValue


def test_two_orthancs_are_independent(orthanc_factory: Callable[..., Orthanc]) -> None:
    a, b = orthanc_factory(), orthanc_factory()
    assert {a.dicom_port, a.http_port}.isdisjoint({b.dicom_port, b.http_port})
    assert a.workdir != b.workdir
    a.stop()
    assert not port_accepts(a.http_port)
    assert b.statistics()["CountInstances"] == 0


def test_pynetdicom_scp_implicit_only_small_pdu(
    pynetdicom_scp_factory: Callable[..., PynetdicomSCP], archive: SynthArchive
) -> None:
    from pynetdicom import AE, StoragePresentationContexts

    scp = pynetdicom_scp_factory(
        ae_title="IMPLONLY", transfer_syntaxes=[IMPLICIT_VR_LITTLE_ENDIAN], max_pdu=4096
    )
    ae = AE(ae_title="PYSCU")
    ae.maximum_pdu_size = 0
    # Propose both LE syntaxes so that only the SCP's choice limits them.
    for context in StoragePresentationContexts[:100]:
        ae.add_requested_context(
            context.abstract_syntax, [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN]
        )
    assoc = ae.associate(scp.host, scp.port, ae_title="IMPLONLY")
    assert assoc.is_established
    assert assoc.acceptor.maximum_length == 4096
    statuses = []
    try:
        for path in archive.files:
            ds = pydicom.dcmread(path)
            statuses.append(int(assoc.send_c_store(ds).Status))
    finally:
        assoc.release()
    assert statuses == [0] * len(archive.files)
    records = scp.wait_for(len(archive.files))
    assert [r.sop_instance_uid for r in records] == [
        archive.sop_instance_uids[p] for p in archive.files
    ]
    for path, record in zip(archive.files, records, strict=True):
        original = pydicom.dcmread(path)
        assert record.transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
        assert record.max_pdu == 4096
        assert record.calling_aet == "PYSCU" and record.called_aet == "IMPLONLY"
        assert record.dataset.SOPInstanceUID == original.SOPInstanceUID
        assert record.dataset.PixelData == original.PixelData
        # The raw bytes are the data set as sent, so they decode on their own.
        fp = pydicom.filebase.DicomBytesIO(record.raw)
        decoded = pydicom.filereader.read_dataset(fp, True, True)
        assert decoded.SOPInstanceUID == original.SOPInstanceUID
        assert len(record.raw) > len(original.PixelData)
    assert scp.associations == 1


def test_pynetdicom_scp_status_callable(pynetdicom_scp: PynetdicomSCP) -> None:
    from pynetdicom import AE

    def status(ds: Dataset) -> int:
        return 0xA700 if ds.InstanceNumber == 2 else 0xB000

    pynetdicom_scp.status = status
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", EXPLICIT_VR_LITTLE_ENDIAN)
    ae.add_requested_context("1.2.840.10008.1.1")
    with PynetdicomSCP(status=0xC000) as other:
        assert other.port != pynetdicom_scp.port
    from dicom_fastsend import synth

    assoc = ae.associate(pynetdicom_scp.host, pynetdicom_scp.port, ae_title="ANY")
    try:
        assert int(assoc.send_c_echo().Status) == 0
        got = []
        for number in (1, 2):
            ds = synth.make_instance(
                study_uid="1.2.3", series_uid="1.2.3.4", instance_number=number
            )
            got.append(int(assoc.send_c_store(ds).Status))
    finally:
        assoc.release()
    assert got == [0xB000, 0xA700]
    assert [r.status for r in pynetdicom_scp.records()] == [0xB000, 0xA700]
