"""`fastsend scan` reports what a send would do, without a peer."""

from __future__ import annotations

import json

from dicom_fastsend.protocol.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from fastsend_cli import fastsend
from peers import SynthArchive


def test_scan_json_describes_the_archive(archive: SynthArchive) -> None:
    (archive.root / "notes.txt").write_text("not DICOM")
    run = fastsend("scan", "-i", str(archive.root), "-r", "--json")
    assert run.returncode == 0, run.output
    report = json.loads(run.stdout)
    assert report["files"] == len(archive.files)
    assert report["total_bytes"] == sum(p.stat().st_size for p in archive.files)
    assert report["studies"] == len(set(archive.study_uids.values()))
    syntaxes = {t["uid"]: t["files"] for t in report["transfer_syntaxes"]}
    expected = list(archive.transfer_syntaxes.values())
    assert syntaxes == {
        EXPLICIT_VR_LITTLE_ENDIAN: expected.count(EXPLICIT_VR_LITTLE_ENDIAN),
        IMPLICIT_VR_LITTLE_ENDIAN: expected.count(IMPLICIT_VR_LITTLE_ENDIAN),
    }
    assert {c["name"] for c in report["sop_classes"]} == {"CT Image Storage", "MR Image Storage"}
    assert [s["path"] for s in report["skipped"]] == [str(archive.root / "notes.txt")]
    assert report["associations_needed"] == 1


def test_scan_lists_unreadable_files_and_exits_1(archive: SynthArchive) -> None:
    broken = archive.root / "broken.dcm"
    broken.write_bytes(archive.files[0].read_bytes()[:-50])
    run = fastsend("scan", "-i", str(archive.root), "-r")
    assert run.returncode == 1
    assert f"{len(archive.files)} DICOM files" in run.stdout
    assert "1 unreadable" in run.stdout and str(broken) in run.stdout
