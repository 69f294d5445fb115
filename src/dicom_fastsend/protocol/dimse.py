"""DIMSE command sets and status codes (PS3.7), without I/O.

A command set is always encoded in Implicit VR Little Endian whatever the
presentation context's transfer syntax (PS3.7 6.3.1), starting with the
Command Group Length (0000,0000).
"""

from __future__ import annotations

import struct
from enum import Enum, IntEnum

import msgspec
from msgspec import field

from ..errors import FastsendError
from .pdu import PDV


class DIMSEError(FastsendError):
    """A command set that cannot be decoded, or DIMSE messages out of order."""


class CommandField(IntEnum):
    """(0000,0100) Command Field values (PS3.7 E.1)."""

    C_STORE_RQ = 0x0001
    C_STORE_RSP = 0x8001
    C_FIND_RQ = 0x0020
    C_FIND_RSP = 0x8020
    C_ECHO_RQ = 0x0030
    C_ECHO_RSP = 0x8030
    N_EVENT_REPORT_RQ = 0x0100
    N_EVENT_REPORT_RSP = 0x8100
    N_ACTION_RQ = 0x0130
    N_ACTION_RSP = 0x8130


class Priority(IntEnum):
    """(0000,0700) Priority (PS3.7 E.1)."""

    MEDIUM = 0x0000
    HIGH = 0x0001
    LOW = 0x0002


NO_DATASET = 0x0101  # (0000,0800) Command Data Set Type: no data set follows (PS3.7 E.1)
DATASET_PRESENT = 0x0000

# Command elements and their VRs (PS3.7 E.1); needed to decode Implicit VR.
TAG_GROUP_LENGTH = 0x00000000
TAG_AFFECTED_SOP_CLASS_UID = 0x00000002
TAG_REQUESTED_SOP_CLASS_UID = 0x00000003
TAG_COMMAND_FIELD = 0x00000100
TAG_MESSAGE_ID = 0x00000110
TAG_MESSAGE_ID_BEING_RESPONDED_TO = 0x00000120
TAG_PRIORITY = 0x00000700
TAG_COMMAND_DATA_SET_TYPE = 0x00000800
TAG_STATUS = 0x00000900
TAG_OFFENDING_ELEMENT = 0x00000901
TAG_ERROR_COMMENT = 0x00000902
TAG_ERROR_ID = 0x00000903
TAG_AFFECTED_SOP_INSTANCE_UID = 0x00001000
TAG_REQUESTED_SOP_INSTANCE_UID = 0x00001001
TAG_EVENT_TYPE_ID = 0x00001002
TAG_ACTION_TYPE_ID = 0x00001008
TAG_MOVE_ORIGINATOR_AE_TITLE = 0x00001030
TAG_MOVE_ORIGINATOR_MESSAGE_ID = 0x00001031

_VR: dict[int, str] = {
    TAG_GROUP_LENGTH: "UL",
    TAG_AFFECTED_SOP_CLASS_UID: "UI",
    TAG_REQUESTED_SOP_CLASS_UID: "UI",
    TAG_COMMAND_FIELD: "US",
    TAG_MESSAGE_ID: "US",
    TAG_MESSAGE_ID_BEING_RESPONDED_TO: "US",
    0x00000600: "AE",  # Move Destination
    TAG_PRIORITY: "US",
    TAG_COMMAND_DATA_SET_TYPE: "US",
    TAG_STATUS: "US",
    TAG_OFFENDING_ELEMENT: "AT",
    TAG_ERROR_COMMENT: "LO",
    TAG_ERROR_ID: "US",
    TAG_AFFECTED_SOP_INSTANCE_UID: "UI",
    TAG_REQUESTED_SOP_INSTANCE_UID: "UI",
    TAG_EVENT_TYPE_ID: "US",
    TAG_ACTION_TYPE_ID: "US",
    TAG_MOVE_ORIGINATOR_AE_TITLE: "AE",
    TAG_MOVE_ORIGINATOR_MESSAGE_ID: "US",
}

CommandValue = int | str | tuple[int, ...]


