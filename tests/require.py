"""What a test does when a peer it needs is missing: skip it, or fail it under CI.

A developer without DCMTK, Orthanc or an optional library still runs the rest
of the suite: the tests that need the missing peer are skipped, each with the
command that installs it. Under ``FASTSEND_REQUIRE_PEERS=1`` (tests/run.sh sets
it, and CI runs tests/run.sh) the same test fails instead, so a broken install
cannot turn a quarter of the suite into silent skips.

Every skip for a missing peer goes through :func:`missing_peer`; this module
imports nothing but pytest, so the pure unit tests can use it too.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

REQUIRE_PEERS = "FASTSEND_REQUIRE_PEERS"

DCMTK_HINT = (
    "DCMTK is not installed: `sudo apt-get install dcmtk` (or run `bash tests/run.sh`, "
    "which installs it)"
)
ORTHANC_HINT = (
    "Orthanc is not installed: `sudo apt-get install orthanc` (or run `bash tests/run.sh`, "
    "which installs it)"
)
TEST_EXTRA_HINT = "pip install -e '.[test]'"


def peers_required() -> bool:
    """Whether a missing peer fails the test (FASTSEND_REQUIRE_PEERS set and not 0)."""
    return os.environ.get(REQUIRE_PEERS, "").strip() not in ("", "0")


def missing_peer(what: str, hint: str) -> NoReturn:
    """Skip the calling test because `what` is missing, or fail it when peers are required.

    Also usable at module level (a test module whose every test needs `what`).
    """
    message = f"{what}: {hint}"
    if peers_required():
        pytest.fail(
            f"{message}\n({REQUIRE_PEERS}=1: a missing peer is a failure, not a skip)",
            pytrace=False,
        )
    pytest.skip(message, allow_module_level=True)


def require_module(name: str, hint: str = TEST_EXTRA_HINT) -> ModuleType:
    """``pytest.importorskip`` that honours FASTSEND_REQUIRE_PEERS."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing_peer(f"cannot import {name} ({exc})", hint)
