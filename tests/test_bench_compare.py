"""The benchmark harness of a checkout (bench/compare.py, bench/run.py), not of the package.

The DCMTK lookup and its error, the table's ratios and columns, and the CPU
time of a sender's process tree (forked children included, checked against a
real fastsend -P 2 and DCMTK storescp). bench/ is on sys.path through
pytest's `pythonpath` setting (pyproject.toml).
"""

from __future__ import annotations

import json
import stat
import sys
import textwrap
from pathlib import Path

import pytest

import compare
import run
import scale_data

# The receivers' names as the table and the headline show them.
BEST = "storescp --ignore TCP_NODELAY=1 --max-pdu 131072"
PDU_16K = "storescp --ignore TCP_NODELAY=1 (16 KB PDU)"
BEST_BULLET = "storescp at its best (TCP_NODELAY=1, 128 KB PDU)"

# ---------------------------------------------------------------- DCMTK is needed


def fake_tool(directory: Path, name: str, version_output: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\necho '{version_output}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_find_dcmtk_skips_a_storescu_that_is_not_dcmtk(tmp_path: Path) -> None:
    # pynetdicom's console script (or a pyenv shim to it) comes first on PATH.
    fake_tool(tmp_path / "shims", "storescu", "storescu.py v2.0.0")
    assert compare.find_dcmtk("storescu", [str(tmp_path / "shims")]) is None
    fake_tool(tmp_path / "dcmtk", "storescu", "$dcmtk: storescu v3.6.7 2022-04-22 $")
    directories = [str(tmp_path / "shims"), str(tmp_path / "dcmtk")]
    assert compare.find_dcmtk("storescu", directories) == str(tmp_path / "dcmtk" / "storescu")


def test_compare_without_dcmtk_names_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench/run.py's own message, before any data is generated."""
    seen: list[str] = []

    def nothing_found(tool: str, directories: object = None) -> None:
        seen.append(tool)
        return None

    monkeypatch.setattr(compare, "find_dcmtk", nothing_found)
    data = tmp_path / "data"
    monkeypatch.setattr(sys, "argv", ["bench/run.py", "--quick", "--data", str(data)])
    with pytest.raises(SystemExit) as exited:
        run.main()
    message = str(exited.value.code)
    assert message.startswith("bench/run.py: ")
    assert "apt-get install dcmtk" in message
    assert "storescu and storescp" in message
    assert seen == ["storescu", "storescp"]
    assert not data.exists() or not any(data.iterdir())  # nothing generated before the check


def test_compare_with_only_pynetdicoms_scripts_on_path_fails(tmp_path: Path) -> None:
    """PATH manipulation end to end: the lookup itself, as the command does it."""
    shims = tmp_path / "shims"
    fake_tool(shims, "storescu", "storescu.py v2.0.0")
    fake_tool(shims, "storescp", "storescp.py v2.0.0")
    with pytest.raises(compare.ToolMissing, match="apt-get install dcmtk"):
        compare.require_dcmtk(lambda tool: compare.find_dcmtk(tool, [str(shims)]))


def test_table_ratios_compare_within_one_data_set() -> None:
    def m(receiver: str, sender: str, dataset: str, files: int, seconds: float) -> (
        compare.Measurement
    ):  # fmt: skip
        return compare.Measurement(receiver, sender, files, files * 1_000_000, dataset,
                                     [seconds] * 3, [0] * 3, [0] * 3)  # fmt: skip

    fast = f"{BEST}, 10 files"
    results = [
        m("raw TCP (discard), 10 files", compare.RAW_PUMP, "ct", 10, 1.0),
        m("raw TCP (discard), 4 files", compare.RAW_PUMP, "mr", 4, 0.5),
        m(fast, compare.STORESCU, "ct", 10, 4.0),
        m(fast, "fastsend -P 1", "ct", 10, 2.0),
        m(f"{BEST}, 4 files", "fastsend -P 1", "mr", 4, 2.0),
        m("Orthanc (stock, Nagle on), 5 files", "fastsend -P 1", "orthanc", 5, 1.0),
    ]
    cells = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in compare.table(results, "").splitlines()[4:]
    ]
    rows = {(row[0], row[1]): row[5:7] for row in cells}  # vs storescu, vs raw pump
    assert rows[(fast, "fastsend -P 1")] == ["2.00x", "50%"]
    assert rows[(fast, compare.STORESCU)] == ["1.00x", "25%"]
    # The MR row: no storescu on that data set, and its own pump (8 MB/s vs 2 MB/s).
    assert rows[(f"{BEST}, 4 files", "fastsend -P 1")] == ["", "25%"]
    # A subset of the same CT files: the pump over the whole set is the reference.
    assert rows[("Orthanc (stock, Nagle on), 5 files", "fastsend -P 1")] == ["", "50%"]
    lines = compare.headline(results, [])
    assert f"- fastsend -P 1 / storescu, {BEST_BULLET}: **2.00x**" in lines