class Command(msgspec.Struct):
    """A decoded or to-be-encoded command set: tag -> value.

    US/UL values are ints, UI/AE/LO values strings, AT a tuple of tags.
    """

    elements: dict[int, CommandValue] = field(default_factory=dict)

    def get_int(self, tag: int, default: int | None = None) -> int | None:
        value = self.elements.get(tag, default)
        return value if isinstance(value, int) else default

    def get_str(self, tag: int) -> str:
        value = self.elements.get(tag, "")
        return value if isinstance(value, str) else ""

    @property
    def command_field(self) -> int | None:
        return self.get_int(TAG_COMMAND_FIELD)

    @property
    def has_dataset(self) -> bool:
        return self.get_int(TAG_COMMAND_DATA_SET_TYPE, NO_DATASET) != NO_DATASET

    def encode(self) -> bytes:
        """Implicit VR Little Endian, elements in ascending tag order (PS3.5 7.1)."""
        body = b"".join(
            _element(tag, _encode_value(tag, value))
            for tag, value in sorted(self.elements.items())
            if tag != TAG_GROUP_LENGTH
        )
        return _element(TAG_GROUP_LENGTH, struct.pack("<I", len(body))) + body

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Command:
        elements: dict[int, CommandValue] = {}
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            if len(view) - pos < 8:
                raise DIMSEError(f"command set: {len(view) - pos} stray bytes at offset {pos}")
            group, element, length = struct.unpack_from("<HHI", view, pos)
            pos += 8
            if length > len(view) - pos:
                raise DIMSEError(
                    f"command set: element ({group:04x},{element:04x}) says {length} bytes, "
                    f"only {len(view) - pos} remain"
                )
            tag = (group << 16) | element
            if group != 0x0000:
                raise DIMSEError(
                    f"command set holds a non-command element ({group:04x},{element:04x})"
                )
            elements[tag] = _decode_value(tag, view[pos : pos + length])
            pos += length
        if TAG_COMMAND_FIELD not in elements:
            raise DIMSEError("command set has no Command Field (0000,0100)")
        return cls(elements)


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def _encode_value(tag: int, value: CommandValue) -> bytes:
    vr = _VR.get(tag)
    if vr == "US" and isinstance(value, int):
        return struct.pack("<H", value)
    if vr == "UL" and isinstance(value, int):
        return struct.pack("<I", value)
    if vr == "AT" and isinstance(value, tuple):
        return b"".join(struct.pack("<HH", t >> 16, t & 0xFFFF) for t in value)
    if isinstance(value, str):
        try:
            raw = value.encode("ascii")
        except UnicodeEncodeError as exc:
            # Command sets use the default character repertoire (PS3.7 6.3.1,
            # PS3.5 6.1.2). A value decoded from a peer's bytes outside it holds
            # U+FFFD, and answering with it (c_store_rsp copies the UIDs) must
            # fail as a DIMSE error, which the caller handles, not as a crash.
            raise DIMSEError(
                f"cannot encode {value!r} for ({tag >> 16:04x},{tag & 0xFFFF:04x}): "
                "not in the default character repertoire (ASCII)"
            ) from exc
        if len(raw) % 2:
            # PS3.5 6.2: UI pads with NUL, text VRs with a space, to an even length.
            raw += b"\x00" if vr == "UI" else b" "
        return raw
    raise DIMSEError(f"cannot encode {value!r} for ({tag >> 16:04x},{tag & 0xFFFF:04x}) as {vr}")


def _decode_value(tag: int, raw: memoryview) -> CommandValue:
    vr = _VR.get(tag)
    if vr == "US":
        if len(raw) != 2:
            raise DIMSEError(f"({tag >> 16:04x},{tag & 0xFFFF:04x}) US of {len(raw)} bytes")
        return int(struct.unpack("<H", raw)[0])
    if vr == "UL":
        if len(raw) != 4:
            raise DIMSEError(f"({tag >> 16:04x},{tag & 0xFFFF:04x}) UL of {len(raw)} bytes")
        return int(struct.unpack("<I", raw)[0])
    if vr == "AT":
        count = len(raw) // 4
        return tuple(
            (g << 16) | e for g, e in (struct.unpack_from("<HH", raw, 4 * i) for i in range(count))
        )
    return bytes(raw).rstrip(b"\x00 ").decode("ascii", "replace")


# ------------------------------------------------------------------ messages


def c_store_rq(
    message_id: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    priority: int = Priority.MEDIUM,
) -> Command:
    """C-STORE-RQ command set (PS3.7 9.3.1.1)."""
    return Command(
        {
            TAG_AFFECTED_SOP_CLASS_UID: sop_class_uid,
            TAG_COMMAND_FIELD: CommandField.C_STORE_RQ,
            TAG_MESSAGE_ID: message_id,
            TAG_PRIORITY: priority,
            TAG_COMMAND_DATA_SET_TYPE: DATASET_PRESENT,
            TAG_AFFECTED_SOP_INSTANCE_UID: sop_instance_uid,
        }
    )


