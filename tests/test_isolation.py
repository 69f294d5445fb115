"""The pure unit tests stand alone: no peer machinery, no pynetdicom, no benchmark harness.

conftest.py is loaded for every test, so whatever it imports at the top every
test pays for, and a broken peer install would break the protocol tests too.
These run pytest in a fresh interpreter and look at ``sys.modules`` afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent

# Tests of pure code: protocol, hot path, planning, header parsing. None of
# them may need a peer; keep a new pure test file in this list.
PURE = (
    "test_contexts.py",
    "test_convert.py",
    "test_dimse.py",
    "test_header.py",
    "test_hotpath.py",
    "test_inventory.py",
    "test_plan.py",
    "test_results.py",
    "test_transport.py",
    "test_ul_association.py",
    "test_ul_pdu.py",
    "test_verify_codec.py",
)
# The peers (tests/peers.py), the in-process peer and the benchmark harness
# (bench/compare.py) that tests/peers.py takes DCMTK's finder from.
FORBIDDEN = ("peers", "pynetdicom", "compare")

# Collects `collect` and runs `run` in one interpreter, then reports which
# FORBIDDEN modules got imported and how many tests pytest saw.
PROBE = """
import json, sys
import pytest

class Count:
    collected = 0
    passed = 0
    def pytest_collection_finish(self, session):
        self.collected += len(session.items)
    def pytest_runtest_logreport(self, report):
        self.passed += report.when == "call" and report.passed

count = Count()
collect, run, forbidden = json.loads(sys.argv[1])
codes = []
common = ["-q", "-p", "no:cacheprovider"]
if collect:
    codes.append(int(pytest.main(["--collect-only", *common, *collect], plugins=[count])))
if run:
    codes.append(int(pytest.main([*common, *run], plugins=[count])))
print(json.dumps({
    "codes": codes,
    "collected": count.collected,
    "passed": count.passed,
    "imported": [name for name in forbidden if name in sys.modules],
}))
"""


def probe(collect: list[str], run: list[str]) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps([collect, run, list(FORBIDDEN)])],
        cwd=TESTS.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert last.startswith("{"), result.stdout[-3000:] + result.stderr[-3000:]
    report: dict[str, object] = json.loads(last)
    return report


def test_pure_test_files_import_no_peer_pynetdicom_or_benchmark() -> None:
    # Collecting imports every pure module and conftest.py; running three of them
    # also sets up their fixtures (tmp_path, the files they write).
    report = probe(
        [f"tests/{name}" for name in PURE],
        ["tests/test_plan.py", "tests/test_results.py", "tests/test_inventory.py"],
    )
    assert report["codes"] == [0, 0], report
    assert isinstance(report["collected"], int) and report["collected"] > 200, report
    assert isinstance(report["passed"], int) and report["passed"] > 10, report
    assert report["imported"] == [], f"the pure tests imported {report['imported']}"


def test_the_probe_sees_a_test_file_that_needs_peers() -> None:
    # The control: a peer test does import the peer machinery (pynetdicom once
    # its SCP starts), so an empty list above means the pure files do not, not
    # that the probe is blind.
    report = probe([], ["tests/test_peers.py::test_pynetdicom_scp_status_callable"])
    assert report["codes"] == [0], report
    assert report["passed"] == 1, report
    # (Not the benchmark harness: tests/peers.py need not keep taking DCMTK's finder from it.)
    imported = report["imported"]
    assert isinstance(imported, list) and {"peers", "pynetdicom"} <= set(imported), report