def test_headline_for_the_multiframe_file_and_indexing() -> None:
    mb = 1_000_000
    pump = compare.Measurement("raw TCP (discard), 1 multi-frame file", compare.RAW_PUMP, 1,
                                 400 * mb, "multiframe", [0.2, 0.25, 0.3])  # fmt: skip
    sent = compare.Measurement(
        f"{BEST}, 1 multi-frame file", "fastsend -P 1", 1, 400 * mb,
        "multiframe", [1.0, 2.0, 1.0], [300 * mb, 500 * mb, 300 * mb], [20 * mb, 30 * mb, 20 * mb],
        [800.0, 1200.0, 1000.0],
    )  # fmt: skip
    indexing = [
        compare.IndexingMeasurement("header scan", 100, [0.01, 0.02, 0.01]),
        compare.IndexingMeasurement("pydicom", 100, [0.3, 0.2, 0.25]),
    ]
    to_sink = compare.Measurement(
        "fastsend sink, 1 multi-frame file", "fastsend -P 1", 1, 400 * mb, "multiframe",
        [0.5, 0.4, 0.5], [60 * mb], [10 * mb], [1400.0],
    )  # fmt: skip
    lines = compare.headline([pump, sent, to_sink], indexing)
    # 400 MB in 1.0 s (median) against 400 MB in 0.25 s.
    fast = f"- multi-frame file to the {BEST_BULLET}"
    assert f"{fast}, fastsend -P 1 / raw pump MB/s: **25%**" in lines
    assert any(  # 1000/1600
        f"{BEST_BULLET}, fastsend's send phase alone" in line and "**62%**" in line
        for line in lines
    )
    assert any("**500 MB** (of which not file-backed: 30 MB)" in line for line in lines)
    # To the sink: 400 MB in 0.5 s against 0.25 s, and 1400/1600 for the send phase.
    assert "- multi-frame file to the fastsend sink, fastsend -P 1 / raw pump MB/s: **50%**" in (
        lines
    )
    assert any("sink, fastsend's send phase alone" in line and "**88%**" in line for line in lines)
    assert "- indexing, header scan / pydicom dcmread: **25.0x**" in lines


# ---------------------------------------------------------------- issue 15: the headline, CPU


def row(receiver: str, sender: str, dataset: str, files: int, seconds: float,
        cpu: tuple[float, float] | None = None) -> compare.Measurement:  # fmt: skip
    """A measured row: `files` of 1 MB in `seconds`, `cpu` (user, system) seconds a run."""
    m = compare.Measurement(receiver, sender, files, files * 1_000_000, dataset, [seconds] * 3)
    if cpu is not None:
        m.cpu_user_seconds = [cpu[0]] * 3
        m.cpu_system_seconds = [cpu[1]] * 3
        m.cpu_sampled_seconds = [sum(cpu)] * 3
    return m


