"""`fastsend bench`: end to end through the command, against the sink and a peer.

Also the streamed multi-frame file of synth.py. The comparison with DCMTK
and Orthanc (bench/run.py) is tested in test_bench_compare.py.
"""

from __future__ import annotations

import json
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner

from dicom_fastsend import benchmark, synth
from dicom_fastsend.cli import main
from dicom_fastsend.io.header import read_header
from fastsend_cli import fastsend
from peers import PynetdicomSCP


def expected_archive(tmp_path: Path, studies: int, instances: int, size: int) -> list[Path]:
    """The files `fastsend bench` generates for these options (synth is deterministic)."""
    return synth.write_archive(
        tmp_path / "expected", studies=studies, instances_per_study=instances, rows=size,
        columns=size,
    )  # fmt: skip


def test_bench_to_the_builtin_sink_stores_every_generated_file(tmp_path: Path) -> None:
    files = expected_archive(tmp_path, studies=3, instances=4, size=32)
    run = fastsend("bench", "--studies", "3", "--instances", "4", "--size", "32", "--runs", "2")
    assert run.returncode == 0, run.output
    printed = dict(
        line.split(": ", 1) for line in run.stdout.splitlines() if ": " in line
    )  # fmt: skip
    assert int(printed["files"]) == len(files)
    assert int(printed["bytes"]) == sum(path.stat().st_size for path in files)
    assert printed["stored per run"] == f"{len(files)}, {len(files)}"
    assert printed["received by the sink per run"] == f"{len(files)}, {len(files)}"
    assert float(printed["files/s"].split()[0]) > 0
    assert printed["exit status"].startswith("0 ")
    assert "(the built-in sink)" in printed["destination"]


def test_bench_json_is_consistent(tmp_path: Path) -> None:
    files = expected_archive(tmp_path, studies=2, instances=3, size=16)
    run = fastsend(
        "bench", "--studies", "2", "--instances", "3", "--size", "16", "--runs", "3",
        "-P", "2", "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.output
    report = json.loads(run.stdout)
    assert report["files"] == len(files)
    assert report["processes"] == 2
    assert len(report["runs"]) == 3
    for each in report["runs"]:
        assert each["stored"] == each["received"] == len(files)
        assert each["failed"] == 0 and each["exit_code"] == 0
    seconds = sorted(each["seconds"] for each in report["runs"])
    assert report["median_seconds"] == pytest.approx(seconds[1])
    assert report["files_per_second"] == pytest.approx(len(files) / seconds[1])
    assert report["megabytes_per_second"] == pytest.approx(
        report["bytes"] / 1e6 / seconds[1]
    )  # fmt: skip


def test_bench_to_a_peer(tmp_path: Path, pynetdicom_scp: PynetdicomSCP) -> None:
    files = expected_archive(tmp_path, studies=2, instances=3, size=16)
    run = fastsend(
        "bench", "--studies", "2", "--instances", "3", "--size", "16", "--runs", "2",
        "--host", pynetdicom_scp.host, "--port", str(pynetdicom_scp.port),
        "--called-ae", pynetdicom_scp.ae_title, "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.output
    report = json.loads(run.stdout)
    assert report["destination"] == f"PYNETDICOM@{pynetdicom_scp.host}:{pynetdicom_scp.port}"
    assert [each["stored"] for each in report["runs"]] == [len(files), len(files)]
    # Not our sink: nothing counted on the receiving side by the command...
    assert [each["received"] for each in report["runs"]] == [None, None]
    # ...so count here: two runs of the same instances.
    received = pynetdicom_scp.records()
    assert len(received) == 2 * len(files)
    expected_uids = {str(pydicom.dcmread(path).SOPInstanceUID) for path in files}
    assert {record.sop_instance_uid for record in received} == expected_uids


def test_bench_exits_non_zero_when_files_are_not_stored(
    pynetdicom_scp_factory: Callable[..., PynetdicomSCP],
) -> None:
    refusing = pynetdicom_scp_factory(status=0xC000)  # a permanent failure for every file
    run = fastsend(
        "bench", "--studies", "1", "--instances", "2", "--size", "16", "--runs", "1",
        "--host", refusing.host, "--port", str(refusing.port), "--called-ae", refusing.ae_title,
    )  # fmt: skip
    assert run.returncode == 1, run.output
    assert "NOT every file was stored" in run.stdout
    assert "stored per run: 0" in run.stdout
    assert "files/s: - (not every file was stored)" in run.stdout


def test_bench_to_nobody_exits_3(free_port: int) -> None:
    run = fastsend(
        "bench", "--studies", "1", "--instances", "1", "--size", "16", "--runs", "1",
        "--host", "127.0.0.1", "--port", str(free_port), "--json",
    )  # fmt: skip
    assert run.returncode == 3, run.output
    report = json.loads(run.stdout)
    assert report["exit_code"] == 3
    assert report["files_per_second"] is None
    assert "Connection refused" in run.stderr


def test_a_run_counts_only_when_the_sink_received_every_file() -> None:
    report = benchmark.BenchReport("SINK@127.0.0.1:1", files=5, bytes=50, processes=1, max_ops=1)
    good = benchmark.RunResult(1.0, 5, 0, 0, 5, 0, 0)
    report.runs = [good, benchmark.RunResult(1.0, 5, 0, 0, 4, 0, 0)]
    assert not report.ok
    assert report.exit_code == 1
    report.runs = [good, benchmark.RunResult(1.0, 0, 0, 0, 0, 3, 0)]
    assert report.exit_code == 3  # the run's own reason (no association) is kept
    report.runs = [good, good]
    assert report.ok and report.exit_code == 0


def test_bench_usage_errors() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["bench", "--host", "127.0.0.1"])
    assert result.exit_code == 2 and "--host and --port go together" in result.output


# ---------------------------------------------------------------- the synthetic data


def test_multiframe_file_is_streamed_and_complete(tmp_path: Path) -> None:
    frames, rows, columns = 64, 256, 192
    frame_bytes = rows * columns * 2
    tracemalloc.start()
    try:
        path = synth.write_multiframe(tmp_path / "mf.dcm", frames=frames, rows=rows,
                                      columns=columns)  # fmt: skip
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # pydicom's writer and a few frames (one, its conversion, its bytes), not the whole file.
    assert peak < frames * frame_bytes / 4
    assert not (tmp_path / "mf.dcm.part").exists()
    info = read_header(path)
    assert info.sop_class_uid == synth.MULTIFRAME_GRAYSCALE_WORD_SC_IMAGE_STORAGE
    ds = pydicom.dcmread(path)
    assert int(ds.NumberOfFrames) == frames
    assert ds.pixel_array.shape == (frames, rows, columns)
    assert len(ds.PixelData) == frames * frame_bytes
    # Pixel Data is the last element: the file ends with its value.
    assert os.path.getsize(path) - frames * frame_bytes > info.dataset_offset
    with open(path, "rb") as handle:
        handle.seek(-frame_bytes, os.SEEK_END)
        assert handle.read() == ds.PixelData[-frame_bytes:]
    assert int(ds.pixel_array.max()) < 1 << 12
