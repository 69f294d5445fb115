"""FileResult crosses a pipe for every file: its pickling must keep every field."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from dicom_fastsend.engine.results import FileResult, Outcome


@pytest.mark.parametrize("outcome", list(Outcome))
def test_a_file_result_survives_pickling_with_every_field(outcome: Outcome) -> None:
    # A distinct, non-default value in every field, so a field left out of
    # __reduce__ (or two swapped) comes back different.
    result = FileResult(
        path="/archive/study/1.dcm",
        outcome=outcome,
        reason="a reason",
        status=0xB007,
        sop_instance_uid="1.2.3.4",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        bytes_sent=12345,
        seconds=0.25,
        worker=3,
        attempts=2,
        coerced=(("PatientID", "OLD", "NEW"), ("IssuerOfPatientID", None, "H")),
    )
    assert len(result.__reduce__()[1]) == len(dataclasses.fields(FileResult))
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        copy = pickle.loads(pickle.dumps(result, protocol=protocol))
        assert copy == result
        assert copy.outcome is outcome


def test_latency_percentiles_are_the_same_for_a_large_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # Past LARGE_SAMPLE the percentiles come from a sorted copy of the 4-byte
    # values (numpy), not a list of Python floats: the same figures, a tenth
    # of the memory at the end of a run of a million files.
    from array import array

    from dicom_fastsend.engine import results
    from dicom_fastsend.engine.results import SendSummary

    summary = SendSummary()
    summary.latencies = array("f", ((n * 7919) % 10007 / 1e4 for n in range(20_000)))
    monkeypatch.setattr(results, "LARGE_SAMPLE", 10**9)
    as_list = summary.latency_ms()
    monkeypatch.setattr(results, "LARGE_SAMPLE", 100)
    as_array = summary.latency_ms()
    assert as_array["count"] == as_list["count"] == 20_000
    for key in ("p50", "p95", "p99", "max"):
        assert as_array[key] == as_list[key], key
    assert abs(as_array["mean"] - as_list["mean"]) < 1e-9 * as_list["mean"]


def test_latency_percentiles_of_a_million_files_take_no_copy_of_them() -> None:
    # Taken at the very end of a run, in the coordinator: what they allocate
    # is the run's peak memory, which must not grow with the files sent (a
    # sorted copy of a million 4-byte values was 4 MB).
    import tracemalloc
    from array import array

    import numpy  # imported by latency_ms on a large run: not what is measured

    from dicom_fastsend.engine.results import LARGE_SAMPLE, SendSummary

    files = 1_000_000
    assert files > LARGE_SAMPLE
    summary = SendSummary()
    summary.latencies = array("f", ((n * 7919) % 10007 / 1e4 for n in range(files)))
    expected = sorted(summary.latencies)
    tracemalloc.start()
    try:
        first = summary.latency_ms()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100_000, f"{peak} bytes allocated for the percentiles of {files} files"
    assert numpy.float32(first["max"] / 1000) == numpy.float32(expected[-1])
    assert first["p50"] == expected[files // 2 - 1] * 1000
    assert summary.latency_ms() == first  # sorted in place: the same figures again
