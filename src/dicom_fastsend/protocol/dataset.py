"""The few data sets verification exchanges, encoded and decoded without I/O.

Storage Commitment (PS3.4 Annex J) sends an Action Information of a
Transaction UID and a Referenced SOP Sequence, and receives an Event
Information with the same UID, the instances committed (Referenced SOP
Sequence) and those not (Failed SOP Sequence, with a Failure Reason). A
C-FIND (PS3.4 C.4.1) sends an Identifier and receives one per match.

Only Implicit and Explicit VR Little Endian (PS3.5 A.1, A.2) are handled:
they are what fastsend proposes and accepts for these SOP classes. Values
are strings (text and UI), ints (US, UL, SS, SL), bytes (anything else) or,
for sequences, lists of items (dicts by tag).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import FastsendError
from .hotpath import MAX_NESTING_DEPTH
from .uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN

# Storage Commitment Push Model (PS3.4 J.3, PS3.6 Annex A).
STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # its well-known SOP Instance
REQUEST_STORAGE_COMMITMENT = 1  # Action Type ID (PS3.4 J.3.2.1)
EVENT_ALL_SUCCESS = 1  # Event Type ID: Storage Commitment Request Successful (J.3.3.1)
EVENT_FAILURES_EXIST = 2  # Event Type ID: Storage Commitment Request Complete - Failures Exist
# Study Root Query/Retrieve Information Model - FIND (PS3.4 C.6.2).
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"

TAG_QUERY_RETRIEVE_LEVEL = 0x00080052
TAG_FAILURE_REASON = 0x00081197
TAG_FAILED_SOP_SEQUENCE = 0x00081198
TAG_REFERENCED_SOP_SEQUENCE = 0x00081199
TAG_TRANSACTION_UID = 0x00081195
TAG_REFERENCED_SOP_CLASS_UID = 0x00081150
TAG_REFERENCED_SOP_INSTANCE_UID = 0x00081155
TAG_SOP_CLASS_UID = 0x00080016
TAG_SOP_INSTANCE_UID = 0x00080018
TAG_STUDY_INSTANCE_UID = 0x0020000D
TAG_SERIES_INSTANCE_UID = 0x0020000E
TAG_NUMBER_OF_STUDY_RELATED_INSTANCES = 0x00201208
TAG_NUMBER_OF_SERIES_RELATED_INSTANCES = 0x00201209
TAG_RETRIEVE_AE_TITLE = 0x00080054
TAG_SPECIFIC_CHARACTER_SET = 0x00080005

# VRs of the elements these data sets carry (PS3.6 Table 6-1), for Implicit VR.
_VR: dict[int, str] = {
    TAG_SPECIFIC_CHARACTER_SET: "CS",
    TAG_SOP_CLASS_UID: "UI",
    TAG_SOP_INSTANCE_UID: "UI",
    TAG_QUERY_RETRIEVE_LEVEL: "CS",
    TAG_RETRIEVE_AE_TITLE: "AE",
    TAG_REFERENCED_SOP_CLASS_UID: "UI",
    TAG_REFERENCED_SOP_INSTANCE_UID: "UI",
    TAG_TRANSACTION_UID: "UI",
    TAG_FAILURE_REASON: "US",
    TAG_FAILED_SOP_SEQUENCE: "SQ",
    TAG_REFERENCED_SOP_SEQUENCE: "SQ",
    TAG_STUDY_INSTANCE_UID: "UI",
    TAG_SERIES_INSTANCE_UID: "UI",
    TAG_NUMBER_OF_STUDY_RELATED_INSTANCES: "IS",
    TAG_NUMBER_OF_SERIES_RELATED_INSTANCES: "IS",
    0x00080020: "DA",  # Study Date
    0x00080050: "SH",  # Accession Number
    0x00100020: "LO",  # Patient ID
    0x00200011: "IS",  # Series Number
    0x00200013: "IS",  # Instance Number
    0x00081111: "SQ",  # Referenced Performed Procedure Step Sequence
    0x00404005: "DT",  # Scheduled Procedure Step Start DateTime
}
_TEXT_VRS = frozenset(
    ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UT")
)
_INT_VRS = {"US": "<H", "UL": "<I", "SS": "<h", "SL": "<i"}
# Explicit VR: these have a reserved 2 bytes and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV")
)
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF

Value = str | int | bytes | list["Item"]
Item = dict[int, Value]


class DatasetError(FastsendError):
    """A data set from the peer that cannot be decoded."""


def explicit_vr(transfer_syntax: str) -> bool:
    """Whether a data set in this (accepted) transfer syntax is Explicit VR."""
    if transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN:
        return False
    if transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN:
        return True
    raise DatasetError(f"data sets in transfer syntax {transfer_syntax} are not handled")


# ------------------------------------------------------------------ encoding


def encode(elements: Mapping[int, Value], explicit: bool = False) -> bytes:
    """A data set in Implicit (default) or Explicit VR Little Endian, tags ascending."""
    return b"".join(_encode_element(tag, elements[tag], explicit) for tag in sorted(elements))


def _encode_element(tag: int, value: Value, explicit: bool) -> bytes:
    vr = _VR.get(tag)
    if vr is None:
        raise DatasetError(f"no VR known for ({tag >> 16:04X},{tag & 0xFFFF:04X})")
    header = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if vr == "SQ":
        if not isinstance(value, list):
            raise DatasetError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is a sequence")
        body = b"".join(
            struct.pack("<HHI", 0xFFFE, 0xE000, len(item_bytes)) + item_bytes
            for item_bytes in (encode(item, explicit) for item in value)
        )
    elif vr in _INT_VRS and isinstance(value, int):
        body = struct.pack(_INT_VRS[vr], value)
    elif isinstance(value, str):
        body = value.encode("ascii")
        if len(body) % 2:
            # PS3.5 6.2: UI pads with NUL, text with a space, to an even length.
            body += b"\x00" if vr == "UI" else b" "
    elif isinstance(value, bytes):
        body = value
    else:
        raise DatasetError(f"cannot encode {value!r} as {vr}")
    if not explicit:
        return header + struct.pack("<I", len(body)) + body
    if vr in _LONG_VRS:
        return header + vr.encode() + b"\x00\x00" + struct.pack("<I", len(body)) + body
    return header + vr.encode() + struct.pack("<H", len(body)) + body


# ------------------------------------------------------------------ decoding


def decode(data: bytes | memoryview, explicit: bool = False) -> Item:
    """A data set's elements by tag; sequences become lists of items.

    Raises DatasetError for anything malformed, including sequences nested
    deeper than MAX_NESTING_DEPTH (the hot path's limit): the data comes
    from a peer, and each level is a Python frame.
    """
    item, end = _decode(memoryview(data), 0, len(data), explicit, until=None, depth=0)
    return item


def _decode(
    view: memoryview, pos: int, end: int, explicit: bool, until: int | None, depth: int
) -> tuple[Item, int]:
    """Elements from ``pos`` to ``end``, or up to the delimiter tag ``until``."""
    if depth > MAX_NESTING_DEPTH:
        raise DatasetError(f"sequences nested deeper than {MAX_NESTING_DEPTH}")
    elements: Item = {}
    while pos < end:
        if end - pos < 8:
            raise DatasetError(f"{end - pos} stray bytes at offset {pos}")
        group, element = struct.unpack_from("<HH", view, pos)
        tag = (group << 16) | element
        if until is not None and tag == until:
            return elements, pos + 8
        if explicit and group != 0xFFFE:
            vr = bytes(view[pos + 4 : pos + 6]).decode("ascii", "replace")
            if vr in _LONG_VRS:
                if end - pos < 12:
                    raise DatasetError(f"truncated element header at offset {pos}")
                (length,) = struct.unpack_from("<I", view, pos + 8)
                pos += 12
            else:
                (length,) = struct.unpack_from("<H", view, pos + 6)
                pos += 8
        else:
            (length,) = struct.unpack_from("<I", view, pos + 4)
            pos += 8
            vr = _VR.get(tag) or ("SQ" if length == _UNDEFINED else "UN")
        if vr == "SQ" or (vr == "UN" and length == _UNDEFINED):
            # PS3.5 6.2.2: a UN of undefined length is a sequence whose items
            # are Implicit VR Little Endian, whatever the transfer syntax.
            items, pos = _decode_sequence(
                view, pos, end, length, explicit and vr != "UN", tag, depth + 1
            )
            elements[tag] = items
            continue
        if length == _UNDEFINED or length > end - pos:
            raise DatasetError(
                f"({group:04X},{element:04X}) says {length} bytes, {end - pos} remain"
            )
        raw = view[pos : pos + length]
        pos += length
        elements[tag] = _value(vr, raw, tag)
    if until is not None:
        raise DatasetError("a sequence or item without its delimiter")
    return elements, pos


def _decode_sequence(
    view: memoryview, pos: int, end: int, length: int, explicit: bool, tag: int, depth: int
) -> tuple[list[Item], int]:
    stop = end if length == _UNDEFINED else pos + length
    if stop > end:
        raise DatasetError(f"sequence ({tag >> 16:04X},{tag & 0xFFFF:04X}) runs past its data")
    items: list[Item] = []
    while pos < stop:
        if stop - pos < 8:
            raise DatasetError(f"{stop - pos} stray bytes in a sequence")
        group, element, item_length = struct.unpack_from("<HHI", view, pos)
        marker = (group << 16) | element
        pos += 8
        if marker == _SEQUENCE_END:
            return items, pos
        if marker != _ITEM:
            raise DatasetError(f"({group:04X},{element:04X}) where an item was expected")
        if item_length == _UNDEFINED:
            item, pos = _decode(view, pos, stop, explicit, until=_ITEM_END, depth=depth)
        else:
            if item_length > stop - pos:
                raise DatasetError("an item runs past its sequence")
            item, _ = _decode(view, pos, pos + item_length, explicit, until=None, depth=depth)
            pos += item_length
        items.append(item)
    if length == _UNDEFINED:
        raise DatasetError("a sequence of undefined length without its delimiter")
    return items, pos


def _value(vr: str, raw: memoryview, tag: int) -> Value:
    if vr in _INT_VRS:
        size = struct.calcsize(_INT_VRS[vr])
        if len(raw) < size:
            raise DatasetError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {vr} of {len(raw)} bytes")
        return int(struct.unpack_from(_INT_VRS[vr], raw)[0])
    if vr in _TEXT_VRS:
        return bytes(raw).rstrip(b"\x00 ").decode("ascii", "replace").strip()
    return bytes(raw)


def _text(item: Mapping[int, Value], tag: int) -> str:
    value = item.get(tag, "")
    return value if isinstance(value, str) else ""


# ------------------------------------------------------------------ Storage Commitment


@dataclass(frozen=True, slots=True)
class Reference:
    """An instance named in a Storage Commitment data set."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True, slots=True)
class Failure:
    """An instance in the Failed SOP Sequence, with its Failure Reason (PS3.3 C.14.1.1)."""

    sop_class_uid: str
    sop_instance_uid: str
    reason: int


@dataclass(frozen=True, slots=True)
class CommitmentResult:
    """The Event Information of a Storage Commitment N-EVENT-REPORT (PS3.4 Table J.3-2)."""

    transaction_uid: str
    committed: tuple[Reference, ...] = ()
    failed: tuple[Failure, ...] = ()
    retrieve_ae_title: str = ""


# PS3.3 C.14.1.1 (SOP Instance Reference Macro, Failure Reason): the meaning of each.
FAILURE_REASONS: dict[int, str] = {
    0x0110: "Processing failure",
    0x0112: "No such object instance",
    0x0213: "Resource limitation",
    0x0122: "Referenced SOP Class not supported",
    0x0119: "Class / Instance conflict",
    0x0131: "Duplicate transaction UID",
}


def failure_reason_text(reason: int) -> str:
    """'0x0112 No such object instance', as the inventory keeps it (files.commit_reason)."""
    return f"0x{reason:04X} {FAILURE_REASONS.get(reason, 'Failure Reason not in PS3.3 C.14.1.1')}"


def new_transaction_uid() -> str:
    """A UID under 2.25 made from a random UUID (PS3.5 B.2): unique without a registry."""
    return f"2.25.{uuid.uuid4().int}"


def commitment_request(
    transaction_uid: str, references: Sequence[Reference], explicit: bool = False
) -> bytes:
    """The Action Information of a Storage Commitment N-ACTION-RQ (PS3.4 Table J.3-1)."""
    return encode(
        {
            TAG_TRANSACTION_UID: transaction_uid,
            TAG_REFERENCED_SOP_SEQUENCE: [
                {
                    TAG_REFERENCED_SOP_CLASS_UID: r.sop_class_uid,
                    TAG_REFERENCED_SOP_INSTANCE_UID: r.sop_instance_uid,
                }
                for r in references
            ],
        },
        explicit,
    )


def commitment_report(result: CommitmentResult, explicit: bool = False) -> bytes:
    """The Event Information of an N-EVENT-REPORT-RQ (PS3.4 Table J.3-2): for tests and SCPs."""
    elements: Item = {TAG_TRANSACTION_UID: result.transaction_uid}
    if result.committed:
        elements[TAG_REFERENCED_SOP_SEQUENCE] = [
            {
                TAG_REFERENCED_SOP_CLASS_UID: r.sop_class_uid,
                TAG_REFERENCED_SOP_INSTANCE_UID: r.sop_instance_uid,
            }
            for r in result.committed
        ]
    if result.failed:
        elements[TAG_FAILED_SOP_SEQUENCE] = [
            {
                TAG_REFERENCED_SOP_CLASS_UID: f.sop_class_uid,
                TAG_REFERENCED_SOP_INSTANCE_UID: f.sop_instance_uid,
                TAG_FAILURE_REASON: f.reason,
            }
            for f in result.failed
        ]
    if result.retrieve_ae_title:
        elements[TAG_RETRIEVE_AE_TITLE] = result.retrieve_ae_title
    return encode(elements, explicit)


def decode_commitment_request(
    data: bytes | memoryview, explicit: bool = False
) -> tuple[str, tuple[Reference, ...]]:
    """(Transaction UID, references) of an Action Information: the SCP's side, for tests."""
    item = decode(data, explicit)
    return _text(item, TAG_TRANSACTION_UID), tuple(
        Reference(_text(i, TAG_REFERENCED_SOP_CLASS_UID), _text(i, TAG_REFERENCED_SOP_INSTANCE_UID))
        for i in _items(item, TAG_REFERENCED_SOP_SEQUENCE)
    )


def decode_commitment_report(data: bytes | memoryview, explicit: bool = False) -> CommitmentResult:
    """The Event Information of a Storage Commitment N-EVENT-REPORT-RQ."""
    item = decode(data, explicit)
    failed = []
    for i in _items(item, TAG_FAILED_SOP_SEQUENCE):
        reason = i.get(TAG_FAILURE_REASON)
        failed.append(
            Failure(
                _text(i, TAG_REFERENCED_SOP_CLASS_UID),
                _text(i, TAG_REFERENCED_SOP_INSTANCE_UID),
                # Absent or malformed: a failure all the same (Processing failure).
                reason if isinstance(reason, int) else 0x0110,
            )
        )
    return CommitmentResult(
        _text(item, TAG_TRANSACTION_UID),
        tuple(
            Reference(
                _text(i, TAG_REFERENCED_SOP_CLASS_UID), _text(i, TAG_REFERENCED_SOP_INSTANCE_UID)
            )
            for i in _items(item, TAG_REFERENCED_SOP_SEQUENCE)
        ),
        tuple(failed),
        _text(item, TAG_RETRIEVE_AE_TITLE),
    )


def _items(item: Mapping[int, Value], tag: int) -> list[Item]:
    value = item.get(tag, [])
    return value if isinstance(value, list) else []


# ------------------------------------------------------------------ C-FIND


@dataclass(frozen=True, slots=True)
class Match:
    """One C-FIND match, the return keys asked for (PS3.4 C.4.1.1.3.2)."""

    study_instance_uid: str
    series_instance_uid: str = ""
    sop_instance_uid: str = ""
    related_instances: int | None = None  # Number of Study/Series Related Instances
    elements: Item = field(default_factory=dict, compare=False)


def find_identifier(
    level: str, study_instance_uid: str, series_instance_uid: str = "", explicit: bool = False
) -> bytes:
    """A Study Root C-FIND Identifier (PS3.4 C.6.2.1) that verification needs.

    STUDY: this study and its Number of Study Related Instances; SERIES: the
    series of this study with their Number of Series Related Instances;
    IMAGE: the SOP Instance UIDs of this series. Unique keys above the level
    are single values (hierarchical query, PS3.4 C.4.1.2.1); an empty value
    is universal matching and asks for the attribute back.
    """
    elements: Item = {
        TAG_QUERY_RETRIEVE_LEVEL: level,
        TAG_STUDY_INSTANCE_UID: study_instance_uid,
    }
    if level == "STUDY":
        elements[TAG_NUMBER_OF_STUDY_RELATED_INSTANCES] = ""
    elif level == "SERIES":
        elements[TAG_SERIES_INSTANCE_UID] = ""
        elements[TAG_NUMBER_OF_SERIES_RELATED_INSTANCES] = ""
    elif level == "IMAGE":
        elements[TAG_SERIES_INSTANCE_UID] = series_instance_uid
        elements[TAG_SOP_INSTANCE_UID] = ""
    else:
        raise ValueError(f"Query/Retrieve Level {level!r} is not STUDY, SERIES or IMAGE")
    return encode(elements, explicit)


def decode_match(data: bytes | memoryview, explicit: bool = False) -> Match:
    """A pending C-FIND-RSP's Identifier."""
    item = decode(data, explicit)
    count_text = _text(item, TAG_NUMBER_OF_STUDY_RELATED_INSTANCES) or _text(
        item, TAG_NUMBER_OF_SERIES_RELATED_INSTANCES
    )
    try:
        count: int | None = int(count_text) if count_text else None
    except ValueError:
        count = None  # not an IS value: as if not returned
    return Match(
        _text(item, TAG_STUDY_INSTANCE_UID),
        _text(item, TAG_SERIES_INSTANCE_UID),
        _text(item, TAG_SOP_INSTANCE_UID),
        count,
        item,
    )
