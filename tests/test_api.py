"""The Python API: the same config objects as the CLI, typed results back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dicom_fastsend as fs
from dicom_fastsend.sink import Sink
from peers import LOOPBACK, SynthArchive, free_port

REPO = Path(__file__).resolve().parent.parent


def test_send_scan_and_echo_from_python(archive: SynthArchive, sink: Sink, tmp_path: Path) -> None:
    peer = fs.PeerConfig(host=LOOPBACK, port=sink.port, called_ae_title="SINK")
    assert fs.echo(peer) == fs.EchoResult(0x0000)
    config = fs.SendConfig(
        peer=peer, inputs=(archive.root,), recursive=True, processes=2, log_dir=tmp_path / "logs"
    )
    report = fs.scan(config)
    assert isinstance(report, fs.ScanReport) and report.files == len(archive.files)

    seen: list[fs.FileResult] = []
    # This test process runs the sink's threads, so workers are spawned, not forked.
    summary = fs.send(config, on_result=seen.append)
    assert isinstance(summary, fs.SendSummary)
    assert summary.exit_code == 0
    assert summary.count(fs.Outcome.STORED) == len(archive.files) == len(seen)
    assert set(sink.stats.received_uids) == archive.uids
    assert {r.sop_instance_uid for r in seen} == archive.uids
    assert list(config.log_dir.glob("fastsend_summary_*.json"))  # type: ignore[union-attr]


def test_echo_reports_why_there_was_no_answer() -> None:
    port = free_port()
    result = fs.echo(fs.PeerConfig(host=LOOPBACK, port=port, called_ae_title="NOBODY"))
    assert not result.ok and result.status is None
    assert f"cannot connect to {LOOPBACK}:{port}" in result.problem


def test_example_script_runs_against_a_sink(
    archive: SynthArchive, sink: Sink, tmp_path: Path
) -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "examples" / "migrate.py"), str(archive.root), "SINK",
         LOOPBACK, str(sink.port)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"stored {len(archive.files)}, warnings 0, failed 0, skipped 0" in run.stdout


def test_more_than_128_contexts_go_through_several_associations(
    archive: SynthArchive, sink: Sink, tmp_path: Path
) -> None:
    """130 private SOP classes, each proposed in 2 syntaxes: 260 contexts, 3 associations."""
    import pydicom

    template = pydicom.dcmread(archive.files[0])
    root = tmp_path / "many"
    root.mkdir()
    uids = set()
    for n in range(130):
        sop_class = f"1.2.826.0.1.3680043.10.1447.99.{n + 1}"
        instance = f"{sop_class}.1"
        template.SOPClassUID = template.file_meta.MediaStorageSOPClassUID = sop_class
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = instance
        template.save_as(root / f"{n:03d}.dcm", enforce_file_format=True)
        uids.add(instance)
    peer = fs.PeerConfig(host=LOOPBACK, port=sink.port, called_ae_title="SINK")
    config = fs.SendConfig(peer=peer, inputs=(root,), log_dir=tmp_path / "logs")
    assert fs.scan(config).associations_needed == 3
    summary = fs.send(config)
    assert summary.exit_code == 0
    assert summary.count(fs.Outcome.STORED) == 130
    assert set(sink.stats.received_uids) == uids
    assert summary.associations_opened == sink.stats.associations == 3


def test_ctrl_c_while_walking_sends_nothing_and_says_so(archive: SynthArchive) -> None:
    from dicom_fastsend.engine.coordinator import Coordinator

    peer = fs.PeerConfig(host=LOOPBACK, port=free_port(), called_ae_title="NOBODY")
    coordinator = Coordinator(fs.SendConfig(peer=peer, inputs=(archive.root,), log_dir=None))
    coordinator.interrupts = 1  # as if Ctrl-C came before the first file was read
    summary = coordinator.run()
    assert summary.interrupted and summary.exit_code == 130
    assert summary.associations_opened == 0 and summary.found == 0
    assert any("interrupted (Ctrl-C) while walking the inputs" in e for e in summary.events)


def test_a_local_send_and_its_summary_import_neither_dask_nor_pydicom_nor_ssl(
    archive: SynthArchive, sink: Sink
) -> None:
    # Dask and pydicom each cost about half a second of start-up, which every
    # whole run would pay: Dask is for --cluster only, pydicom for conversions
    # only (UID names come from its table file, loaded alone). ssl (10 ms) is
    # for TLS only.
    code = (
        "import io, sys; from pathlib import Path; import dicom_fastsend as fs; "
        "from dicom_fastsend.report import summarize; "
        f"peer = fs.PeerConfig('{LOOPBACK}', {sink.port}, 'SINK'); "
        f"s = fs.send(fs.SendConfig(peer=peer, inputs=(Path({str(archive.root)!r}),), "
        "recursive=True, log_dir=None)); "
        "out = io.StringIO(); summarize(s, out); "
        "print(s.exit_code, 'CT Image Storage' in out.getvalue(), "
        "sorted({'distributed', 'dask', 'pydicom', 'ssl'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["0", "True", "[]"], result.stdout + result.stderr
    assert sink.stats.instances == len(archive.files)
