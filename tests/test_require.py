"""A missing peer skips a test for a developer and fails it under FASTSEND_REQUIRE_PEERS=1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from require import DCMTK_HINT, ORTHANC_HINT, REQUIRE_PEERS, missing_peer, require_module

TESTS = Path(__file__).parent


@pytest.mark.parametrize("value", [None, "", "0"])
def test_a_missing_peer_is_a_skip_by_default(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv(REQUIRE_PEERS, raising=False)
    else:
        monkeypatch.setenv(REQUIRE_PEERS, value)
    with pytest.raises(pytest.skip.Exception, match="storescp: apt-get install dcmtk"):
        missing_peer("storescp", "apt-get install dcmtk")


@pytest.mark.parametrize("value", ["1", "yes"])
def test_a_missing_peer_is_a_failure_when_peers_are_required(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(REQUIRE_PEERS, value)
    with pytest.raises(pytest.fail.Exception) as failed:
        missing_peer("storescp", "apt-get install dcmtk")
    assert "storescp: apt-get install dcmtk" in str(failed.value)
    assert f"{REQUIRE_PEERS}=1" in str(failed.value)


def test_require_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_PEERS, raising=False)
    assert require_module("json") is json
    with pytest.raises(pytest.skip.Exception, match="no_such_peer_module.*pip install"):
        require_module("no_such_peer_module", "pip install it")
    monkeypatch.setenv(REQUIRE_PEERS, "1")
    with pytest.raises(pytest.fail.Exception, match="no_such_peer_module.*pip install"):
        require_module("no_such_peer_module", "pip install it")


# Runs pytest with DCMTK, Orthanc and pynetdicom made unfindable: the finders
# tests/peers.py uses answer None (DCMTK and Orthanc sit in fixed system
# directories too, so hiding them from PATH is not enough) and pynetdicom
# cannot be imported. Prints each test's outcome and message as JSON.
HIDDEN_PEERS = """
import json, sys
sys.path[:0] = ["tests", "bench"]
import pytest
import peers

peers.find_dcmtk = lambda tool, directories=None: None
peers.find_orthanc = lambda: None
sys.modules["pynetdicom"] = None  # `import pynetdicom` raises ImportError

class Outcomes:
    seen = {}
    def pytest_runtest_logreport(self, report):
        if report.failed or report.skipped or report.when == "call":
            self.seen.setdefault(report.nodeid, (report.outcome, report.longreprtext))

outcomes = Outcomes()
code = int(pytest.main(["-q", "-p", "no:cacheprovider", *sys.argv[1:]], plugins=[outcomes]))
print(json.dumps({"code": code, "outcomes": outcomes.seen}))
"""

# One test per kind of peer: a DCMTK fixture, a DCMTK tool used directly,
# Orthanc, pynetdicom.
NEEDS_A_PEER = {
    "tests/test_peers.py::test_storescp_receives_archive": DCMTK_HINT,
    "tests/test_peers.py::test_storescp_start_failure_shows_output": DCMTK_HINT,
    "tests/test_peers.py::test_orthanc_receives_archive": ORTHANC_HINT,
    "tests/test_peers.py::test_pynetdicom_scp_status_callable": "pynetdicom",
}


def run_without_peers(required: bool) -> tuple[int, dict[str, tuple[str, str]]]:
    env = {k: v for k, v in os.environ.items() if k != REQUIRE_PEERS}
    if required:
        env[REQUIRE_PEERS] = "1"
    result = subprocess.run(
        [sys.executable, "-c", HIDDEN_PEERS, *NEEDS_A_PEER],
        cwd=TESTS.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    assert lines and lines[-1].startswith("{"), result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(lines[-1])
    outcomes = {node: (outcome, text) for node, (outcome, text) in report["outcomes"].items()}
    return report["code"], outcomes


def test_missing_peers_fail_under_require_peers() -> None:
    code, outcomes = run_without_peers(required=True)
    assert sorted(outcomes) == sorted(NEEDS_A_PEER)
    for node, hint in NEEDS_A_PEER.items():
        outcome, text = outcomes[node]
        assert outcome == "failed", f"{node} {outcome} without its peer under {REQUIRE_PEERS}=1"
        assert hint in text and f"{REQUIRE_PEERS}=1" in text, text
    assert code == 1


def test_missing_peers_are_skipped_for_a_developer() -> None:
    code, outcomes = run_without_peers(required=False)
    assert sorted(outcomes) == sorted(NEEDS_A_PEER)
    for node, hint in NEEDS_A_PEER.items():
        outcome, text = outcomes[node]
        assert outcome == "skipped", f"{node} {outcome} without its peer: {text}"
        assert hint in text, text
    assert code == 0
