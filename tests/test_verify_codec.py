"""Verification's DIMSE messages and data sets, checked against pydicom's decoding.

N-ACTION, N-EVENT-REPORT and C-FIND command sets (PS3.7 10.3.4, 10.3.1,
9.3.2), the Storage Commitment Action and Event Information (PS3.4 Table
J.3-1, J.3-2), the Study Root C-FIND Identifiers (PS3.4 C.6.2.1) and the
SCP/SCU Role Selection sub-item (PS3.7 D.3.3.4). Pure: no peer.
"""

from __future__ import annotations

from io import BytesIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from dicom_fastsend.protocol import dataset
from dicom_fastsend.protocol.dataset import (
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH_MODEL,
    STUDY_ROOT_FIND,
    CommitmentResult,
    DatasetError,
    Failure,
    Reference,
)
from dicom_fastsend.protocol.dimse import (
    Command,
    CommandField,
    c_find_rq,
    n_action_rq,
    n_action_rsp,
    n_event_report_rq,
    n_event_report_rsp,
    status_text,
)
from dicom_fastsend.protocol.pdu import (
    AAssociateAC,
    AAssociateRQ,
    PresentationContextRQ,
    RoleSelection,
    UserInformation,
    decode_pdu,
    encode,
)

# UIDs: a root then numeric components without leading zeros (PS3.5 9.1), at most 64 bytes.
_component = st.integers(min_value=0, max_value=10**6).map(str)
uids = st.lists(_component, min_size=2, max_size=6).map(lambda c: "1.2." + ".".join(c))
references = st.lists(st.builds(Reference, uids, uids), min_size=0, max_size=20)
failures = st.lists(
    st.builds(Failure, uids, uids, st.sampled_from([0x0110, 0x0112, 0x0213, 0x0122, 0x0119])),
    max_size=10,
)


def _pydicom(data: bytes, explicit: bool) -> Dataset:
    return read_dataset(BytesIO(data), is_implicit_VR=not explicit, is_little_endian=True)


def _pydicom_bytes(ds: Dataset, explicit: bool) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = not explicit
    write_dataset(buffer, ds)
    return buffer.getvalue()


# ------------------------------------------------------------------ command sets


def _command_dataset(command: Command) -> Dataset:
    # Command sets are Implicit VR Little Endian (PS3.7 6.3.1); pydicom knows group 0000.
    return _pydicom(command.encode(), explicit=False)


def test_n_action_rq_decodes_with_pydicom() -> None:
    ds = _command_dataset(
        n_action_rq(7, STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_INSTANCE, 1)
    )
    assert ds.CommandField == 0x0130
    assert ds.MessageID == 7
    assert ds.RequestedSOPClassUID == STORAGE_COMMITMENT_PUSH_MODEL
    assert ds.RequestedSOPInstanceUID == STORAGE_COMMITMENT_INSTANCE
    assert ds.ActionTypeID == 1
    assert ds.CommandDataSetType != 0x0101  # the Action Information follows


def test_command_group_length_counts_the_rest() -> None:
    encoded = n_action_rq(7, STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_INSTANCE, 1).encode()
    assert _pydicom(encoded, explicit=False).CommandGroupLength == len(encoded) - 12


def test_n_event_report_rsp_answers_the_request() -> None:
    request = Command.decode(
        n_event_report_rq(9, STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_INSTANCE, 2).encode()
    )
    assert request.command_field == CommandField.N_EVENT_REPORT_RQ
    ds = _command_dataset(n_event_report_rsp(request, 0x0115, "unknown Transaction UID"))
    assert ds.CommandField == 0x8100
    assert ds.MessageIDBeingRespondedTo == 9
    assert ds.Status == 0x0115
    assert ds.EventTypeID == 2
    assert ds.AffectedSOPClassUID == STORAGE_COMMITMENT_PUSH_MODEL
    assert ds.AffectedSOPInstanceUID == STORAGE_COMMITMENT_INSTANCE
    assert ds.ErrorComment == "unknown Transaction UID"
    assert ds.CommandDataSetType == 0x0101
    assert status_text(0x0115) == "0x0115 Failure: Invalid argument value"


def test_n_action_rsp_and_c_find_rq() -> None:
    request = n_action_rq(3, STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_INSTANCE, 1)
    ds = _command_dataset(n_action_rsp(request, 0x0000))
    assert (ds.CommandField, ds.MessageIDBeingRespondedTo, ds.Status) == (0x8130, 3, 0)
    assert ds.AffectedSOPInstanceUID == STORAGE_COMMITMENT_INSTANCE
    find = _command_dataset(c_find_rq(5, STUDY_ROOT_FIND))
    assert (find.CommandField, find.MessageID, find.Priority) == (0x0020, 5, 0)
    assert find.AffectedSOPClassUID == STUDY_ROOT_FIND


# ------------------------------------------------------------------ Storage Commitment


