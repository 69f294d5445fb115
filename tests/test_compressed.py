"""Compressed and other transfer syntaxes are sent as they are when the peer accepts them,
and converted to uncompressed Little Endian with --transcode if-needed when it does not.

The files come from pydicom's own test data (installed with pydicom): one per
transfer syntax, with distinct SOP Instance UIDs; the issue 13 archive adds
RLE Lossless and deflated files that pydicom writes (tests/transcoded.py).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import RLELossless

from dicom_fastsend import synth
from dicom_fastsend.io.header import HeaderError, read_header
from dicom_fastsend.protocol.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    UNCOMPRESSED_LITTLE_ENDIAN,
    describe,
)
from dicom_fastsend.synth import synth_uid
from fastsend_cli import fastsend
from peers import PynetdicomSCP, StoreSCP, dataset_bytes
from transcoded import BIG_ENDIAN_FILES, assert_arrived_unchanged, big_endian_file, write_ct


def one_file_per_syntax(target: Path) -> dict[str, Path]:
    """Copy one pydicom test file per non-LE-uncompressed transfer syntax into ``target``."""
    base = Path(os.path.dirname(get_testdata_file("CT_small.dcm") or ""))
    target.mkdir(parents=True, exist_ok=True)
    chosen: dict[str, Path] = {}
    uids: set[str] = set()
    for path in sorted(base.rglob("*.dcm")):
        try:
            info = read_header(path)
        except HeaderError:
            continue
        syntax = info.transfer_syntax_uid
        if syntax in UNCOMPRESSED_LITTLE_ENDIAN or syntax in chosen:
            continue
        if info.sop_instance_uid in uids or not info.sop_class_uid.startswith(
            "1.2.840.10008.5.1.4"
        ):
            continue
        uids.add(info.sop_instance_uid)
        chosen[syntax] = target / f"{len(chosen):02d}_{path.name}"
        shutil.copy(path, chosen[syntax])
    return chosen


def test_every_syntax_arrives_byte_for_byte(
    tmp_path: Path, pynetdicom_scp_factory: Callable[..., PynetdicomSCP]
) -> None:
    files = one_file_per_syntax(tmp_path / "archive")
    # JPEG Baseline, Extended, Lossless, JPEG-LS, JPEG 2000, RLE, deflated, big endian
    assert len(files) >= 8, sorted(describe(s) for s in files)
    scp = pynetdicom_scp_factory(transfer_syntaxes=sorted(files))
    run = fastsend(
        "send", "-i", str(tmp_path / "archive"), "-a", scp.ae_title, "-H", scp.host,
        "-p", str(scp.port), "--retries", "0",
    )  # fmt: skip
    assert run.returncode == 0, run.output
    received = {r.sop_instance_uid: r for r in scp.wait_for(len(files))}
    for syntax, path in files.items():
        info = read_header(path)
        record = received[info.sop_instance_uid]
        assert record.transfer_syntax == syntax  # sent as it is, not transcoded
        sent = dataset_bytes(path)
        if syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN and len(sent) % 2:
            sent += b"\x00"  # an odd deflate stream is padded to even length
        assert record.raw == sent, describe(syntax)


def test_storescp_stores_every_syntax_as_it_came(
    tmp_path: Path, storescp_factory: Callable[..., StoreSCP]
) -> None:
    files = one_file_per_syntax(tmp_path / "archive")
    peer = storescp_factory(tcp_nodelay=True, extra_args=["+xa"])  # accept all it knows
    run = fastsend(
        "send", "-i", str(tmp_path / "archive"), "-a", peer.aet, "-H", "127.0.0.1",
        "-p", str(peer.port), "--retries", "0",
    )  # fmt: skip
    assert run.returncode == 0, run.output
    received = {read_header(p).sop_instance_uid: p for p in peer.files()}
    for syntax, path in files.items():
        stored = received[read_header(path).sop_instance_uid]
        assert read_header(stored).transfer_syntax_uid == syntax

        # DCMTK recalculates group lengths (gggg,0000) and drops Data Set Trailing
        # Padding (FFFC,FFFC) when it writes a file; all else must be equal. (What
        # fastsend sends, byte for byte, is checked against pynetdicom above.)
        def values(file: Path) -> dict[int, object]:
            return {
                e.tag: e.value
                for e in pydicom.dcmread(file)
                if e.tag.element != 0 and e.tag != 0xFFFCFFFC
            }

        assert values(stored) == values(path), describe(syntax)


def test_compressed_file_to_an_uncompressed_only_peer_fails_with_its_syntax_named(
    tmp_path: Path, storescp_factory: Callable[..., StoreSCP]
) -> None:
    files = one_file_per_syntax(tmp_path / "archive")
    jpeg = files.get("1.2.840.10008.1.2.4.50")
    if jpeg is None:
        pytest.skip("pydicom's test data has no JPEG Baseline file here")
    peer = storescp_factory(tcp_nodelay=True)  # stock storescp: uncompressed syntaxes only
    run = fastsend(
        "send", "-i", str(jpeg), "-a", peer.aet, "-H", "127.0.0.1", "-p", str(peer.port),
        "--retries", "0",
    )  # fmt: skip
    assert run.returncode == 1, run.output
    [line] = [line for line in run.stderr.splitlines() if str(jpeg) in line]
    assert "no accepted presentation context" in line
    assert "JPEG Baseline" in line and "transfer-syntaxes-not-supported" in line


def test_transcode_if_needed_decompresses_for_an_uncompressed_only_peer(
    tmp_path: Path, pynetdicom_scp_factory: Callable[..., PynetdicomSCP]
) -> None:
    files = one_file_per_syntax(tmp_path / "archive")
    scp = pynetdicom_scp_factory(transfer_syntaxes=list(UNCOMPRESSED_LITTLE_ENDIAN))
    logs = tmp_path / "logs"
    run = fastsend(
        "send", "-i", str(tmp_path / "archive"), "-a", scp.ae_title, "-H", scp.host,
        "-p", str(scp.port), "--retries", "0", "--transcode", "if-needed",
        "--log-dir", str(logs),
    )  # fmt: skip
    assert run.returncode in (0, 1), run.output
    received = {r.sop_instance_uid: r for r in scp.records()}
    transcoded = 0
    for syntax, path in files.items():
        uid = read_header(path).sop_instance_uid
        line = next((x for x in run.stderr.splitlines() if str(path) in x), "")
        if uid not in received:
            # A codec that cannot decode this file: a per-file failure, named.
            assert line.startswith("FAILED") and "cannot decompress" in line, line
            continue
        record = received[uid]
        # Both LE syntaxes accepted: Explicit is preferred, it keeps the VRs.
        assert record.transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN, describe(syntax)
        original = pydicom.dcmread(path)
        assert (record.dataset.pixel_array == original.pixel_array).all(), describe(syntax)
        assert record.dataset.SOPInstanceUID == original.SOPInstanceUID
        transcoded += 1
    # Big endian too (PS3.5 A.3): byte-swapped to little endian, not refused.
    assert read_header(files[EXPLICIT_VR_BIG_ENDIAN]).sop_instance_uid in received
    assert transcoded >= 7, run.stderr


def test_transcode_never_is_the_default_and_names_the_option(
    tmp_path: Path, pynetdicom_scp_factory: Callable[..., PynetdicomSCP]
) -> None:
    files = one_file_per_syntax(tmp_path / "archive")
    scp = pynetdicom_scp_factory(transfer_syntaxes=list(UNCOMPRESSED_LITTLE_ENDIAN))
    run = fastsend(
        "send", "-i", str(tmp_path / "archive"), "-a", scp.ae_title, "-H", scp.host,
        "-p", str(scp.port), "--retries", "0",
    )  # fmt: skip
    assert run.returncode == 1, run.output
    assert scp.records() == []
    failed = [x for x in run.stderr.splitlines() if x.startswith("FAILED")]
    assert len(failed) == len(files)
    hinted = [x for x in failed if "--transcode if-needed" in x]
    assert len(hinted) == len(files)  # big endian too: it converts to Little Endian


# --------------------------------------------------------------------------
# Issue 13: a peer that takes only Implicit VR Little Endian, the default
# syntax every SCP must accept (PS3.5 10.1).


def implicit_only_archive(root: Path) -> dict[Path, str]:
    """20 RLE Lossless CT files, a deflated one, and big endian files: path -> syntax."""
    files: dict[Path, str] = {}
    for number in range(20):
        files[write_ct(root / f"rle{number:02d}.dcm", RLELossless, number)] = RLELossless
    files[write_ct(root / "deflated.dcm", DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, 0)] = (
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
    )
    for name in BIG_ENDIAN_FILES:
        shutil.copy(big_endian_file(name), root / name)
        files[root / name] = EXPLICIT_VR_BIG_ENDIAN
    # fastsend's own synthetic CT in big endian: private FD, US and OB values too.
    ds = synth.make_instance(
        study_uid=synth_uid("issue13"), series_uid=synth_uid("issue13", "series"),
        instance_number=1, transfer_syntax=EXPLICIT_VR_BIG_ENDIAN,
    )  # fmt: skip
    ds.save_as(root / "synth_big_endian.dcm", enforce_file_format=True)
    files[root / "synth_big_endian.dcm"] = EXPLICIT_VR_BIG_ENDIAN
    return files


def test_transcode_if_needed_to_an_implicit_only_peer_stores_everything_unchanged(
    tmp_path: Path, pynetdicom_scp_factory: Callable[..., PynetdicomSCP]
) -> None:
    files = implicit_only_archive(tmp_path / "archive")
    scp = pynetdicom_scp_factory(transfer_syntaxes=[IMPLICIT_VR_LITTLE_ENDIAN])
    run = fastsend(
        "send", "-i", str(tmp_path / "archive"), "-a", scp.ae_title, "-H", scp.host,
        "-p", str(scp.port), "--retries", "0", "--transcode", "if-needed",
    )  # fmt: skip
    assert run.returncode == 0, run.output
    received = {r.sop_instance_uid: r for r in scp.wait_for(len(files))}
    assert len(received) == len(files)
    for path, syntax in files.items():
        record = received[read_header(path).sop_instance_uid]
        assert record.transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN, path.name
        assert_arrived_unchanged(record.dataset, path)
        assert read_header(path).transfer_syntax_uid == syntax  # the file itself untouched


def test_transcode_if_needed_to_storescp_taking_only_implicit(
    tmp_path: Path, storescp_factory: Callable[..., StoreSCP]
) -> None:
    files = implicit_only_archive(tmp_path / "archive")
    peer = storescp_factory(tcp_nodelay=True, extra_args=["+xi"])  # Implicit VR LE only
    run = fastsend(
        "send", "-i", str(tmp_path / "archive"), "-a", peer.aet, "-H", "127.0.0.1",
        "-p", str(peer.port), "--retries", "0", "--transcode", "if-needed",
    )  # fmt: skip
    assert run.returncode == 0, run.output
    stored = {read_header(p).sop_instance_uid: p for p in peer.files()}
    assert len(stored) == len(files), peer.output()
    for path in files:
        copy = stored[read_header(path).sop_instance_uid]
        ds = pydicom.dcmread(copy)
        assert ds.file_meta.TransferSyntaxUID == IMPLICIT_VR_LITTLE_ENDIAN
        # DCMTK drops Data Set Trailing Padding when it writes a file.
        assert_arrived_unchanged(ds, path, ignore={0xFFFCFFFC})


def test_implicit_only_peer_without_transcode_names_each_syntax_and_the_option(
    tmp_path: Path, pynetdicom_scp_factory: Callable[..., PynetdicomSCP]
) -> None:
    files = implicit_only_archive(tmp_path / "archive")
    scp = pynetdicom_scp_factory(transfer_syntaxes=[IMPLICIT_VR_LITTLE_ENDIAN])
    run = fastsend(
        "send", "-i", str(tmp_path / "archive"), "-a", scp.ae_title, "-H", scp.host,
        "-p", str(scp.port), "--retries", "0",
    )  # fmt: skip
    assert run.returncode == 1, run.output
    assert scp.records() == []
    what_transcode_does = {
        RLELossless: "decompress it",
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: "inflate it",
        EXPLICIT_VR_BIG_ENDIAN: "convert it to Little Endian",
    }
    for path, syntax in files.items():
        [line] = [x for x in run.stderr.splitlines() if x.startswith(f"FAILED {path}:")]
        assert f"with transfer syntax {describe(syntax)}; the peer answered" in line
        assert "transfer-syntaxes-not-supported" in line
        assert line.endswith(
            f", or let fastsend {what_transcode_does[syntax]} with --transcode if-needed."
        ), line