def test_headline_compares_with_storescp_at_its_best() -> None:
    """The 128 KB receiver's rows make the headline; the 16 KB ones a line of their own.

    The 16 KB receiver's name is the start of the 128 KB one's, and its rows
    come first: neither the headline nor the table's "vs storescu" may take
    the other receiver's storescu.
    """
    results = [
        row(f"{PDU_16K}, 10 files", compare.STORESCU, "ct", 10, 5.0),
        row(f"{PDU_16K}, 10 files", "fastsend -P 1", "ct", 10, 4.0),
        row(f"{PDU_16K}, 10 files", "fastsend -P 2", "ct", 10, 2.5),
        row(f"{BEST}, 10 files", compare.STORESCU, "ct", 10, 4.0),
        row(f"{BEST}, 10 files", "fastsend -P 1", "ct", 10, 2.0),
        row(f"{BEST}, 10 files", "fastsend -P 2", "ct", 10, 1.6),
        row(f"{BEST}, 100 files of 64x64", compare.STORESCU, "scale", 100, 1.0),
        row(f"{BEST}, 100 files of 64x64", "fastsend -P 2", "scale", 100, 0.8),
    ]
    lines = compare.headline(results, [])
    assert f"- fastsend -P 1 / storescu, {BEST_BULLET}: **2.00x**" in lines
    assert f"- fastsend -P 2 / storescu, {BEST_BULLET}: **2.50x**" in lines
    assert "- fastsend -P 1 / storescu, storescp TCP_NODELAY=1, 16 KB PDU: **1.25x**" in lines
    assert "- fastsend -P 2 / storescu, storescp TCP_NODELAY=1, 16 KB PDU: **2.00x**" in lines
    assert f"- storescu to {BEST_BULLET} / to storescp TCP_NODELAY=1, 16 KB PDU: **1.25x**" in lines
    # The small-file set, named by its size (1 MB a file here).
    assert f"- 100 files of 1000.0 KB: fastsend -P 2 / storescu, {BEST_BULLET}: **1.25x**" in (
        lines
    )
    cells = {
        (parts[0], parts[1]): parts[5]
        for parts in (
            [cell.strip() for cell in line.strip("|").split("|")]
            for line in compare.table(results, "").splitlines()[4:]
        )
    }
    assert cells[(f"{PDU_16K}, 10 files", "fastsend -P 2")] == "2.00x"  # 5.0 / 2.5
    assert cells[(f"{BEST}, 10 files", "fastsend -P 2")] == "2.50x"  # 4.0 / 1.6
    assert cells[(f"{PDU_16K}, 10 files", compare.STORESCU)] == "1.00x"


def test_table_has_cpu_per_file_of_every_sender_row() -> None:
    results = [
        row("raw TCP (discard), 10 files", compare.RAW_PUMP, "ct", 10, 1.0, (0.0005, 0.0015)),
        row(f"{BEST}, 10 files", compare.STORESCU, "ct", 10, 4.0, (0.002, 0.001)),
        row(f"{BEST}, 10 files", "fastsend -P 2", "ct", 10, 2.0, (0.004, 0.0012)),
        row(f"{BEST}, 10 files", "fastsend -P 4", "ct", 10, 2.0),  # measured without CPU
    ]
    # Three runs of different CPU: the run of median total, its user and system.
    results[1].cpu_user_seconds = [0.002, 0.009, 0.001]
    results[1].cpu_system_seconds = [0.001, 0.001, 0.001]
    lines = compare.table(results, "").splitlines()
    header = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert header[7:10] == ["CPU us/file (user+sys)", "user us/file", "sys us/file"]
    assert header[-1] == "peak RSS MB"
    assert lines[3].count("|") == lines[2].count("|")
    cells = {
        (parts[0], parts[1]): parts[7:10]
        for parts in ([cell.strip() for cell in line.strip("|").split("|")] for line in lines[4:])
    }
    assert cells[("raw TCP (discard), 10 files", compare.RAW_PUMP)] == ["200", "50", "150"]
    assert cells[(f"{BEST}, 10 files", compare.STORESCU)] == ["300", "200", "100"]
    assert cells[(f"{BEST}, 10 files", "fastsend -P 2")] == ["520", "400", "120"]
    assert cells[(f"{BEST}, 10 files", "fastsend -P 4")] == ["", "", ""]
    # The CPU target, against storescu to the same receiver.
    cpu = compare.headline(results, [])
    assert (
        f"- CPU per file (user+sys, whole process tree), CT 512x512: fastsend -P 2 / storescu, "
        f"{BEST_BULLET}: **1.73x**" in cpu
    )
    document = compare._as_json(results[2])
    assert document["cpu_us_per_file"] == pytest.approx(
        {"user": 400.0, "system": 120.0, "total": 520.0}
    )
    json.dumps(document)


