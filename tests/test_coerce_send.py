"""--coerce against real receivers: Orthanc (its REST API gives back what it stored) and
DCMTK storescp (the files it writes), with both hot paths.

What arrives is compared with the source file element by element (pydicom, raw
value bytes): the coerced elements changed as the rules say, every other one and
the pixel data byte-identical.
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filereader import read_dataset
from pydicom.uid import JPEGBaseline8Bit, RLELossless

from dicom_fastsend.protocol.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)
from dicom_fastsend.synth import make_instance, synth_uid
from fastsend_cli import IMPLEMENTATIONS, fastsend, send_args
from invariants import SUMMARY_SCHEMA
from peers import Orthanc, PynetdicomSCP, StoreSCP, SynthArchive
from transcoded import BIG_ENDIAN_FILES, assert_arrived_unchanged, big_endian_file, write_ct

ISSUER = "HOSPITAL A"
NEW_ID = "MPI-000123"


def _rules(tmp_path: Path, old_id: str) -> Path:
    rules = tmp_path / "rules.csv"
    rules.write_text(
        f"keyword,match,replace\nPatientID,{old_id},{NEW_ID}\nIssuerOfPatientID,*,{ISSUER}\n"
    )
    return rules


def _add_jpeg(archive: SynthArchive) -> Path:
    """An encapsulated (JPEG Baseline) instance: the pixel data's fragments go as they are."""
    ds = make_instance(
        modality="SC", study_uid=synth_uid("jpeg-study"), series_uid=synth_uid("jpeg-series"),
        instance_number=1,
    )  # fmt: skip
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(range(256)) * 3 + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    path = archive.root / "jpeg" / "1.dcm"
    path.parent.mkdir(parents=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _raw_elements(ds: Dataset) -> dict[int, Any]:
    """Top-level elements: raw value bytes, or the decoded value for a sequence."""
    out: dict[int, Any] = {}
    for tag in list(ds.keys()):
        elem = ds.get_item(tag)
        out[int(tag)] = elem.value if isinstance(elem.value, bytes) else ds[tag].value
    return out


def _assert_coerced(original_path: Path, received: bytes, old_id: str) -> None:
    original = pydicom.dcmread(original_path)
    stored = pydicom.dcmread(io.BytesIO(received))
    assert stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    _assert_same_raw(original, stored, {0x00100020, 0x00100021})
    expected_id = NEW_ID if original.PatientID == old_id else original.PatientID
    assert stored.PatientID == expected_id
    assert stored.IssuerOfPatientID == ISSUER and 0x00100021 not in original


def _assert_same_raw(original: Dataset, stored: Dataset, changed: set[int]) -> None:
    """Every element but ``changed`` (pixel data included): the same raw value bytes."""
    before, after = _raw_elements(original), _raw_elements(stored)
    assert set(before) - changed == set(after) - changed
    for tag in set(before) - changed:
        assert after[tag] == before[tag], f"({tag >> 16:04X},{tag & 0xFFFF:04X}) differs"


def _summary(logs: Path) -> dict[str, Any]:
    [path] = logs.glob("fastsend_summary_*.json")
    summary: dict[str, Any] = json.loads(path.read_text())
    jsonschema.validate(summary, json.loads(SUMMARY_SCHEMA.read_text(encoding="utf-8")))
    return summary


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_orthanc_stores_coerced_ids_and_identical_everything_else(
    archive: SynthArchive, orthanc: Orthanc, implementation: str, tmp_path: Path
) -> None:
    jpeg = _add_jpeg(archive)
    files = [*archive.files, jpeg]
    old_id = pydicom.dcmread(archive.files[0]).PatientID
    matching = sum(pydicom.dcmread(p).PatientID == old_id for p in files)
    assert 0 < matching < len(files)
    logs, journal = tmp_path / "logs", tmp_path / "journal.sqlite"
    run = fastsend(
        *send_args("127.0.0.1", orthanc.dicom_port, orthanc.aet, str(archive.root)),
        "--coerce", str(_rules(tmp_path, old_id)), "--log-dir", str(logs),
        "--journal", str(journal),
        implementation=implementation,
    )  # fmt: skip
    assert run.returncode == 0, run.output + orthanc.output()
    assert f"{len(files)} coerced" in run.output
    for path in files:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        _assert_coerced(path, orthanc.instance_file(uid), old_id)
    # Every instance got IssuerOfPatientID: all coerced; the journal has the values.
    summary = _summary(logs)
    assert summary["counts"]["coerced"] == len(files)
    assert summary["configuration"]["coerce"].endswith("rules.csv")
    with sqlite3.connect(journal) as db:
        rows = db.execute("SELECT dir, name, keyword, original, new FROM coercions").fetchall()
    by_file: dict[str, dict[str, tuple[str | None, str | None]]] = {}
    for directory, name, keyword, original, new in rows:
        by_file.setdefault(str(Path(directory) / name), {})[keyword] = (original, new)
    assert len(by_file) == len(files)
    for path in files:
        changes = by_file[str(path)]
        assert changes["IssuerOfPatientID"] == (None, ISSUER)
        patient_id = pydicom.dcmread(path).PatientID
        if patient_id == old_id:
            assert changes["PatientID"] == (old_id, NEW_ID)
        else:
            assert "PatientID" not in changes


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_storescp_implicit_and_explicit_files_coerced(
    archive: SynthArchive, storescp: StoreSCP, implementation: str, tmp_path: Path
) -> None:
    syntaxes = set(archive.transfer_syntaxes.values())
    assert syntaxes == {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
    old_id = pydicom.dcmread(archive.files[-1]).PatientID
    run = fastsend(
        *send_args("127.0.0.1", storescp.port, storescp.aet, str(archive.root)),
        "--coerce", str(_rules(tmp_path, old_id)),
        implementation=implementation,
    )  # fmt: skip
    assert run.returncode == 0, run.output
    received = {pydicom.dcmread(p).SOPInstanceUID: p for p in storescp.files()}
    assert set(received) == archive.uids
    for path, uid in archive.sop_instance_uids.items():
        _assert_coerced(path, received[uid].read_bytes(), old_id)


def test_bad_rules_stop_before_anything_is_sent(
    archive: SynthArchive, storescp: StoreSCP, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.csv"
    rules.write_text("keyword,match,replace\nPatientID,*,A\nPatientID,*," + "x" * 70 + "\n")
    run = fastsend(
        *send_args("127.0.0.1", storescp.port, storescp.aet, str(archive.root)),
        "--coerce", str(rules),
    )  # fmt: skip
    assert run.returncode == 2, run.output
    assert "line 3" in run.output and "maximum length of 64" in run.output
    assert storescp.files() == []
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("keyword,match,replace\nPatientIdentifier,*,A\n")
    run = fastsend("scan", "-i", str(archive.root), "-r", "--coerce", str(unknown))
    assert run.returncode == 2 and "line 2: unknown keyword 'PatientIdentifier'" in run.output


def test_scan_shows_what_would_change(archive: SynthArchive, tmp_path: Path) -> None:
    old_id = pydicom.dcmread(archive.files[0]).PatientID
    matching = [p for p in archive.files if pydicom.dcmread(p).PatientID == old_id]
    rules = _rules(tmp_path, old_id)
    run = fastsend("scan", "-i", str(archive.root), "-r", "--coerce", str(rules), "--json")
    assert run.returncode == 0, run.output
    coercion = json.loads(run.stdout)["coercion"]
    assert coercion["instances"] == len(archive.files)
    per_rule = {r["keyword"]: r for r in coercion["per_rule"]}
    assert per_rule["PatientID"]["instances"] == len(matching)
    assert per_rule["PatientID"]["examples"][0]["original"] == old_id
    assert per_rule["PatientID"]["examples"][0]["new"] == NEW_ID
    assert per_rule["IssuerOfPatientID"]["instances"] == len(archive.files)
    text = fastsend("scan", "-i", str(archive.root), "-r", "--coerce", str(rules))
    assert f"{len(archive.files)} instance(s) would change" in text.stdout
    assert f"{old_id!r} -> {NEW_ID!r}" in text.stdout


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_converted_files_are_coerced_in_the_syntax_they_go_in(
    archive: SynthArchive,
    pynetdicom_scp_factory: Callable[..., PynetdicomSCP],
    implementation: str,
    tmp_path: Path,
) -> None:
    """Implicit VR LE only: explicit files converted on the fly, RLE decompressed, deflated
    inflated and big endian byte-swapped (--transcode if-needed), then coerced."""
    scp = pynetdicom_scp_factory(transfer_syntaxes=[IMPLICIT_VR_LITTLE_ENDIAN])
    extra = tmp_path / "extra"
    sources = [
        *archive.files,
        write_ct(extra / "rle.dcm", RLELossless, 1),
        write_ct(extra / "deflated.dcm", DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, 2),
    ]
    big = extra / BIG_ENDIAN_FILES[0]
    shutil.copy(big_endian_file(BIG_ENDIAN_FILES[0]), big)
    sources.append(big)
    rules = tmp_path / "rules.csv"
    rules.write_text(f"keyword,match,replace\nPatientID,*,{NEW_ID}\nIssuerOfPatientID,*,{ISSUER}\n")
    run = fastsend(
        *send_args(scp.host, scp.port, scp.ae_title, str(archive.root), str(extra)),
        "--coerce", str(rules), "--transcode", "if-needed",
        implementation=implementation,
    )  # fmt: skip
    assert run.returncode == 0, run.output
    records = {r.sop_instance_uid: r for r in scp.wait_for(len(sources))}
    for path in sources:
        record = records[pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID]
        assert record.transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
        assert record.dataset.PatientID == NEW_ID
        assert record.dataset.IssuerOfPatientID == ISSUER
        assert_arrived_unchanged(record.dataset, path, ignore={0x00100020, 0x00100021})


def test_deflated_file_not_converted_is_refused_by_name(
    pynetdicom_scp_factory: Callable[..., PynetdicomSCP], tmp_path: Path
) -> None:
    """A destination that takes deflate: coercing it would mean re-deflating; it fails, named."""
    scp = pynetdicom_scp_factory()
    path = write_ct(tmp_path / "in" / "deflated.dcm", DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, 3)
    rules = tmp_path / "rules.csv"
    rules.write_text("keyword,match,replace\nPatientID,*,X\n")
    run = fastsend(
        *send_args(scp.host, scp.port, scp.ae_title, str(path.parent)), "--coerce", str(rules)
    )
    assert run.returncode == 1, run.output
    assert "Deflated Explicit VR Little Endian data sets is not supported" in run.output
    assert scp.received == []


def test_big_endian_file_coerced_in_big_endian(
    pynetdicom_scp_factory: Callable[..., PynetdicomSCP], tmp_path: Path
) -> None:
    """Explicit VR Big Endian accepted as it is: the head re-encoded in big endian (PS3.5 7.3)."""
    scp = pynetdicom_scp_factory(transfer_syntaxes=[EXPLICIT_VR_BIG_ENDIAN])
    path = tmp_path / "in" / BIG_ENDIAN_FILES[0]
    path.parent.mkdir()
    shutil.copy(big_endian_file(BIG_ENDIAN_FILES[0]), path)
    rules = tmp_path / "rules.csv"
    rules.write_text(f"keyword,match,replace\nPatientID,*,{NEW_ID}\nRows,64,64\n")
    run = fastsend(
        *send_args(scp.host, scp.port, scp.ae_title, str(path.parent)), "--coerce", str(rules)
    )
    assert run.returncode == 0, run.output
    [record] = scp.wait_for(1)
    assert record.transfer_syntax == EXPLICIT_VR_BIG_ENDIAN
    stored = read_dataset(io.BytesIO(record.raw), is_implicit_VR=False, is_little_endian=False)
    assert stored.PatientID == NEW_ID
    # Rows: the rule writes the value it has, so nothing changes there.
    _assert_same_raw(pydicom.dcmread(path), stored, {0x00100020})


def test_a_large_coerced_file_keeps_the_memory_of_an_uncoerced_send(
    tmp_path: Path, storescp: StoreSCP
) -> None:
    """210 MB of multi-frame pixel data: only the head is rebuilt; the rest streams in windows
    from the mapped file, so the worker's peak RSS stays that of the plain send."""
    from dicom_fastsend.engine.scu import STREAM_WINDOW
    from dicom_fastsend.synth import write_multiframe
    from invariants import load_summary

    path = write_multiframe(tmp_path / "in" / "multiframe.dcm", frames=400)
    size = path.stat().st_size
    assert size > 200e6
    rules = tmp_path / "rules.csv"
    rules.write_text(f"keyword,match,replace\nPatientID,*,{NEW_ID}\nIssuerOfPatientID,*,{ISSUER}\n")

    def worker_peak_rss(logs: Path, *extra: str) -> int:
        run = fastsend(
            *send_args(storescp.host, storescp.port, storescp.aet, str(path)),
            "--log-dir", str(logs), *extra,
        )  # fmt: skip
        assert run.returncode == 0, run.output + storescp.output()
        [worker] = load_summary(logs)["workers"]
        return int(worker["peak_rss_bytes"])

    plain = worker_peak_rss(tmp_path / "logs-plain")
    for received in storescp.files():
        received.unlink()
    coerced = worker_peak_rss(tmp_path / "logs-coerced", "--coerce", str(rules))
    [received] = storescp.files()
    original = pydicom.dcmread(path, stop_before_pixels=True)
    stored = pydicom.dcmread(received, stop_before_pixels=True)
    assert stored.PatientID == NEW_ID and stored.IssuerOfPatientID == ISSUER
    _assert_same_raw(original, stored, {0x00100020, 0x00100021})
    # The Pixel Data element, its 12-byte header included (PS3.5 7.1.2), ends both files.
    pixels = 12 + int(original.NumberOfFrames) * original.Rows * original.Columns * 2
    with open(path, "rb") as a, open(received, "rb") as b:
        a.seek(-pixels, 2)
        b.seek(-pixels, 2)
        while chunk := a.read(1 << 24):
            assert b.read(1 << 24) == chunk
    # The pixel data was never held: about one window besides the plain send's peak.
    assert coerced - plain < STREAM_WINDOW, f"coerced {coerced}, plain {plain}, file {size}"
    assert coerced < size / 4


def test_pipelined_stores_are_coerced_and_journaled(archive: SynthArchive, tmp_path: Path) -> None:
    """--max-ops: each response finds its own file's changes (by Message ID)."""
    import dicom_fastsend as fs
    from dicom_fastsend.engine.inventory import Inventory
    from dicom_fastsend.io.coerce import load_rules
    from dicom_fastsend.sink import Sink

    old_id = pydicom.dcmread(archive.files[0]).PatientID
    coercion = load_rules(_rules(tmp_path, old_id))
    received_dir = tmp_path / "received"
    received_dir.mkdir()
    with Sink(ae_title="SINK", response_delay=0.02, output_dir=received_dir) as sink:
        peer = fs.PeerConfig(host="127.0.0.1", port=sink.port, called_ae_title="SINK")
        config = fs.SendConfig(
            peer=peer, inputs=(archive.root,), recursive=True, max_ops=8,
            log_dir=tmp_path / "logs", coerce=coercion,
        )  # fmt: skip
        summary = fs.send(config)
        assert sink.stats.max_pipelined > 1
    assert summary.exit_code == 0, [(r.path, r.reason) for r in summary.noted]
    assert summary.coerced == len(archive.files)
    received = {
        pydicom.dcmread(p).SOPInstanceUID: p for p in received_dir.rglob("*") if p.is_file()
    }
    assert config.journal is not None
    journal = Inventory(config.journal, fs.config.destination_key(peer), "check")
    try:
        for path, uid in archive.sop_instance_uids.items():
            _assert_coerced(path, received[uid].read_bytes(), old_id)
            original = pydicom.dcmread(path).PatientID
            expected = {"IssuerOfPatientID": (None, ISSUER)}
            if original == old_id:
                expected["PatientID"] = (old_id, NEW_ID)
            assert journal.coercions(str(path)) == expected
    finally:
        journal.close()


def test_non_ascii_value_fails_a_file_with_no_character_set_for_it(
    storescp: StoreSCP, tmp_path: Path
) -> None:
    """PS3.5 6.1.2.3: a data set without (0008,0005) holds ASCII only. 'Müller' fails that
    file, named, instead of arriving as undeclared Latin-1; a Latin-1 file gets it."""
    inputs = tmp_path / "in"
    paths: dict[str, Path] = {}
    for number, charset in enumerate([None, "ISO_IR 100"], start=1):
        ds = make_instance(
            study_uid=synth_uid("charset-study"), series_uid=synth_uid("charset-series"),
            instance_number=number, transfer_syntax=IMPLICIT_VR_LITTLE_ENDIAN,
        )  # fmt: skip
        if charset is None:
            del ds.SpecificCharacterSet
        path = inputs / f"{number}.dcm"
        path.parent.mkdir(exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths[charset or "none"] = path
    rules = tmp_path / "rules.csv"
    rules.write_text("keyword,match,replace\nPatientName,*,Müller^Hans\n", encoding="utf-8")
    run = fastsend(
        *send_args("127.0.0.1", storescp.port, storescp.aet, str(inputs)), "--coerce", str(rules)
    )
    assert run.returncode == 1, run.output
    assert str(paths["none"]) in run.output
    assert "declares no Specific Character Set (0008,0005) that can hold it" in run.output
    [received] = storescp.files()
    stored = pydicom.dcmread(received)
    assert stored.SOPInstanceUID == pydicom.dcmread(paths["ISO_IR 100"]).SOPInstanceUID
    assert stored.get_item(0x00100010).value == "Müller^Hans".encode("latin-1") + b" "
    scan = fastsend("scan", "-i", str(inputs), "-r", "--coerce", str(rules), "--json")
    refused = json.loads(scan.stdout)["coercion"]["refused"]
    assert [r["path"] for r in refused] == [str(paths["none"])], scan.output
    assert "declares no Specific Character Set" in refused[0]["reason"]


def test_a_rerun_with_other_rules_sends_again(
    archive: SynthArchive, storescp: StoreSCP, tmp_path: Path
) -> None:
    """The journal keeps the rules each instance was stored under: the same rules skip it,
    other rules (or none) send it again, and the coercions table says what it holds now."""
    journal = tmp_path / "journal.sqlite"
    count = len(archive.files)
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    first.write_text("keyword,match,replace\nPatientID,*,ID-ONE\n")
    second.write_text("keyword,match,replace\nIssuerOfPatientID,*,B\n(0010,0020),*,ID-TWO\n")

    def send(name: str, *extra: str) -> dict[str, Any]:
        for received in storescp.files():
            received.unlink()
        logs = tmp_path / name
        run = fastsend(
            *send_args("127.0.0.1", storescp.port, storescp.aet, str(archive.root)),
            "--journal", str(journal), "--log-dir", str(logs), *extra,
        )  # fmt: skip
        assert run.returncode in (0, 4), run.output
        counts: dict[str, Any] = _summary(logs)["counts"]
        return counts

    def scan(*extra: str) -> int:
        run = fastsend(
            "scan", "-i", str(archive.root), "-r", "-a", storescp.aet, "-H", "127.0.0.1",
            "-p", str(storescp.port), "--journal", str(journal), "--json", *extra,
        )  # fmt: skip
        return int(json.loads(run.stdout)["already_stored"])

    def journalled() -> set[tuple[str, str | None]]:
        with sqlite3.connect(journal) as db:
            return set(db.execute("SELECT keyword, new FROM coercions").fetchall())

    assert send("one", "--coerce", str(first))["stored"] == count
    assert journalled() == {("PatientID", "ID-ONE")}
    again = send("again", "--coerce", str(first))
    assert (again["stored"], again["already_stored"]) == (0, count)
    assert storescp.files() == []
    assert scan("--coerce", str(first)) == count and scan("--coerce", str(second)) == 0
    assert scan() == 0
    assert send("two", "--coerce", str(second))["stored"] == count
    assert {pydicom.dcmread(p).PatientID for p in storescp.files()} == {"ID-TWO"}
    assert journalled() == {("PatientID", "ID-TWO"), ("IssuerOfPatientID", "B")}
    # Sent without --coerce: the originals go again, and nothing coerced is left recorded.
    plain = send("plain")
    assert (plain["stored"], plain["already_stored"]) == (count, 0)
    received = {pydicom.dcmread(p).SOPInstanceUID: p for p in storescp.files()}
    for path, uid in archive.sop_instance_uids.items():
        assert pydicom.dcmread(received[uid]).PatientID == pydicom.dcmread(path).PatientID
    assert journalled() == set()
    assert send("plain-again")["already_stored"] == count