@settings(max_examples=50, deadline=None)
@given(uids, references, st.booleans())
def test_commitment_request_decodes_with_pydicom(
    transaction: str, refs: list[Reference], explicit: bool
) -> None:
    ds = _pydicom(dataset.commitment_request(transaction, refs, explicit), explicit)
    assert ds.TransactionUID == transaction
    assert [
        (i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in ds.ReferencedSOPSequence
    ] == [(r.sop_class_uid, r.sop_instance_uid) for r in refs]
    assert dataset.decode_commitment_request(
        dataset.commitment_request(transaction, refs, explicit), explicit
    ) == (transaction, tuple(refs))


@settings(max_examples=50, deadline=None)
@given(uids, references, failures, st.booleans(), st.booleans())
def test_commitment_report_from_pydicom(
    transaction: str,
    committed: list[Reference],
    failed: list[Failure],
    explicit: bool,
    undefined_lengths: bool,
) -> None:
    """An Event Information written by pydicom (as an SCP would) reads back the same."""
    ds = Dataset()
    ds.TransactionUID = transaction
    if committed:
        ds.ReferencedSOPSequence = [
            _item(
                ReferencedSOPClassUID=r.sop_class_uid, ReferencedSOPInstanceUID=r.sop_instance_uid
            )
            for r in committed
        ]
    if failed:
        ds.FailedSOPSequence = [
            _item(
                ReferencedSOPClassUID=f.sop_class_uid,
                ReferencedSOPInstanceUID=f.sop_instance_uid,
                FailureReason=f.reason,
            )
            for f in failed
        ]
    if undefined_lengths:
        # Sequences and items of undefined length, as DCMTK writes them (PS3.5 7.5.1).
        for name in ("ReferencedSOPSequence", "FailedSOPSequence"):
            if name in ds:
                ds[name].is_undefined_length = True
                for item in ds[name].value:
                    item.is_undefined_length_sequence_item = True
    result = dataset.decode_commitment_report(_pydicom_bytes(ds, explicit), explicit)
    assert result == CommitmentResult(transaction, tuple(committed), tuple(failed))
    # And ours, decoded by pydicom.
    ours = _pydicom(dataset.commitment_report(result, explicit), explicit)
    assert [int(i.FailureReason) for i in ours.get("FailedSOPSequence", [])] == [
        f.reason for f in failed
    ]


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def test_failure_reason_text() -> None:
    assert dataset.failure_reason_text(0x0112) == "0x0112 No such object instance"
    assert dataset.failure_reason_text(0x0213) == "0x0213 Resource limitation"
    assert dataset.failure_reason_text(0x9999).startswith("0x9999 ")


def test_transaction_uids_are_unique_and_valid() -> None:
    made = {dataset.new_transaction_uid() for _ in range(100)}
    assert len(made) == 100
    for uid in made:
        assert len(uid) <= 64 and uid.startswith("2.25.")
        assert all(part == "0" or not part.startswith("0") for part in uid.split("."))


def test_truncated_report_is_an_error() -> None:
    data = dataset.commitment_report(
        CommitmentResult("1.2.3", (Reference("1.2", "1.2.4"),)), explicit=False
    )
    with pytest.raises(DatasetError):
        dataset.decode_commitment_report(data[:-5], explicit=False)


# ------------------------------------------------------------------ C-FIND


@settings(max_examples=50, deadline=None)
@given(uids, uids, st.sampled_from(["STUDY", "SERIES", "IMAGE"]), st.booleans())
def test_find_identifier_decodes_with_pydicom(
    study: str, series: str, level: str, explicit: bool
) -> None:
    ds = _pydicom(dataset.find_identifier(level, study, series, explicit), explicit)
    assert ds.QueryRetrieveLevel == level
    assert ds.StudyInstanceUID == study
    if level == "STUDY":
        assert "NumberOfStudyRelatedInstances" in ds and ds.NumberOfStudyRelatedInstances in (
            "",
            None,
        )
    elif level == "SERIES":
        assert ds.SeriesInstanceUID in ("", None)
        assert "NumberOfSeriesRelatedInstances" in ds
    else:
        assert ds.SeriesInstanceUID == series
        assert "SOPInstanceUID" in ds and ds.SOPInstanceUID in ("", None)


@settings(max_examples=50, deadline=None)
@given(uids, uids, uids, st.integers(min_value=0, max_value=99999), st.booleans())
def test_match_from_pydicom(study: str, series: str, sop: str, count: int, explicit: bool) -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = sop
    ds.NumberOfSeriesRelatedInstances = count
    ds.PatientName = "Doe^John"  # an element verification does not ask for: skipped over
    match = dataset.decode_match(_pydicom_bytes(ds, explicit), explicit)
    assert (match.study_instance_uid, match.series_instance_uid, match.sop_instance_uid) == (
        study,
        series,
        sop,
    )
    assert match.related_instances == count


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="PATIENT"):
        dataset.find_identifier("PATIENT", "1.2.3")


# ------------------------------------------------------------------ role selection


@given(uids, st.booleans(), st.booleans())
def test_role_selection_round_trip(uid: str, scu: bool, scp: bool) -> None:
    role = RoleSelection(uid, scu, scp)
    rq = AAssociateRQ(
        "FASTSEND",
        "ORTHANC",
        (PresentationContextRQ(1, STORAGE_COMMITMENT_PUSH_MODEL, ("1.2.840.10008.1.2",)),),
        UserInformation(16384, "1.2.3", role_selections=(role,)),
    )
    raw = encode(rq)
    decoded = decode_pdu(raw[0], memoryview(raw)[6:])
    assert isinstance(decoded, AAssociateRQ)
    assert decoded.user_information.role_selections == (role,)
    ac = AAssociateAC("FASTSEND", "ORTHANC", (), UserInformation(16384, role_selections=(role,)))
    raw = encode(ac)
    decoded_ac = decode_pdu(raw[0], memoryview(raw)[6:])
    assert isinstance(decoded_ac, AAssociateAC)
    assert decoded_ac.user_information.role_selections == (role,)


def test_role_selection_bytes() -> None:
    """PS3.7 D.3.3.4 Table D.3-9: 54H, reserved, length, UID length, UID, SCU-role, SCP-role."""
    raw = encode(
        AAssociateAC(
            "A", "B", (), UserInformation(0, role_selections=(RoleSelection("1.2.3", False, True),))
        )
    )
    assert b"\x54\x00\x00\x09\x00\x05" + b"1.2.3" + b"\x00\x01" in raw
