"""`fastsend bench`: end to end through the command, against the sink and a peer.

Also what the full comparison (`--compare`, bench/run.py) is built from: the
DCMTK lookup and its error, the streamed multi-frame file, and the table's
ratios.
"""

from __future__ import annotations

import json
import os
import stat
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner

from dicom_fastsend import benchmark, synth
from dicom_fastsend.cli import main
from dicom_fastsend.header import read_header
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
    result = runner.invoke(main, ["bench", "--compare", "--host", "h", "--port", "104"])
    assert result.exit_code == 2 and "--compare" in result.output
    result = runner.invoke(main, ["bench", "--quick"])
    assert result.exit_code == 2 and "--compare" in result.output


# ---------------------------------------------------------------- --compare needs DCMTK


def fake_tool(directory: Path, name: str, version_output: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\necho '{version_output}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_find_dcmtk_skips_a_storescu_that_is_not_dcmtk(tmp_path: Path) -> None:
    # pynetdicom's console script (or a pyenv shim to it) comes first on PATH.
    fake_tool(tmp_path / "shims", "storescu", "storescu.py v2.0.0")
    assert benchmark.find_dcmtk("storescu", [str(tmp_path / "shims")]) is None
    fake_tool(tmp_path / "dcmtk", "storescu", "$dcmtk: storescu v3.6.7 2022-04-22 $")
    directories = [str(tmp_path / "shims"), str(tmp_path / "dcmtk")]
    assert benchmark.find_dcmtk("storescu", directories) == str(tmp_path / "dcmtk" / "storescu")


def test_compare_without_dcmtk_names_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def nothing_found(tool: str, directories: object = None) -> None:
        seen.append(tool)
        return None

    monkeypatch.setattr(benchmark, "find_dcmtk", nothing_found)
    data = tmp_path / "data"
    result = CliRunner().invoke(main, ["bench", "--compare", "--quick", "--data", str(data)])
    assert result.exit_code == 1, result.output
    assert "apt-get install dcmtk" in result.output
    assert "storescu and storescp" in result.output
    assert seen == ["storescu", "storescp"]
    assert not data.exists() or not any(data.iterdir())  # nothing generated before the check


def test_compare_with_only_pynetdicoms_scripts_on_path_fails(tmp_path: Path) -> None:
    """PATH manipulation end to end: the lookup itself, as the command does it."""
    shims = tmp_path / "shims"
    fake_tool(shims, "storescu", "storescu.py v2.0.0")
    fake_tool(shims, "storescp", "storescp.py v2.0.0")
    with pytest.raises(benchmark.ToolMissing, match="apt-get install dcmtk"):
        benchmark.require_dcmtk(lambda tool: benchmark.find_dcmtk(tool, [str(shims)]))


# ---------------------------------------------------------------- the comparison's parts


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


def test_table_ratios_compare_within_one_data_set() -> None:
    def m(receiver: str, sender: str, dataset: str, files: int, seconds: float) -> (
        benchmark.Measurement
    ):  # fmt: skip
        return benchmark.Measurement(receiver, sender, files, files * 1_000_000, dataset,
                                     [seconds] * 3, [0] * 3, [0] * 3)  # fmt: skip

    fast = "storescp --ignore TCP_NODELAY=1, 10 files"
    results = [
        m("raw TCP (discard), 10 files", benchmark.RAW_PUMP, "ct", 10, 1.0),
        m("raw TCP (discard), 4 files", benchmark.RAW_PUMP, "mr", 4, 0.5),
        m(fast, benchmark.STORESCU, "ct", 10, 4.0),
        m(fast, "fastsend -P 1", "ct", 10, 2.0),
        m("storescp --ignore TCP_NODELAY=1, 4 files", "fastsend -P 1", "mr", 4, 2.0),
        m("Orthanc (stock, Nagle on), 5 files", "fastsend -P 1", "orthanc", 5, 1.0),
    ]
    cells = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in benchmark.table(results, "").splitlines()[4:]
    ]
    rows = {(row[0], row[1]): row[5:7] for row in cells}  # vs storescu, vs raw pump
    assert rows[(fast, "fastsend -P 1")] == ["2.00x", "50%"]
    assert rows[(fast, benchmark.STORESCU)] == ["1.00x", "25%"]
    # The MR row: no storescu on that data set, and its own pump (8 MB/s vs 2 MB/s).
    assert rows[("storescp --ignore TCP_NODELAY=1, 4 files", "fastsend -P 1")] == ["", "25%"]
    # A subset of the same CT files: the pump over the whole set is the reference.
    assert rows[("Orthanc (stock, Nagle on), 5 files", "fastsend -P 1")] == ["", "50%"]
    lines = benchmark.headline(results, [])
    assert "- fastsend -P 1 / storescu, fast storescp: **2.00x**" in lines


def test_headline_for_the_multiframe_file_and_indexing() -> None:
    mb = 1_000_000
    pump = benchmark.Measurement("raw TCP (discard), 1 multi-frame file", benchmark.RAW_PUMP, 1,
                                 400 * mb, "multiframe", [0.2, 0.25, 0.3])  # fmt: skip
    sent = benchmark.Measurement(
        "storescp --ignore TCP_NODELAY=1, 1 multi-frame file", "fastsend -P 1", 1, 400 * mb,
        "multiframe", [1.0, 2.0, 1.0], [300 * mb, 500 * mb, 300 * mb], [20 * mb, 30 * mb, 20 * mb],
        [800.0, 1200.0, 1000.0],
    )  # fmt: skip
    indexing = [
        benchmark.IndexingMeasurement("header scan", 100, [0.01, 0.02, 0.01]),
        benchmark.IndexingMeasurement("pydicom", 100, [0.3, 0.2, 0.25]),
    ]
    to_sink = benchmark.Measurement(
        "fastsend sink, 1 multi-frame file", "fastsend -P 1", 1, 400 * mb, "multiframe",
        [0.5, 0.4, 0.5], [60 * mb], [10 * mb], [1400.0],
    )  # fmt: skip
    lines = benchmark.headline([pump, sent, to_sink], indexing)
    # 400 MB in 1.0 s (median) against 400 MB in 0.25 s.
    fast = "- multi-frame file to the fast storescp"
    assert f"{fast}, fastsend -P 1 / raw pump MB/s: **25%**" in lines
    assert any(  # 1000/1600
        "storescp, fastsend's send phase alone" in line and "**62%**" in line for line in lines
    )
    assert any("**500 MB** (of which not file-backed: 30 MB)" in line for line in lines)
    # To the sink: 400 MB in 0.5 s against 0.25 s, and 1400/1600 for the send phase.
    assert "- multi-frame file to the fastsend sink, fastsend -P 1 / raw pump MB/s: **50%**" in (
        lines
    )
    assert any("sink, fastsend's send phase alone" in line and "**88%**" in line for line in lines)
    assert "- indexing, header scan / pydicom dcmread: **25.0x**" in lines