def c_store_rsp(request: Command, status: int, error_comment: str = "") -> Command:
    """C-STORE-RSP answering ``request`` (PS3.7 9.3.1.2)."""
    elements: dict[int, CommandValue] = {
        TAG_AFFECTED_SOP_CLASS_UID: request.get_str(TAG_AFFECTED_SOP_CLASS_UID),
        TAG_COMMAND_FIELD: CommandField.C_STORE_RSP,
        TAG_MESSAGE_ID_BEING_RESPONDED_TO: request.get_int(TAG_MESSAGE_ID, 0) or 0,
        TAG_COMMAND_DATA_SET_TYPE: NO_DATASET,
        TAG_STATUS: status,
        TAG_AFFECTED_SOP_INSTANCE_UID: request.get_str(TAG_AFFECTED_SOP_INSTANCE_UID),
    }
    if error_comment:
        elements[TAG_ERROR_COMMENT] = error_comment[:64]
    return Command(elements)


def c_echo_rq(message_id: int) -> Command:
    """C-ECHO-RQ command set (PS3.7 9.3.5.1)."""
    from .uids import VERIFICATION_SOP_CLASS

    return Command(
        {
            TAG_AFFECTED_SOP_CLASS_UID: VERIFICATION_SOP_CLASS,
            TAG_COMMAND_FIELD: CommandField.C_ECHO_RQ,
            TAG_MESSAGE_ID: message_id,
            TAG_COMMAND_DATA_SET_TYPE: NO_DATASET,
        }
    )


def c_echo_rsp(request: Command, status: int = 0x0000) -> Command:
    """C-ECHO-RSP answering ``request`` (PS3.7 9.3.5.2)."""
    return Command(
        {
            TAG_AFFECTED_SOP_CLASS_UID: request.get_str(TAG_AFFECTED_SOP_CLASS_UID),
            TAG_COMMAND_FIELD: CommandField.C_ECHO_RSP,
            TAG_MESSAGE_ID_BEING_RESPONDED_TO: request.get_int(TAG_MESSAGE_ID, 0) or 0,
            TAG_COMMAND_DATA_SET_TYPE: NO_DATASET,
            TAG_STATUS: status,
        }
    )


def c_find_rq(message_id: int, sop_class_uid: str, priority: int = Priority.MEDIUM) -> Command:
    """C-FIND-RQ command set (PS3.7 9.3.2.1); the Identifier follows as its data set."""
    return Command(
        {
            TAG_AFFECTED_SOP_CLASS_UID: sop_class_uid,
            TAG_COMMAND_FIELD: CommandField.C_FIND_RQ,
            TAG_MESSAGE_ID: message_id,
            TAG_PRIORITY: priority,
            TAG_COMMAND_DATA_SET_TYPE: DATASET_PRESENT,
        }
    )


def c_find_rsp(request: Command, status: int, identifier: bool) -> Command:
    """C-FIND-RSP answering ``request`` (PS3.7 9.3.2.2): an Identifier with Pending only."""
    return Command(
        {
            TAG_AFFECTED_SOP_CLASS_UID: request.get_str(TAG_AFFECTED_SOP_CLASS_UID),
            TAG_COMMAND_FIELD: CommandField.C_FIND_RSP,
            TAG_MESSAGE_ID_BEING_RESPONDED_TO: request.get_int(TAG_MESSAGE_ID, 0) or 0,
            TAG_COMMAND_DATA_SET_TYPE: DATASET_PRESENT if identifier else NO_DATASET,
            TAG_STATUS: status,
        }
    )


def n_action_rq(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, action_type_id: int
) -> Command:
    """N-ACTION-RQ command set (PS3.7 10.3.4.1); the Action Information follows as its data set.

    Storage Commitment asks with the well-known SOP Instance and Action Type
    ID 1, Request Storage Commitment (PS3.4 J.3.2).
    """
    return Command(
        {
            TAG_REQUESTED_SOP_CLASS_UID: sop_class_uid,
            TAG_COMMAND_FIELD: CommandField.N_ACTION_RQ,
            TAG_MESSAGE_ID: message_id,
            TAG_COMMAND_DATA_SET_TYPE: DATASET_PRESENT,
            TAG_REQUESTED_SOP_INSTANCE_UID: sop_instance_uid,
            TAG_ACTION_TYPE_ID: action_type_id,
        }
    )