def test_cpu_notes_name_a_tree_whose_wait4_missed_a_process() -> None:
    counted = row(f"{BEST}, 10 files", "fastsend -P 2", "ct", 10, 2.0, (0.30, 0.10))
    missed = row(f"{BEST}, 10 files", "fastsend -P 1", "ct", 10, 2.0, (0.30, 0.10))
    counted.cpu_sampled_seconds = [0.39, 0.40, 0.38]  # samples lag behind: below wait4
    missed.cpu_sampled_seconds = [0.39, 0.90, 0.38]  # a process seen using more than wait4 saw
    notes = compare.cpu_notes([counted, missed])
    assert len(notes) == 1
    assert notes[0].startswith(f"fastsend -P 1 to {BEST}, 10 files, run 2: wait4 counted 0.40 s")


BURNER = textwrap.dedent(
    """
    import os, time

    def burn(seconds):
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    child = os.fork()
    if child == 0:
        burn(0.6)
        os._exit(0)
    burn(0.05)
    os.waitpid(child, 0)
    """
)


def test_run_timed_counts_the_cpu_of_a_forked_child() -> None:
    """The command's CPU includes its child's, which the parent waited for."""
    timed, _ = compare.run_timed([sys.executable, "-c", BURNER])
    assert timed.cpu_user is not None and timed.cpu_system is not None
    tree = timed.cpu_user + timed.cpu_system
    assert tree >= 0.65
    # The sampler saw the parent and its child; a sample is at most what wait4 counted.
    assert set(timed.cpu_sampled) == {"sender", "worker"}
    assert timed.cpu_sampled["worker"] >= 0.3
    assert sum(timed.cpu_sampled.values()) <= tree + 0.01


def test_fastsend_workers_cpu_is_in_the_tree(tmp_path: Path) -> None:
    """fastsend -P 2 to storescp at its best: wait4 counts the forked workers' CPU.

    The sampler reads each process's own CPU from /proc while it runs: the
    workers' share, seen there, must be in the tree's total too, on top of
    the coordinator's own.
    """
    try:
        dcmtk = compare.require_dcmtk()
    except compare.ToolMissing as exc:
        pytest.skip(str(exc))
    # Enough files for the workers to pass the bound below with room: at about
    # 65 µs of worker CPU a file (issue 15), 3,000 came to 0.19 s.
    files = 6000
    generated = scale_data.generate(tmp_path / "set", scale_data.SetShape(files))
    receiver = compare.storescp_receiver(
        dcmtk["storescp"], tmp_path, tcp_nodelay=True, max_pdu=compare.MAX_PDU
    )
    try:
        assert receiver.name == BEST
        send = compare.fastsend(receiver.port, receiver.aet, generated.tree, 2, tmp_path / "logs")
        timed = send()
    finally:
        receiver.stop()
    assert timed.cpu_user is not None and timed.cpu_system is not None
    tree = timed.cpu_user + timed.cpu_system
    coordinator, workers = timed.cpu_sampled["sender"], timed.cpu_sampled["worker"]
    # Enough worker CPU that its absence would show: more than the coordinator
    # can use between its last sample (every 0.1 s) and its exit.
    assert workers >= 0.2, timed.cpu_sampled
    assert tree >= coordinator + workers - 0.01, (tree, timed.cpu_sampled)
