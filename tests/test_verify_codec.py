"""Verification's DIMSE messages and data sets, checked against pydicom's decoding.

N-ACTION, N-EVENT-REPORT and C-FIND command sets (PS3.7 10.3.4, 10.3.1,
9.3.2), the Storage Commitment Action and Event Information (PS3.4 Table
J.3-1, J.3-2), the Study Root C-FIND Identifiers (PS3.4 C.6.2.1) and the
SCP/SCU Role Selection sub-item (PS3.7 D.3.3.4). Pure: no peer.
"""

from __future__ import annotations

import struct
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
    TAG_EVENT_TYPE_ID,
    Command,
    CommandField,
    DIMSEError,
    MessageAssembler,
    c_find_rq,
    n_action_rq,
    n_action_rsp,
    n_event_report_rq,
    n_event_report_rsp,
    status_text,
)
from dicom_fastsend.protocol.hotpath import MAX_NESTING_DEPTH
from dicom_fastsend.protocol.pdu import (
    PDV,
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


# ------------------------------------------------------------------ hostile data sets


def _nested(depth: int, explicit: bool) -> bytes:
    """Referenced SOP Sequences nested ``depth`` deep, sequences and items of undefined length."""
    header = struct.pack("<HH", 0x0008, 0x1199) + (b"SQ\x00\x00" if explicit else b"")
    opening = (
        header + struct.pack("<I", 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    )
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return opening * depth + closing * depth


@pytest.mark.parametrize("explicit", [False, True])
def test_deep_nesting_is_a_dataset_error_not_a_recursion_error(explicit: bool) -> None:
    """1500 levels (about 50 KB) once exhausted the interpreter's stack (RecursionError)."""
    data = _nested(1500, explicit)
    with pytest.raises(DatasetError, match=f"nested deeper than {MAX_NESTING_DEPTH}"):
        dataset.decode_commitment_report(data, explicit)
    with pytest.raises(DatasetError, match="nested deeper"):
        dataset.decode_match(data, explicit)
    # Within the limit it decodes (pydicom agrees on the depth).
    shallow = _nested(MAX_NESTING_DEPTH - 1, explicit)
    item = dataset.decode(shallow, explicit)
    depth = 0
    while item:
        (items,) = item.values()
        assert isinstance(items, list)
        item = items[0]
        depth += 1
    assert depth == MAX_NESTING_DEPTH - 1
    assert _depth(_pydicom(shallow, explicit)) == MAX_NESTING_DEPTH - 1


def _depth(ds: Dataset) -> int:
    depth = 0
    while "ReferencedSOPSequence" in ds:
        ds = ds.ReferencedSOPSequence[0]
        depth += 1
    return depth


def test_un_of_undefined_length_is_implicit_vr_inside() -> None:
    """PS3.5 6.2.2: in Explicit VR, a UN of undefined length holds Implicit VR LE items."""
    item = dataset.encode(
        {dataset.TAG_REFERENCED_SOP_INSTANCE_UID: "1.2.3.4"}, explicit=False
    )  # Implicit VR inside
    data = (
        dataset.encode({dataset.TAG_TRANSACTION_UID: "1.2.3"}, explicit=True)
        + struct.pack("<HH", 0x0008, 0x1199)
        + b"UN\x00\x00"
        + struct.pack("<I", 0xFFFFFFFF)
        + struct.pack("<HHI", 0xFFFE, 0xE000, len(item))
        + item
        + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )
    result = dataset.decode_commitment_report(data, explicit=True)
    assert result.transaction_uid == "1.2.3"
    assert result.committed == (Reference("", "1.2.3.4"),)
    # pydicom reads the same (its UN-as-sequence handling, PS3.5 6.2.2).
    ds = _pydicom(data, explicit=True)
    assert ds[0x00081199].VR in ("SQ", "UN")


def test_n_event_report_rsp_echoes_no_event_type_id_the_request_lacked() -> None:
    """PS3.7 10.1.1.1.5: Event Type ID is optional in the response; never an invented 0."""
    request = n_event_report_rq(9, STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_INSTANCE, 1)
    del request.elements[TAG_EVENT_TYPE_ID]
    ds = _command_dataset(n_event_report_rsp(Command.decode(request.encode()), 0x0113))
    assert "EventTypeID" not in ds
    assert ds.Status == 0x0113


def test_message_assembler_bounds_a_data_set() -> None:
    """A receiver of reports keeps at most max_dataset bytes of one data set."""
    command = n_event_report_rq(1, STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_INSTANCE, 1)
    assembler = MessageAssembler(max_dataset=1000)
    assert assembler.feed((PDV(1, True, True, command.encode()),)) == []
    assembler.feed((PDV(1, False, False, b"\x00" * 1000),))
    with pytest.raises(DIMSEError, match="more than 1000 bytes"):
        assembler.feed((PDV(1, False, False, b"\x00" * 2),))