def n_action_rsp(request: Command, status: int) -> Command:
    """N-ACTION-RSP answering ``request`` (PS3.7 10.3.4.2), without Action Reply."""
    return Command(
        {
            TAG_AFFECTED_SOP_CLASS_UID: request.get_str(TAG_REQUESTED_SOP_CLASS_UID),
            TAG_COMMAND_FIELD: CommandField.N_ACTION_RSP,
            TAG_MESSAGE_ID_BEING_RESPONDED_TO: request.get_int(TAG_MESSAGE_ID, 0) or 0,
            TAG_COMMAND_DATA_SET_TYPE: NO_DATASET,
            TAG_STATUS: status,
            TAG_AFFECTED_SOP_INSTANCE_UID: request.get_str(TAG_REQUESTED_SOP_INSTANCE_UID),
            TAG_ACTION_TYPE_ID: request.get_int(TAG_ACTION_TYPE_ID, 0) or 0,
        }
    )


def n_event_report_rq(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, event_type_id: int
) -> Command:
    """N-EVENT-REPORT-RQ command set (PS3.7 10.3.1.1); the Event Information follows."""
    return Command(
        {
            TAG_AFFECTED_SOP_CLASS_UID: sop_class_uid,
            TAG_COMMAND_FIELD: CommandField.N_EVENT_REPORT_RQ,
            TAG_MESSAGE_ID: message_id,
            TAG_COMMAND_DATA_SET_TYPE: DATASET_PRESENT,
            TAG_AFFECTED_SOP_INSTANCE_UID: sop_instance_uid,
            TAG_EVENT_TYPE_ID: event_type_id,
        }
    )


def n_event_report_rsp(request: Command, status: int, error_comment: str = "") -> Command:
    """N-EVENT-REPORT-RSP answering ``request`` (PS3.7 10.3.1.2), without Event Reply."""
    elements: dict[int, CommandValue] = {
        TAG_AFFECTED_SOP_CLASS_UID: request.get_str(TAG_AFFECTED_SOP_CLASS_UID),
        TAG_COMMAND_FIELD: CommandField.N_EVENT_REPORT_RSP,
        TAG_MESSAGE_ID_BEING_RESPONDED_TO: request.get_int(TAG_MESSAGE_ID, 0) or 0,
        TAG_COMMAND_DATA_SET_TYPE: NO_DATASET,
        TAG_STATUS: status,
        TAG_AFFECTED_SOP_INSTANCE_UID: request.get_str(TAG_AFFECTED_SOP_INSTANCE_UID),
    }
    # PS3.7 10.1.1.1.5: the Event Type ID is optional in the response; echo
    # the request's, never invent one it did not carry.
    event_type_id = request.get_int(TAG_EVENT_TYPE_ID)
    if event_type_id is not None:
        elements[TAG_EVENT_TYPE_ID] = event_type_id
    if error_comment:
        elements[TAG_ERROR_COMMENT] = error_comment[:64]
    return Command(elements)


# ------------------------------------------------------------------ status (PS3.7 Annex C)


class StatusCategory(Enum):
    SUCCESS = "success"
    WARNING = "warning"
    FAILURE = "failure"
    CANCEL = "cancel"
    PENDING = "pending"


_STATUS_TEXT: dict[int, str] = {
    0x0000: "Success",
    0x0001: "Warning: Requested optional Attributes are not supported",
    0x0107: "Warning: Attribute list error",
    0x0116: "Warning: Attribute Value out of range",
    0xB000: "Warning: Coercion of Data Elements",
    0xB006: "Warning: Elements Discarded",
    0xB007: "Warning: Data Set does not match SOP Class",
    0x0110: "Failure: Processing failure",
    0x0112: "Failure: No such SOP Instance",
    0x0113: "Failure: No such event type",
    0x0114: "Failure: No such argument",
    0x0115: "Failure: Invalid argument value",
    0x0118: "Failure: No such SOP Class",
    0x0119: "Failure: Class-instance conflict",
    0x0123: "Failure: No such action type",
    0x0117: "Failure: Invalid SOP Instance",
    0x0122: "Refused: SOP Class not supported",
    0x0124: "Refused: Not authorized",
    0x0210: "Failure: Duplicate invocation",
    0x0211: "Failure: Unrecognized operation",
    0x0212: "Failure: Mistyped argument",
    0x0213: "Failure: Resource limitation",
    0xA700: "Refused: Out of Resources",
    0xA900: "Error: Data Set does not match SOP Class",
    0xC000: "Error: Cannot understand",
    0xFE00: "Cancel",
    0xFF00: "Pending",
    0xFF01: "Pending: Optional Keys not supported",
}


