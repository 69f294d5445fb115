"""Waiting for something the test can observe, instead of sleeping and hoping.

A fixed ``time.sleep`` before an assertion is either too short on a loaded CI
machine (a flaky failure) or longer than needed everywhere else; it also
cannot say what it was waiting for. :func:`wait_until` polls a condition the
test can see (a count at the receiver, a line in the session log, a file on
disk) and fails, naming that condition, only when a generous deadline passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL = 0.02  # seconds between checks: short next to anything the tests wait for


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    *,
    state: Callable[[], object] | None = None,
) -> T:
    """Return ``predicate()``'s first truthy value; fail after `timeout` s naming `what`.

    `what` completes "timed out after N s waiting for ...", e.g. "2 worker
    processes to start". `state`, if given, describes what was seen instead
    (e.g. the receiver's count) for the failure message.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            seen = f"; last seen: {state()}" if state is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{seen}")
        time.sleep(POLL)
