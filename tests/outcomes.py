"""What a worker under test reported to its coordinator's end of the pipe."""

from __future__ import annotations

from typing import Any

from dicom_fastsend.engine.messages import Outcomes
from dicom_fastsend.engine.results import FileResult


def received_outcomes(coordinator: Any) -> dict[str, FileResult]:
    """Every file's result the pipe holds, by path: read until a second passes
    without a message (the worker has reported before this is called)."""
    outcomes: dict[str, FileResult] = {}
    while coordinator.poll(1):
        message = coordinator.recv()
        if isinstance(message, Outcomes):
            outcomes.update({d.result.path: d.result for d in message.done})
    return outcomes
