"""The coordinator's memory follows the batches in flight, not the archive (issue 14)."""

from __future__ import annotations

import signal
import tracemalloc
from array import array
from pathlib import Path

import dicom_fastsend as fs
from dicom_fastsend.engine.coordinator import Coordinator
from dicom_fastsend.engine.results import FileResult, Outcome, SendSummary

FILES = 1_000_000


def test_swapping_the_sigint_handler_costs_the_same_after_a_million_files() -> None:
    # signal.signal() returns the handler it replaces as a signal.Handlers
    # member when it is one; for the coordinator's bound method the failed
    # lookup formats a ValueError with repr() of the method, so of the
    # coordinator and its summary. That happens when a worker starts (SIGINT
    # ignored while it forks) and when run() restores the handler at the end:
    # with the summary of a million files it was a string of every C-STORE
    # latency (some 80 MB at the peak, seconds of CPU). It must not depend on
    # the size of the run.
    summary = SendSummary(latencies=array("f", bytes(4 * FILES)))
    summary.noted = [
        FileResult(f"/archive/{n}.dcm", Outcome.FAILED, "a reason") for n in range(1000)
    ]
    peer = fs.PeerConfig(host="127.0.0.1", port=104, called_ae_title="STORESCP")
    coordinator = Coordinator(
        fs.SendConfig(peer=peer, inputs=(Path("/archive"),), log_dir=None), summary=summary
    )
    original = signal.getsignal(signal.SIGINT)
    tracemalloc.start()
    try:
        previous = signal.signal(signal.SIGINT, coordinator._on_sigint)  # as run() starts
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a worker is started
        signal.signal(signal.SIGINT, coordinator._on_sigint)
        signal.signal(signal.SIGINT, previous)  # as run() ends
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        signal.signal(signal.SIGINT, original)
    assert peak < 100_000, f"{peak} bytes allocated to swap the SIGINT handler"
