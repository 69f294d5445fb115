"""PDU encoding and decoding for the DICOM Upper Layer (PS3.8 9.3), without I/O.

Every PDU starts with a 6-byte header: PDU-type (1), reserved (1) and
PDU-length (4, big endian), the length of the variable field that follows
(PS3.8 9.3.1). The classes here (msgspec structs) mirror the standard's names;
``encode`` turns one into bytes and ``decode_pdu`` does the reverse for one
complete PDU's type and variable field. P-DATA-TF on the send side is not built here:
the hot path (``hotpath.fragment_pdata``) writes its headers straight in front
of memory-mapped file bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from enum import IntEnum

import msgspec
from msgspec import field

from ..errors import PDUError, UnrecognizedPDUError
from .hotpath import parse_pdvs
from .uids import APPLICATION_CONTEXT

PROTOCOL_VERSION = 0x0001  # PS3.8 9.3.2: bit 0 set, the only version defined
PDU_HEADER_LENGTH = 6


class PDUType(IntEnum):
    """PDU-type field values (PS3.8 Table 9-11 and its siblings)."""

    A_ASSOCIATE_RQ = 0x01
    A_ASSOCIATE_AC = 0x02
    A_ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    A_RELEASE_RQ = 0x05
    A_RELEASE_RP = 0x06
    A_ABORT = 0x07


class ItemType(IntEnum):
    """Item-type values of the variable items and sub-items (PS3.8 9.3.2, Annex D)."""

    APPLICATION_CONTEXT = 0x10
    PRESENTATION_CONTEXT_RQ = 0x20
    PRESENTATION_CONTEXT_AC = 0x21
    ABSTRACT_SYNTAX = 0x30
    TRANSFER_SYNTAX = 0x40
    USER_INFORMATION = 0x50
    MAXIMUM_LENGTH = 0x51
    IMPLEMENTATION_CLASS_UID = 0x52
    ASYNCHRONOUS_OPERATIONS_WINDOW = 0x53
    ROLE_SELECTION = 0x54
    IMPLEMENTATION_VERSION_NAME = 0x55
    USER_IDENTITY_RQ = 0x58
    USER_IDENTITY_AC = 0x59


class PresentationContextResult(IntEnum):
    """Result/Reason of a presentation context in an A-ASSOCIATE-AC (PS3.8 9.3.3.2)."""

    ACCEPTANCE = 0
    USER_REJECTION = 1
    NO_REASON = 2
    ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
    TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


_RESULT_TEXT = {
    0: "acceptance",
    1: "user-rejection",
    2: "no-reason (provider rejection)",
    3: "abstract-syntax-not-supported (provider rejection)",
    4: "transfer-syntaxes-not-supported (provider rejection)",
}


def presentation_context_result_text(result: int) -> str:
    return _RESULT_TEXT.get(result, f"unknown result {result}")


# --------------------------------------------------------------------------- items


class PresentationContextRQ(msgspec.Struct, frozen=True):
    """Presentation Context Item in an A-ASSOCIATE-RQ (PS3.8 9.3.2.2).

    The ID is odd, 1 to 255, so at most 128 contexts fit in one association.
    """

    presentation_context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


class PresentationContextAC(msgspec.Struct, frozen=True):
    """Presentation Context Item in an A-ASSOCIATE-AC (PS3.8 9.3.3.2)."""

    presentation_context_id: int
    result: int
    transfer_syntax: str  # meaningful only when result is ACCEPTANCE

    @property
    def accepted(self) -> bool:
        return self.result == PresentationContextResult.ACCEPTANCE


class UserIdentityType(IntEnum):
    """User-Identity-Type of the User Identity sub-item (PS3.7 D.3.3.7.1)."""

    USERNAME = 1
    USERNAME_AND_PASSCODE = 2
    KERBEROS = 3
    SAML = 4
    JWT = 5


class UserIdentity(msgspec.Struct, frozen=True):
    """User Identity negotiation sub-item of an A-ASSOCIATE-RQ (PS3.7 D.3.3.7.1).

    The secondary field (the passcode) is kept out of repr() so it cannot
    reach a log or a traceback through this object.
    """

    identity_type: int
    primary_field: bytes
    secondary_field: bytes = b""
    positive_response_requested: bool = False

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(identity_type={self.identity_type!r},"
            f" primary_field={self.primary_field!r},"
            f" positive_response_requested={self.positive_response_requested!r})"
        )


class RoleSelection(msgspec.Struct, frozen=True):
    """SCP/SCU Role Selection sub-item (PS3.7 D.3.3.4).

    The roles are the association requestor's, in a request and in the
    acceptor's answer alike: a Storage Commitment SCP that opens an
    association to send an N-EVENT-REPORT proposes scu_role False, scp_role
    True for the Storage Commitment Push Model SOP Class (PS3.4 J.3.3).
    """

    sop_class_uid: str
    scu_role: bool
    scp_role: bool


class UserInformation(msgspec.Struct, frozen=True):
    """User Information Item (PS3.8 9.3.2.3, Annex D; PS3.7 D.3.3).

    ``maximum_length`` is the largest P-DATA-TF variable field the sender of
    this item is willing to receive; 0 means no limit (PS3.8 D.1).
    """

    maximum_length: int = 0
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    # PS3.7 D.3.3.3: (maximum number operations invoked, performed); None = not negotiated
    asynchronous_operations_window: tuple[int, int] | None = None
    user_identity: UserIdentity | None = None  # in an RQ (PS3.7 D.3.3.7.1)
    server_response: bytes | None = None  # in an AC, when the acceptor sent one (D.3.3.7.2)
    role_selections: tuple[RoleSelection, ...] = ()  # PS3.7 D.3.3.4


class AAssociateRQ(msgspec.Struct, frozen=True):
    """A-ASSOCIATE-RQ PDU (PS3.8 9.3.2)."""

    called_ae_title: str
    calling_ae_title: str
    presentation_contexts: tuple[PresentationContextRQ, ...]
    user_information: UserInformation = field(default_factory=UserInformation)
    application_context_name: str = APPLICATION_CONTEXT
    protocol_version: int = PROTOCOL_VERSION


class AAssociateAC(msgspec.Struct, frozen=True):
    """A-ASSOCIATE-AC PDU (PS3.8 9.3.3).

    The called and calling AE title fields are reserved in the AC but are
    sent back with the values of the RQ, as the standard recommends.
    """

    called_ae_title: str
    calling_ae_title: str
    presentation_contexts: tuple[PresentationContextAC, ...]
    user_information: UserInformation = field(default_factory=UserInformation)
    application_context_name: str = APPLICATION_CONTEXT
    protocol_version: int = PROTOCOL_VERSION


class RejectResult(IntEnum):
    REJECTED_PERMANENT = 1
    REJECTED_TRANSIENT = 2


class RejectSource(IntEnum):
    SERVICE_USER = 1
    SERVICE_PROVIDER_ACSE = 2
    SERVICE_PROVIDER_PRESENTATION = 3


# PS3.8 9.3.4: the reason/diag. field's meaning depends on the source.
_REJECT_REASONS: dict[int, dict[int, str]] = {
    1: {
        1: "no-reason-given",
        2: "application-context-name-not-supported",
        3: "calling-AE-title-not-recognized",
        7: "called-AE-title-not-recognized",
    },
    2: {1: "no-reason-given", 2: "protocol-version-not-supported"},
    3: {1: "temporary-congestion", 2: "local-limit-exceeded"},
}
_REJECT_RESULTS = {1: "rejected-permanent", 2: "rejected-transient"}
_REJECT_SOURCES = {
    1: "DICOM UL service-user",
    2: "DICOM UL service-provider (ACSE related function)",
    3: "DICOM UL service-provider (Presentation related function)",
}


class AAssociateRJ(msgspec.Struct, frozen=True):
    """A-ASSOCIATE-RJ PDU (PS3.8 9.3.4)."""

    result: int
    source: int
    reason: int

    @property
    def transient(self) -> bool:
        return self.result == RejectResult.REJECTED_TRANSIENT

    def describe(self) -> str:
        """The rejection in the standard's words, e.g. for the user's message."""
        result = _REJECT_RESULTS.get(self.result, f"result {self.result}")
        source = _REJECT_SOURCES.get(self.source, f"source {self.source}")
        reason = _REJECT_REASONS.get(self.source, {}).get(self.reason, f"reason {self.reason}")
        return f"{result}, source: {source}, reason: {reason}"


class PDV(msgspec.Struct, frozen=True):
    """One Presentation Data Value item of a received P-DATA-TF (PS3.8 9.3.5.1).

    ``data`` is a view into the received PDU, not a copy.
    """

    presentation_context_id: int
    is_command: bool
    is_last: bool
    data: memoryview


class PDataTF(msgspec.Struct, frozen=True):
    """P-DATA-TF PDU (PS3.8 9.3.5)."""

    pdvs: tuple[PDV, ...]


class AReleaseRQ(msgspec.Struct, frozen=True):
    """A-RELEASE-RQ PDU (PS3.8 9.3.6)."""


class AReleaseRP(msgspec.Struct, frozen=True):
    """A-RELEASE-RP PDU (PS3.8 9.3.7)."""


class AbortSource(IntEnum):
    SERVICE_USER = 0
    SERVICE_PROVIDER = 2


class AbortReason(IntEnum):
    """Reason/Diag. when the source is the service provider (PS3.8 9.3.8)."""

    NOT_SPECIFIED = 0
    UNRECOGNIZED_PDU = 1
    UNEXPECTED_PDU = 2
    UNRECOGNIZED_PDU_PARAMETER = 4
    UNEXPECTED_PDU_PARAMETER = 5
    INVALID_PDU_PARAMETER_VALUE = 6


_ABORT_REASONS = {
    0: "reason-not-specified",
    1: "unrecognized-PDU",
    2: "unexpected-PDU",
    4: "unrecognized-PDU parameter",
    5: "unexpected-PDU parameter",
    6: "invalid-PDU-parameter value",
}


class AAbort(msgspec.Struct, frozen=True):
    """A-ABORT PDU (PS3.8 9.3.8)."""

    source: int = AbortSource.SERVICE_USER
    reason: int = AbortReason.NOT_SPECIFIED

    def describe(self) -> str:
        if self.source == AbortSource.SERVICE_USER:
            return "aborted by the DICOM UL service-user"
        if self.source == AbortSource.SERVICE_PROVIDER:
            reason = _ABORT_REASONS.get(self.reason, f"reason {self.reason}")
            return f"aborted by the DICOM UL service-provider: {reason}"
        return f"aborted (source {self.source}, reason {self.reason})"


PDU = AAssociateRQ | AAssociateAC | AAssociateRJ | PDataTF | AReleaseRQ | AReleaseRP | AAbort


# --------------------------------------------------------------------------- encoding

_HEADER = struct.Struct(">BBI")
_ITEM_HEADER = struct.Struct(">BBH")


def _ae_title(title: str) -> bytes:
    """AE titles are 16 bytes, space padded (PS3.8 9.3.2, PS3.5 6.2 AE)."""
    raw = title.encode("ascii")
    if not raw.strip() or len(raw) > 16:
        raise ValueError(f"AE title {title!r} must be 1 to 16 characters")
    return raw.ljust(16, b" ")


def _item(item_type: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"item 0x{item_type:02x} is {len(value)} bytes, the limit is 65535")
    return _ITEM_HEADER.pack(item_type, 0, len(value)) + value


def _uid_item(item_type: int, uid: str) -> bytes:
    # UIDs in UL items are not padded (PS3.8 Annex F and 9.3.2.2.1).
    return _item(item_type, uid.encode("ascii"))


def _encode_user_information(info: UserInformation) -> bytes:
    sub_items = [_item(ItemType.MAXIMUM_LENGTH, struct.pack(">I", info.maximum_length))]
    if info.implementation_class_uid:
        sub_items.append(
            _uid_item(ItemType.IMPLEMENTATION_CLASS_UID, info.implementation_class_uid)
        )
    if info.asynchronous_operations_window is not None:
        invoked, performed = info.asynchronous_operations_window
        sub_items.append(
            _item(ItemType.ASYNCHRONOUS_OPERATIONS_WINDOW, struct.pack(">HH", invoked, performed))
        )
    for role in info.role_selections:
        # PS3.7 D.3.3.4: UID length (2) and UID, SCU-role (1), SCP-role (1).
        uid = role.sop_class_uid.encode("ascii")
        sub_items.append(
            _item(
                ItemType.ROLE_SELECTION,
                struct.pack(">H", len(uid)) + uid + bytes((role.scu_role, role.scp_role)),
            )
        )
    if info.implementation_version_name:
        # PS3.7 D.3.3.2.3: 1 to 16 characters
        sub_items.append(
            _item(
                ItemType.IMPLEMENTATION_VERSION_NAME,
                info.implementation_version_name.encode("ascii")[:16],
            )
        )
    if info.user_identity is not None:
        identity = info.user_identity
        # PS3.7 D.3.3.7.1: type (1), positive-response-requested (1), primary
        # field length (2) and field, secondary field length (2) and field.
        sub_items.append(
            _item(
                ItemType.USER_IDENTITY_RQ,
                struct.pack(
                    ">BBH", identity.identity_type, int(identity.positive_response_requested),
                    len(identity.primary_field),
                )
                + identity.primary_field
                + struct.pack(">H", len(identity.secondary_field))
                + identity.secondary_field,
            )
        )  # fmt: skip
    if info.server_response is not None:
        # PS3.7 D.3.3.7.2: server-response length (2) and the response.
        sub_items.append(
            _item(
                ItemType.USER_IDENTITY_AC,
                struct.pack(">H", len(info.server_response)) + info.server_response,
            )
        )
    return _item(ItemType.USER_INFORMATION, b"".join(sub_items))


def _association_fixed_part(protocol_version: int, called: str, calling: str) -> bytes:
    # PS3.8 9.3.2: version (2), reserved (2), called AE (16), calling AE (16), reserved (32)
    return (
        struct.pack(">HH", protocol_version, 0) + _ae_title(called) + _ae_title(calling) + bytes(32)
    )


def _pdu(pdu_type: int, variable_field: bytes) -> bytes:
    return _HEADER.pack(pdu_type, 0, len(variable_field)) + variable_field


def _association_pdu(
    pdu_type: int, pdu: AAssociateRQ | AAssociateAC, context_items: list[bytes]
) -> bytes:
    """The A-ASSOCIATE-RQ/AC layout they share (PS3.8 9.3.2, 9.3.3)."""
    return _pdu(
        pdu_type,
        _association_fixed_part(pdu.protocol_version, pdu.called_ae_title, pdu.calling_ae_title)
        + _uid_item(ItemType.APPLICATION_CONTEXT, pdu.application_context_name)
        + b"".join(context_items)
        + _encode_user_information(pdu.user_information),
    )


def encode(pdu: PDU) -> bytes:
    """Encode a PDU into the bytes sent on the wire."""
    if isinstance(pdu, AAssociateRQ):
        items = []
        for context in pdu.presentation_contexts:
            body = bytes((context.presentation_context_id, 0, 0, 0))
            body += _uid_item(ItemType.ABSTRACT_SYNTAX, context.abstract_syntax)
            body += b"".join(
                _uid_item(ItemType.TRANSFER_SYNTAX, ts) for ts in context.transfer_syntaxes
            )
            items.append(_item(ItemType.PRESENTATION_CONTEXT_RQ, body))
        return _association_pdu(PDUType.A_ASSOCIATE_RQ, pdu, items)
    if isinstance(pdu, AAssociateAC):
        items = []
        for ac in pdu.presentation_contexts:
            body = bytes((ac.presentation_context_id, 0, ac.result, 0))
            # PS3.8 9.3.3.2: the transfer syntax sub-item is present but not
            # significant when the context was not accepted.
            body += _uid_item(ItemType.TRANSFER_SYNTAX, ac.transfer_syntax)
            items.append(_item(ItemType.PRESENTATION_CONTEXT_AC, body))
        return _association_pdu(PDUType.A_ASSOCIATE_AC, pdu, items)
    if isinstance(pdu, AAssociateRJ):
        return _pdu(PDUType.A_ASSOCIATE_RJ, bytes((0, pdu.result, pdu.source, pdu.reason)))
    if isinstance(pdu, PDataTF):
        parts = []
        for pdv in pdu.pdvs:
            control = (1 if pdv.is_command else 0) | (2 if pdv.is_last else 0)
            parts.append(
                struct.pack(">IBB", len(pdv.data) + 2, pdv.presentation_context_id, control)
                + bytes(pdv.data)
            )
        return _pdu(PDUType.P_DATA_TF, b"".join(parts))
    if isinstance(pdu, AReleaseRQ):
        return _pdu(PDUType.A_RELEASE_RQ, bytes(4))
    if isinstance(pdu, AReleaseRP):
        return _pdu(PDUType.A_RELEASE_RP, bytes(4))
    if isinstance(pdu, AAbort):
        return _pdu(PDUType.A_ABORT, bytes((0, 0, pdu.source, pdu.reason)))
    raise TypeError(f"not a PDU: {pdu!r}")


# --------------------------------------------------------------------------- decoding


def _iter_items(data: memoryview, where: str) -> Iterator[tuple[int, memoryview]]:
    """Yield (item type, item value) for a run of items with 2-byte lengths."""
    pos = 0
    end = len(data)
    while pos < end:
        if end - pos < 4:
            raise PDUError(f"{where}: {end - pos} stray bytes where an item header was expected")
        item_type, _, length = _ITEM_HEADER.unpack_from(data, pos)
        pos += 4
        if length > end - pos:
            raise PDUError(
                f"{where}: item 0x{item_type:02x} says {length} bytes, only {end - pos} remain"
            )
        yield item_type, data[pos : pos + length]
        pos += length


def _uid(value: memoryview) -> str:
    # Tolerate the NUL or space padding some implementations add.
    try:
        return bytes(value).rstrip(b"\x00 ").decode("ascii")
    except UnicodeDecodeError as exc:
        raise PDUError(f"UID is not ASCII: {bytes(value)!r}") from exc


def _decode_user_information(value: memoryview) -> UserInformation:
    maximum_length = 0
    class_uid = ""
    version_name = ""
    window: tuple[int, int] | None = None
    identity: UserIdentity | None = None
    server_response: bytes | None = None
    roles: list[RoleSelection] = []
    for sub_type, sub in _iter_items(value, "user information item"):
        if sub_type == ItemType.MAXIMUM_LENGTH:
            if len(sub) != 4:
                raise PDUError(f"maximum length sub-item is {len(sub)} bytes, not 4")
            maximum_length = struct.unpack(">I", sub)[0]
        elif sub_type == ItemType.IMPLEMENTATION_CLASS_UID:
            class_uid = _uid(sub)
        elif sub_type == ItemType.IMPLEMENTATION_VERSION_NAME:
            version_name = bytes(sub).decode("ascii", "replace").strip()
        elif sub_type == ItemType.ASYNCHRONOUS_OPERATIONS_WINDOW:
            if len(sub) != 4:
                raise PDUError(f"asynchronous operations window sub-item is {len(sub)} bytes")
            invoked, performed = struct.unpack(">HH", sub)
            window = (invoked, performed)
        elif sub_type == ItemType.USER_IDENTITY_AC:
            if len(sub) < 2 or struct.unpack_from(">H", sub)[0] != len(sub) - 2:
                raise PDUError(f"user identity response sub-item of {len(sub)} bytes is malformed")
            server_response = bytes(sub[2:])
        elif sub_type == ItemType.USER_IDENTITY_RQ:
            identity = _decode_user_identity(sub)
        elif sub_type == ItemType.ROLE_SELECTION:
            roles.append(_decode_role_selection(sub))
        # Other sub-items (extended negotiation) are not needed here and are
        # skipped, as PS3.7 D.3.3 allows.
    return UserInformation(
        maximum_length, class_uid, version_name, window, identity, server_response, tuple(roles)
    )


def _decode_role_selection(sub: memoryview) -> RoleSelection:
    """PS3.7 D.3.3.4: UID length, UID, SCU-role, SCP-role."""
    if len(sub) < 4:
        raise PDUError(f"role selection sub-item of {len(sub)} bytes is too short")
    (uid_length,) = struct.unpack_from(">H", sub)
    if 2 + uid_length + 2 != len(sub):
        raise PDUError("role selection sub-item: its UID length does not fit the sub-item")
    uid = _uid(sub[2 : 2 + uid_length])
    return RoleSelection(uid, bool(sub[2 + uid_length]), bool(sub[3 + uid_length]))


def _decode_user_identity(sub: memoryview) -> UserIdentity:
    """PS3.7 D.3.3.7.1, with every length checked against what is there."""
    if len(sub) < 6:
        raise PDUError(f"user identity sub-item of {len(sub)} bytes is too short")
    identity_type, positive, primary_length = struct.unpack_from(">BBH", sub)
    if 4 + primary_length + 2 > len(sub):
        raise PDUError("user identity primary field runs past its sub-item")
    primary = bytes(sub[4 : 4 + primary_length])
    (secondary_length,) = struct.unpack_from(">H", sub, 4 + primary_length)
    secondary_start = 6 + primary_length
    if secondary_start + secondary_length != len(sub):
        raise PDUError("user identity secondary field does not fill its sub-item")
    return UserIdentity(identity_type, primary, bytes(sub[secondary_start:]), bool(positive))


def _decode_association(pdu_type: int, body: memoryview) -> AAssociateRQ | AAssociateAC:
    name = "A-ASSOCIATE-RQ" if pdu_type == PDUType.A_ASSOCIATE_RQ else "A-ASSOCIATE-AC"
    if len(body) < 68:
        raise PDUError(f"{name} is {len(body)} bytes, shorter than its 68-byte fixed part")
    protocol_version = struct.unpack_from(">H", body, 0)[0]
    called = bytes(body[4:20]).decode("ascii", "replace").strip()
    calling = bytes(body[20:36]).decode("ascii", "replace").strip()
    application_context = ""
    requested: list[PresentationContextRQ] = []
    accepted: list[PresentationContextAC] = []
    user_information: UserInformation | None = None
    for item_type, value in _iter_items(body[68:], name):
        if item_type == ItemType.APPLICATION_CONTEXT:
            application_context = _uid(value)
        elif item_type == ItemType.PRESENTATION_CONTEXT_RQ and pdu_type == PDUType.A_ASSOCIATE_RQ:
            if len(value) < 4:
                raise PDUError(f"{name}: presentation context item of {len(value)} bytes")
            abstract = ""
            transfer: list[str] = []
            for sub_type, sub in _iter_items(value[4:], "presentation context item"):
                if sub_type == ItemType.ABSTRACT_SYNTAX:
                    abstract = _uid(sub)
                elif sub_type == ItemType.TRANSFER_SYNTAX:
                    transfer.append(_uid(sub))
            requested.append(PresentationContextRQ(value[0], abstract, tuple(transfer)))
        elif item_type == ItemType.PRESENTATION_CONTEXT_AC and pdu_type == PDUType.A_ASSOCIATE_AC:
            if len(value) < 4:
                raise PDUError(f"{name}: presentation context item of {len(value)} bytes")
            transfer_syntax = ""
            for sub_type, sub in _iter_items(value[4:], "presentation context item"):
                if sub_type == ItemType.TRANSFER_SYNTAX:
                    transfer_syntax = _uid(sub)
            accepted.append(PresentationContextAC(value[0], value[2], transfer_syntax))
        elif item_type == ItemType.USER_INFORMATION:
            user_information = _decode_user_information(value)
        else:
            raise PDUError(f"{name}: unexpected item type 0x{item_type:02x}")
    if not application_context:
        raise PDUError(f"{name} has no application context item")
    if user_information is None:
        # PS3.8 9.3.2: the user information item is mandatory (it carries the maximum length).
        raise PDUError(f"{name} has no user information item")
    if pdu_type == PDUType.A_ASSOCIATE_RQ:
        return AAssociateRQ(
            called,
            calling,
            tuple(requested),
            user_information,
            application_context,
            protocol_version,
        )
    return AAssociateAC(
        called, calling, tuple(accepted), user_information, application_context, protocol_version
    )


def decode_pdu(pdu_type: int, body: memoryview) -> PDU:
    """Decode one PDU from its type and variable field.

    Raises PDUError for an unknown type or a malformed body; the caller turns
    that into Evt19 (unrecognized or invalid PDU, PS3.8 9.2).
    """
    if pdu_type in (PDUType.A_ASSOCIATE_RQ, PDUType.A_ASSOCIATE_AC):
        return _decode_association(pdu_type, body)
    if pdu_type == PDUType.P_DATA_TF:
        pdvs = tuple(
            PDV(pc_id, bool(control & 1), bool(control & 2), body[offset : offset + length])
            for pc_id, control, offset, length in parse_pdvs(body)
        )
        return PDataTF(pdvs)
    if pdu_type in (
        PDUType.A_ASSOCIATE_RJ,
        PDUType.A_RELEASE_RQ,
        PDUType.A_RELEASE_RP,
        PDUType.A_ABORT,
    ):
        if len(body) != 4:
            raise PDUError(f"PDU type 0x{pdu_type:02x} has a {len(body)}-byte body, not 4")
        if pdu_type == PDUType.A_ASSOCIATE_RJ:
            return AAssociateRJ(body[1], body[2], body[3])
        if pdu_type == PDUType.A_ABORT:
            return AAbort(body[2], body[3])
        return AReleaseRQ() if pdu_type == PDUType.A_RELEASE_RQ else AReleaseRP()
    raise UnrecognizedPDUError(f"unknown PDU type 0x{pdu_type:02x}")


# Hard cap for PDUs other than P-DATA-TF: an A-ASSOCIATE-AC for 128 contexts
# is a few kilobytes; anything near this is hostile or broken.
MAX_CONTROL_PDU_LENGTH = 1 << 20


class PDUReader:
    """Frames a byte stream into PDUs (PS3.8 9.3.1), buffering partial ones.

    ``maximum_length`` is the Maximum Length this side announced: a P-DATA-TF
    longer than that is a protocol violation, and refusing it before buffering
    keeps a hostile peer from making us allocate without bound.

    PDUs that arrive whole within one ``feed`` are returned as views into the
    fed bytes, without a copy; only a PDU split across feeds is assembled in
    a buffer, which takes that PDU's bytes and no more. (A receiver of
    gigabytes would otherwise copy every byte three times.)
    """

    def __init__(self, maximum_length: int) -> None:
        self.maximum_length = maximum_length
        self._buffer = bytearray()  # a PDU split across feeds, being completed
        self._data = memoryview(b"")  # the latest feed, read from _offset on
        self._offset = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        rest = self._data[self._offset :]
        if len(rest):
            # The start of a PDU that this feed completes: only it is buffered.
            self._buffer += rest
        # Views of the fed data are handed out, so it must not change later.
        self._data = memoryview(data if isinstance(data, bytes) else bytes(data))
        self._offset = 0

    def _fill(self, wanted: int) -> None:
        """Move fed bytes into the buffer until it holds ``wanted`` bytes, or all were moved."""
        take = min(wanted - len(self._buffer), len(self._data) - self._offset)
        if take > 0:
            self._buffer += self._data[self._offset : self._offset + take]
            self._offset += take

    @property
    def buffered(self) -> int:
        return len(self._buffer) + len(self._data) - self._offset

    def pending(self) -> bytes:
        """The bytes fed and not yet framed: the start of a PDU the next feed completes."""
        return bytes(self._buffer) + bytes(self._data[self._offset :])

    def discard_pending(self) -> None:
        """Forget the bytes ``pending`` returned: the caller framed them itself."""
        self._buffer = bytearray()
        self._data = memoryview(b"")
        self._offset = 0

    @property
    def pdata_limit(self) -> int:
        """The longest P-DATA-TF PDU-length taken: the announced Maximum Length.

        0 means no limit; even then keep a hard cap (PS3.8 D.1 gives no upper bound).
        """
        return self.maximum_length or 64 << 20

    def _check(self, pdu_type: int, length: int) -> None:
        if pdu_type not in PDUType._value2member_map_:
            raise UnrecognizedPDUError(f"unknown PDU type 0x{pdu_type:02x}")
        if pdu_type == PDUType.P_DATA_TF:
            limit = self.pdata_limit
        else:
            limit = MAX_CONTROL_PDU_LENGTH
        if length > limit:
            raise PDUError(
                f"PDU type 0x{pdu_type:02x} says {length} bytes, beyond the limit of {limit}"
            )

    def next_pdu(self) -> tuple[int, memoryview] | None:
        """The next complete PDU's (type, variable field), or None if incomplete.

        Raises PDUError for a length beyond the negotiated or hard limits, so
        the caller can abort before the rest arrives.
        """
        if self._buffer:
            # A PDU split across feeds: the buffer takes from the fed bytes
            # only what completes it, and the rest stays a view.
            self._fill(PDU_HEADER_LENGTH)
            if len(self._buffer) < PDU_HEADER_LENGTH:
                return None
            pdu_type, _, length = _HEADER.unpack_from(self._buffer, 0)
            self._check(pdu_type, length)
            total = PDU_HEADER_LENGTH + length
            self._fill(total)
            if len(self._buffer) < total:
                return None
            if len(self._buffer) == total:
                # Handed over whole: a view without a copy, and a new buffer.
                whole, self._buffer = self._buffer, bytearray()
                return pdu_type, memoryview(whole)[PDU_HEADER_LENGTH:]
            # More than one PDU was buffered: copied out, so the view stays
            # valid while the buffer moves on.
            body = bytes(self._buffer[PDU_HEADER_LENGTH:total])
            del self._buffer[:total]
            return pdu_type, memoryview(body)
        available = len(self._data) - self._offset
        if available < PDU_HEADER_LENGTH:
            return None
        pdu_type, _, length = _HEADER.unpack_from(self._data, self._offset)
        self._check(pdu_type, length)
        total = PDU_HEADER_LENGTH + length
        if available < total:
            return None
        start = self._offset + PDU_HEADER_LENGTH
        self._offset += total
        return pdu_type, self._data[start : self._offset]
