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