def status_category(status: int) -> StatusCategory:
    """Classify a DIMSE status (PS3.7 C.1-C.4, PS3.4 B.2.3 for C-STORE).

    Warning statuses mean the instance was stored: PS3.7 C.4 gives 0001 and
    Bxxx as warnings (B000, B006, B007 are the C-STORE ones), and 0107 and
    0116 are general warnings. Counting them as failures would make a
    migration resend what the archive already holds.
    """
    if status == 0x0000:
        return StatusCategory.SUCCESS
    if status in (0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF:
        return StatusCategory.WARNING
    if status == 0xFE00:
        return StatusCategory.CANCEL
    if status in (0xFF00, 0xFF01):
        return StatusCategory.PENDING
    return StatusCategory.FAILURE


def status_text(status: int) -> str:
    """'0xA700 Refused: Out of Resources' for messages and logs."""
    if status in _STATUS_TEXT:
        text = _STATUS_TEXT[status]
    elif 0xA700 <= status <= 0xA7FF:
        text = "Refused: Out of Resources"
    elif 0xA900 <= status <= 0xA9FF:
        text = "Error: Data Set does not match SOP Class"
    elif 0xC000 <= status <= 0xCFFF:
        text = "Error: Cannot understand"
    else:
        text = status_category(status).value.capitalize()
    return f"0x{status:04X} {text}"


# ------------------------------------------------------------------ reassembly


class Message(msgspec.Struct):
    """A complete DIMSE message: its command and, if any, its data set fragments."""

    presentation_context_id: int
    command: Command
    dataset_fragments: list[bytes] = field(default_factory=list)

    def dataset(self) -> bytes:
        return b"".join(self.dataset_fragments)


class MessageAssembler:
    """Reassembles DIMSE messages from PDVs (PS3.8 E.2, PS3.7 8).

    A command's fragments come first, ending with one marked last; a data set
    follows when the command says so. Messages on one association are not
    interleaved in this direction for a storage SCU/SCP, so one message is
    assembled at a time. ``keep_dataset=False`` counts data set bytes but
    drops them, which is what a discarding receiver wants.
    """

    def __init__(self, keep_dataset: bool = True, max_dataset: int | None = None) -> None:
        self.keep_dataset = keep_dataset
        # Bytes one kept data set may reach (None: no limit): a receiver of
        # small data sets bounds what a peer can make it hold in memory.
        self.max_dataset = max_dataset
        self._message_bytes = 0
        self._command_fragments: list[bytes] = []
        self._command_context = 0
        self._message: Message | None = None
        self.dataset_bytes = 0

    @property
    def idle(self) -> bool:
        """No part of a message held: no command fragment, no command awaiting its
        data set. Only then may command sets be read around the assembler (the
        compiled path of StoreClient), since the next PDV starts a new message
        (PS3.8 E.2)."""
        return self._message is None and not self._command_fragments

    def feed(self, pdvs: tuple[PDV, ...]) -> list[Message]:
        complete: list[Message] = []
        for pdv in pdvs:
            if self._message is None:
                if not pdv.is_command:
                    raise DIMSEError(
                        f"data set fragment on presentation context {pdv.presentation_context_id} "
                        "before any command"
                    )
                if self._command_fragments and pdv.presentation_context_id != self._command_context:
                    raise DIMSEError(
                        f"command fragment on presentation context {pdv.presentation_context_id}, "
                        f"its first fragment came on {self._command_context} (PS3.8 E.2)"
                    )
                self._command_context = pdv.presentation_context_id
                self._command_fragments.append(bytes(pdv.data))
                if self.max_dataset is not None and (
                    sum(map(len, self._command_fragments)) > self.max_dataset
                ):
                    raise DIMSEError(f"a command set of more than {self.max_dataset} bytes")
                if not pdv.is_last:
                    continue
                command = Command.decode(b"".join(self._command_fragments))
                self._command_fragments.clear()
                message = Message(pdv.presentation_context_id, command)
                if command.has_dataset:
                    self._message = message
                    self._message_bytes = 0
                else:
                    complete.append(message)
                continue
            if pdv.is_command:
                raise DIMSEError("command fragment while a data set was expected (PS3.8 E.2)")
            if pdv.presentation_context_id != self._message.presentation_context_id:
                raise DIMSEError(
                    f"data set fragment on presentation context {pdv.presentation_context_id}, "
                    f"its command came on {self._message.presentation_context_id}"
                )
            self.dataset_bytes += len(pdv.data)
            self._message_bytes += len(pdv.data)
            if self.max_dataset is not None and self._message_bytes > self.max_dataset:
                raise DIMSEError(
                    f"a data set of more than {self.max_dataset} bytes, where at most "
                    f"{self.max_dataset} are taken"
                )
            if self.keep_dataset:
                self._message.dataset_fragments.append(bytes(pdv.data))
            if pdv.is_last:
                complete.append(self._message)
                self._message = None
        return complete
