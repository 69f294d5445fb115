"""The benchmark harness of a checkout (bench/compare.py, bench/run.py), not of the package.

The DCMTK lookup and its error, and the table's ratios. bench/ is on
sys.path through pytest's `pythonpath` setting (pyproject.toml).
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

import compare
import run

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

    fast = "storescp --ignore TCP_NODELAY=1, 10 files"
    results = [
        m("raw TCP (discard), 10 files", compare.RAW_PUMP, "ct", 10, 1.0),
        m("raw TCP (discard), 4 files", compare.RAW_PUMP, "mr", 4, 0.5),
        m(fast, compare.STORESCU, "ct", 10, 4.0),
        m(fast, "fastsend -P 1", "ct", 10, 2.0),
        m("storescp --ignore TCP_NODELAY=1, 4 files", "fastsend -P 1", "mr", 4, 2.0),
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
    assert rows[("storescp --ignore TCP_NODELAY=1, 4 files", "fastsend -P 1")] == ["", "25%"]
    # A subset of the same CT files: the pump over the whole set is the reference.
    assert rows[("Orthanc (stock, Nagle on), 5 files", "fastsend -P 1")] == ["", "50%"]
    lines = compare.headline(results, [])
    assert "- fastsend -P 1 / storescu, fast storescp: **2.00x**" in lines


def test_headline_for_the_multiframe_file_and_indexing() -> None:
    mb = 1_000_000
    pump = compare.Measurement("raw TCP (discard), 1 multi-frame file", compare.RAW_PUMP, 1,
                                 400 * mb, "multiframe", [0.2, 0.25, 0.3])  # fmt: skip
    sent = compare.Measurement(
        "storescp --ignore TCP_NODELAY=1, 1 multi-frame file", "fastsend -P 1", 1, 400 * mb,
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
