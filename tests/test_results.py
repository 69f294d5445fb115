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
    )
    assert len(result.__reduce__()[1]) == len(dataclasses.fields(FileResult))
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        copy = pickle.loads(pickle.dumps(result, protocol=protocol))
        assert copy == result
        assert copy.outcome is outcome
