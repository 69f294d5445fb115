"""Pure-Python reference of the hot path; ``_pdu.pyx`` is its compiled twin.

Both modules have the same API and must give the same results, byte for byte,
including the messages and offsets of the errors they raise (the tests compare
them on arbitrary input). This one is written to be read: when the two
disagree, this module says what was meant.

Three jobs:

* P-DATA-TF headers (PS3.8 9.3.5) and fragmenting a data set into PDUs no
  longer than the peer's Maximum Length (PS3.8 D.1), as a scatter-gather list
  for one ``sendmsg`` per PDU.
* Splitting a received P-DATA-TF variable field into its PDV items.
* Walking the top-level data elements of a data set (PS3.5 7.1) to find a few
  values without building a pydicom Dataset, and decoding the UIDs and short
  texts among them.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Final, NamedTuple

from .errors import ElementScanError, PDUError

if TYPE_CHECKING:
    # collections.abc.Buffer is 3.12+; typing_extensions backports it for 3.11.
    from typing_extensions import Buffer

# PS3.8 9.3.5: PDU-type (1), reserved (1), PDU-length (4), then one PDV item:
# item-length (4), presentation context ID (1), message control header (1).
PDATA_HEADER_LENGTH: Final = 12
# PS3.8 D.1: a Maximum Length of 0 means "no limit"; we still need a bound for
# the fragment size, and 4 MiB keeps each sendmsg reasonable.
MAX_UNLIMITED_PDU: Final = 4194304

# The PDU-length field counts everything after the 6-byte PDU header (PS3.8
# 9.3.1), so a PDU with one PDV carries 6 bytes of PDV header besides the data.
_PDU_HEADER_LENGTH: Final = 6
_PDV_OVERHEAD: Final = 6
_MAX_FRAGMENT_LENGTH: Final = 0xFFFFFFFF - _PDV_OVERHEAD
_P_DATA_TF: Final = 0x04

# PS3.8 E.2: message control header bits.
_COMMAND_BIT: Final = 0x01
_LAST_BIT: Final = 0x02

# PS3.5 7.5: sequence items and their delimiters.
_ITEM: Final = 0xFFFEE000
_ITEM_DELIMITATION: Final = 0xFFFEE00D
_SEQUENCE_DELIMITATION: Final = 0xFFFEE0DD
_ITEM_GROUP: Final = 0xFFFE
_UNDEFINED_LENGTH: Final = 0xFFFFFFFF
MAX_NESTING_DEPTH: Final = 64


def _vr_code(vr: str) -> int:
    return (ord(vr[0]) << 8) | ord(vr[1])


# PS3.5 7.1.2 (Table 7.1-1): VRs whose explicit header has 2 reserved bytes and a
# 4-byte length; every other VR has a 2-byte length.
_LONG_VRS: Final = frozenset(
    _vr_code(vr)
    for vr in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV")
)
_SQ: Final = _vr_code("SQ")
_UN: Final = _vr_code("UN")
_OB: Final = _vr_code("OB")
_OW: Final = _vr_code("OW")


def _check_presentation_context_id(presentation_context_id: int) -> None:
    # PS3.8 9.3.2.2: presentation context IDs are odd integers 1..255.
    if not (1 <= presentation_context_id <= 255 and presentation_context_id % 2 == 1):
        raise ValueError(
            f"presentation context ID must be an odd number 1..255, got {presentation_context_id}"
        )


def _message_control_header(is_command: bool, is_last: bool) -> int:
    return (_COMMAND_BIT if is_command else 0) | (_LAST_BIT if is_last else 0)


def pack_pdata_header(
    presentation_context_id: int, is_command: bool, is_last: bool, fragment_length: int
) -> bytes:
    """The 12 bytes in front of one PDV fragment in its own P-DATA-TF PDU.

    Offsets (PS3.8 9.3.5, E.2): 0 PDU-type 0x04; 1 reserved 0x00; 2-5 PDU-length
    (6 + fragment_length, big endian); 6-9 PDV item-length (2 + fragment_length);
    10 presentation context ID; 11 message control header (bit 0 command,
    bit 1 last fragment).
    """
    _check_presentation_context_id(presentation_context_id)
    if not 0 <= fragment_length <= _MAX_FRAGMENT_LENGTH:
        raise ValueError(
            f"fragment length must be 0..{_MAX_FRAGMENT_LENGTH}, got {fragment_length}"
        )
    return struct.pack(
        ">BBIIBB",
        _P_DATA_TF,
        0x00,
        _PDV_OVERHEAD + fragment_length,
        2 + fragment_length,
        presentation_context_id,
        _message_control_header(is_command, is_last),
    )


def _max_fragment_length(max_pdu_length: int) -> int:
    if max_pdu_length == 0:
        max_pdu_length = MAX_UNLIMITED_PDU
    # The PDU-length field is 32 bits (PS3.8 9.3.5), and a PDU must carry its
    # 6-byte PDV header plus at least one byte of data to make progress.
    if not _PDV_OVERHEAD < max_pdu_length <= 0xFFFFFFFF:
        raise ValueError(
            f"maximum PDU length must be 0 (no limit) or {_PDV_OVERHEAD + 1}..{0xFFFFFFFF},"
            f" got {max_pdu_length}"
        )
    return max_pdu_length - _PDV_OVERHEAD


def fragment_pdata(
    data: Buffer, presentation_context_id: int, is_command: bool, max_pdu_length: int
) -> list[memoryview]:
    """Split ``data`` into P-DATA-TF PDUs of one PDV each, ready for ``sendmsg``.

    Returns ``[header0, fragment0, header1, fragment1, ...]``. Fragments are
    memoryview slices of ``data`` (no copy; they keep ``data`` exported until
    released). The headers are slices of one bytearray made for this call.
    ``max_pdu_length`` is the peer's Maximum Length (PS3.8 D.1): no PDU-length
    field exceeds it; 0 means no limit (MAX_UNLIMITED_PDU is used).
    Empty data gives one PDU with an empty, last fragment.
    """
    _check_presentation_context_id(presentation_context_id)
    max_fragment = _max_fragment_length(max_pdu_length)
    source = memoryview(data).cast("B")
    total = source.nbytes
    count = max(1, -(-total // max_fragment))
    headers = bytearray(PDATA_HEADER_LENGTH * count)
    header_view = memoryview(headers)
    parts: list[memoryview] = []
    for index in range(count):
        start = index * max_fragment
        stop = min(start + max_fragment, total)
        is_last = index == count - 1
        at = index * PDATA_HEADER_LENGTH
        struct.pack_into(
            ">BBIIBB",
            headers,
            at,
            _P_DATA_TF,
            0x00,
            _PDV_OVERHEAD + stop - start,
            2 + stop - start,
            presentation_context_id,
            _message_control_header(is_command, is_last),
        )
        parts.append(header_view[at : at + PDATA_HEADER_LENGTH])
        parts.append(source[start:stop])
    return parts


def parse_pdvs(body: Buffer) -> list[tuple[int, int, int, int]]:
    """The PDV items of a P-DATA-TF variable field (the bytes after its 6-byte header).

    Each item is ``(presentation_context_id, message_control_header,
    value_offset, value_length)`` with offsets into ``body`` (PS3.8 9.3.5.1:
    item-length 4 bytes, counting the context ID, the control header and the
    fragment). Raises PDUError for anything that does not tile ``body`` exactly.
    """
    with memoryview(body) as base, base.cast("B") as view:
        size = view.nbytes
        if size == 0:
            raise PDUError("P-DATA-TF PDU has no PDV items (PS3.8 9.3.5 requires one or more)")
        items: list[tuple[int, int, int, int]] = []
        position = 0
        while position < size:
            remaining = size - position
            if remaining < 6:
                raise PDUError(
                    f"PDV item at offset {position}: {remaining} trailing bytes,"
                    " too short for an item header (6 bytes)"
                )
            (item_length,) = struct.unpack_from(">I", view, position)
            if item_length < 2:
                raise PDUError(
                    f"PDV item at offset {position} has item-length {item_length},"
                    " less than the 2 bytes of its own header"
                )
            if item_length > remaining - 4:
                raise PDUError(
                    f"PDV item at offset {position} says {item_length} bytes,"
                    f" only {remaining - 4} remain"
                )
            items.append((view[position + 4], view[position + 5], position + 6, item_length - 2))
            position += 4 + item_length
        return items


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04x},{tag & 0xFFFF:04x})"


class _ElementHeader(NamedTuple):
    tag: int
    vr: int  # two ASCII letters as a 16-bit number; 0 when the header has no VR
    header_length: int
    length: int


class _Walker:
    """One walk over one buffer; the methods mirror the cdef functions in _pdu.pyx."""

    def __init__(self, view: memoryview) -> None:
        self.view = view
        self.size = view.nbytes

    def read_u16(self, position: int, little_endian: bool) -> int:
        value: int = struct.unpack_from("<H" if little_endian else ">H", self.view, position)[0]
        return value

    def read_u32(self, position: int, little_endian: bool) -> int:
        value: int = struct.unpack_from("<I" if little_endian else ">I", self.view, position)[0]
        return value

    def read_tag(self, position: int, little_endian: bool) -> int:
        # PS3.5 7.1.1: group then element, each 16 bits in the syntax's byte order.
        remaining = self.size - position
        if remaining < 4:
            raise ElementScanError(
                f"element header at offset {position} is truncated: only {remaining} bytes remain",
                position,
            )
        group = self.read_u16(position, little_endian)
        element = self.read_u16(position + 2, little_endian)
        return (group << 16) | element

    def truncated(self, tag: int, position: int, needed: int) -> ElementScanError:
        return ElementScanError(
            f"element {_tag_text(tag)} at offset {position} is truncated: its header needs"
            f" {needed} bytes, only {self.size - position} remain",
            position,
        )

    def read_header(self, position: int, explicit_vr: bool, little_endian: bool) -> _ElementHeader:
        tag = self.read_tag(position, little_endian)
        if self.size - position < 8:
            raise self.truncated(tag, position, 8)
        # PS3.5 7.5: items and delimiters have no VR, even in explicit syntaxes.
        if not explicit_vr or (tag >> 16) == _ITEM_GROUP:
            return _ElementHeader(tag, 0, 8, self.read_u32(position + 4, little_endian))
        first, second = self.view[position + 4], self.view[position + 5]
        if not (0x41 <= first <= 0x5A and 0x41 <= second <= 0x5A):
            raise ElementScanError(
                f"element {_tag_text(tag)} at offset {position} has unknown explicit VR"
                f" bytes {first:02x} {second:02x} (PS3.5 7.1.2 wants two uppercase letters)",
                position,
            )
        vr = (first << 8) | second
        if vr in _LONG_VRS:
            # PS3.5 7.1.2: VR, 2 reserved bytes, 32-bit length.
            if self.size - position < 12:
                raise self.truncated(tag, position, 12)
            return _ElementHeader(tag, vr, 12, self.read_u32(position + 8, little_endian))
        return _ElementHeader(tag, vr, 8, self.read_u16(position + 6, little_endian))

    def skip_value(
        self,
        header: _ElementHeader,
        position: int,
        explicit_vr: bool,
        little_endian: bool,
        depth: int,
    ) -> int:
        """The offset just after the element that starts at ``position``."""
        value_position = position + header.header_length
        if header.length != _UNDEFINED_LENGTH:
            remaining = self.size - value_position
            if header.length > remaining:
                raise ElementScanError(
                    f"element {_tag_text(header.tag)} at offset {position} says"
                    f" {header.length} bytes, only {remaining} remain",
                    position,
                )
            return value_position + header.length
        if (header.tag >> 16) == _ITEM_GROUP:
            raise ElementScanError(
                f"element {_tag_text(header.tag)} at offset {position} has undefined length"
                " outside a sequence",
                position,
            )
        if not explicit_vr:
            # Implicit VR: undefined length can only be a sequence (PS3.5 7.5.1).
            return self.walk_sequence(
                value_position, False, little_endian, depth + 1, header.tag, position
            )
        if header.vr == _UN:
            # PS3.5 6.2.2: an undefined-length UN holds Implicit VR Little Endian.
            return self.walk_sequence(value_position, False, True, depth + 1, header.tag, position)
        if header.vr in (_SQ, _OB, _OW):
            # SQ (PS3.5 7.5.1) or encapsulated pixel data (PS3.5 A.4): items until
            # the Sequence Delimitation Item.
            return self.walk_sequence(
                value_position, True, little_endian, depth + 1, header.tag, position
            )
        raise ElementScanError(
            f"element {_tag_text(header.tag)} at offset {position} has undefined length,"
            f" which VR {chr(header.vr >> 8)}{chr(header.vr & 0xFF)} cannot have (PS3.5 7.1.2)",
            position,
        )

    def walk_sequence(
        self,
        position: int,
        explicit_vr: bool,
        little_endian: bool,
        depth: int,
        sequence_tag: int,
        sequence_position: int,
    ) -> int:
        """Walk items until the Sequence Delimitation Item; return the offset after it."""
        if depth > MAX_NESTING_DEPTH:
            raise ElementScanError(
                f"element {_tag_text(sequence_tag)} at offset {sequence_position}:"
                f" sequences nested deeper than {MAX_NESTING_DEPTH}",
                sequence_position,
            )
        while True:
            if self.size - position < 8:
                raise ElementScanError(
                    f"element {_tag_text(sequence_tag)} at offset {sequence_position} has"
                    " undefined length but no Sequence Delimitation Item (fffe,e0dd)"
                    " before the end of the data",
                    sequence_position,
                )
            tag = self.read_tag(position, little_endian)
            length = self.read_u32(position + 4, little_endian)
            if tag == _SEQUENCE_DELIMITATION:
                return position + 8
            if tag != _ITEM:
                raise ElementScanError(
                    f"element {_tag_text(sequence_tag)} at offset {sequence_position}: found"
                    f" {_tag_text(tag)} at offset {position} where an Item (fffe,e000) or"
                    " Sequence Delimitation Item (fffe,e0dd) must be (PS3.5 7.5)",
                    position,
                )
            if length == _UNDEFINED_LENGTH:
                position = self.walk_item(position + 8, explicit_vr, little_endian, depth, position)
                continue
            remaining = self.size - position - 8
            if length > remaining:
                raise ElementScanError(
                    f"item (fffe,e000) at offset {position} says {length} bytes,"
                    f" only {remaining} remain",
                    position,
                )
            position += 8 + length

    def walk_item(
        self,
        position: int,
        explicit_vr: bool,
        little_endian: bool,
        depth: int,
        item_position: int,
    ) -> int:
        """Walk an undefined-length item's elements until the Item Delimitation Item."""
        while True:
            if self.size - position < 8:
                raise ElementScanError(
                    f"item (fffe,e000) at offset {item_position} has undefined length but no"
                    " Item Delimitation Item (fffe,e00d) before the end of the data",
                    item_position,
                )
            if self.read_tag(position, little_endian) == _ITEM_DELIMITATION:
                return position + 8
            header = self.read_header(position, explicit_vr, little_endian)
            position = self.skip_value(header, position, explicit_vr, little_endian, depth)


def scan_elements(
    buf: Buffer,
    offset: int,
    explicit_vr: bool,
    little_endian: bool,
    wanted: tuple[int, ...],
    stop_tag: int,
) -> tuple[dict[int, tuple[int, int]], int]:
    """Find the top-level elements in ``wanted`` (tags as 0xGGGGEEEE) from ``offset`` on.

    Returns ``({tag: (value_offset, value_length)}, end_offset)``. The walk stops
    at the first element whose tag is greater than ``stop_tag`` (end_offset is
    where that element starts) or at the end of ``buf`` (end_offset is its
    length). For an undefined-length value, value_length covers everything up to
    and including its Sequence Delimitation Item, so value_offset + value_length
    is where the next element starts. Raises ElementScanError when the elements
    cannot be walked to the end: truncated headers or values, an explicit VR that
    is not two uppercase letters, an undefined length with no delimiter, or
    sequences nested deeper than MAX_NESTING_DEPTH.
    """
    if not 0 <= stop_tag <= 0xFFFFFFFF:
        raise ValueError(f"stop tag must be 0..0xffffffff, got {stop_tag}")
    wanted_tags = frozenset(wanted)
    with memoryview(buf) as base, base.cast("B") as view:
        walker = _Walker(view)
        if not 0 <= offset <= walker.size:
            raise ValueError(f"offset {offset} is outside the buffer (0..{walker.size})")
        found: dict[int, tuple[int, int]] = {}
        position = offset
        while position < walker.size:
            tag = walker.read_tag(position, little_endian)
            if tag > stop_tag:
                return found, position
            header = walker.read_header(position, explicit_vr, little_endian)
            following = walker.skip_value(header, position, explicit_vr, little_endian, 0)
            if tag in wanted_tags:
                value_position = position + header.header_length
                found[tag] = (value_position, following - value_position)
            position = following
        return found, walker.size


def _stripped_value(view: memoryview, found: dict[int, tuple[int, int]], tag: int) -> bytes | None:
    """The value of ``tag`` without its trailing NULs and spaces; None if it was not found.

    PS3.5 6.2: values are padded to even length, UI with a NUL and text with
    a space; writers also leave either kind, so both are stripped.
    """
    entry = found.get(tag)
    if entry is None:
        return None
    value_offset, value_length = entry
    return bytes(view[value_offset : value_offset + value_length]).rstrip(b"\x00 ")


def scan_values(
    buf: Buffer,
    offset: int,
    explicit_vr: bool,
    little_endian: bool,
    ui_tags: tuple[int, ...],
    text_tags: tuple[int, ...],
    stop_tag: int,
) -> tuple[tuple[str | None, ...], tuple[str, ...], int]:
    """``scan_elements`` for ``ui_tags`` and ``text_tags``, returning their decoded values.

    Returns ``(ui_values, text_values, end_offset)``, the values in the order
    of the tags, end_offset and errors as ``scan_elements``'s. Each value
    loses its trailing NULs and spaces (PS3.5 6.2), then:

    * a UI value is decoded as ASCII; an absent tag, an empty value or one
      that is not ASCII gives None;
    * a text value (LO, PN, SH, DA, TM...) is decoded as UTF-8, or Latin-1
      when it is not UTF-8 (Latin-1 never fails); an absent tag gives "".
      The Specific Character Set is not applied: these values only label
      reports and order studies.

    Like ``scan_elements``, the last of repeated top-level elements wins.
    """
    found, end = scan_elements(
        buf, offset, explicit_vr, little_endian, (*ui_tags, *text_tags), stop_tag
    )
    with memoryview(buf) as base, base.cast("B") as view:
        ui_values: list[str | None] = []
        for tag in ui_tags:
            raw = _stripped_value(view, found, tag)
            if not raw:
                ui_values.append(None)
                continue
            try:
                ui_values.append(raw.decode("ascii"))
            except UnicodeDecodeError:
                ui_values.append(None)
        text_values: list[str] = []
        for tag in text_tags:
            raw = _stripped_value(view, found, tag)
            if raw is None:
                text_values.append("")
                continue
            try:
                text_values.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                text_values.append(raw.decode("latin-1"))
        return tuple(ui_values), tuple(text_values), end


def fragment_pdata_prefixed(
    prefix: Buffer,
    data: Buffer,
    presentation_context_id: int,
    is_command: bool,
    max_pdu_length: int,
) -> list[memoryview]:
    """``fragment_pdata`` of ``prefix`` followed by ``data``, without joining them.

    The PDUs are exactly those of ``fragment_pdata(prefix + data, ...)``, same
    headers, same fragment lengths: fragments within ``prefix`` or within
    ``data`` are slices of them, and the one fragment that straddles the two
    (if any) is a new bytes object of at most one fragment's length. That is
    how a coerced data set is sent: its re-encoded head (``prefix``, built
    once per file), then the rest of the mapped file, still zero copy.
    """
    _check_presentation_context_id(presentation_context_id)
    max_fragment = _max_fragment_length(max_pdu_length)
    head = memoryview(prefix).cast("B")
    rest = memoryview(data).cast("B")
    split_at = head.nbytes
    total = split_at + rest.nbytes
    count = max(1, -(-total // max_fragment))
    headers = bytearray(PDATA_HEADER_LENGTH * count)
    header_view = memoryview(headers)
    parts: list[memoryview] = []
    for index in range(count):
        start = index * max_fragment
        stop = min(start + max_fragment, total)
        is_last = index == count - 1
        at = index * PDATA_HEADER_LENGTH
        struct.pack_into(
            ">BBIIBB",
            headers,
            at,
            _P_DATA_TF,
            0x00,
            _PDV_OVERHEAD + stop - start,
            2 + stop - start,
            presentation_context_id,
            _message_control_header(is_command, is_last),
        )
        parts.append(header_view[at : at + PDATA_HEADER_LENGTH])
        if stop <= split_at:
            parts.append(head[start:stop])
        elif start >= split_at:
            parts.append(rest[start - split_at : stop - split_at])
        else:
            parts.append(memoryview(bytes(head[start:]) + bytes(rest[: stop - split_at])))
    return parts


# ---- the per-file C-STORE path: command sets straight to and from P-DATA-TF PDUs ----

# PS3.7 E.1: the command elements whose VR is US (2 bytes) or UL (4 bytes), and
# the AT one. They are the entries of ``protocol.dimse._VR`` with those VRs:
# the general decoder rejects a US or UL of any other length, so this one
# must check every such element present, not only those it reports.
_COMMAND_US_ELEMENTS: Final = frozenset(
    (0x0100, 0x0110, 0x0120, 0x0700, 0x0800, 0x0900, 0x0903, 0x1002, 0x1008, 0x1031)
)
_COMMAND_GROUP_LENGTH: Final = 0x0000  # UL
_COMMAND_FIELD: Final = 0x0100
_MESSAGE_ID_BEING_RESPONDED_TO: Final = 0x0120
_COMMAND_DATA_SET_TYPE: Final = 0x0800
_STATUS: Final = 0x0900
_OFFENDING_ELEMENT: Final = 0x0901  # AT
_ERROR_COMMENT: Final = 0x0902  # LO
_NO_DATASET: Final = 0x0101  # PS3.7 E.1: (0000,0800) says no data set follows
_C_STORE_RQ: Final = 0x0001
# Longer UIDs than this (64 is the most PS3.5 9.1 allows) are left to the
# general encoder, so that every length here fits its field with room to spare.
_MAX_ENCODED_UID: Final = 0xFFFF

_US_ELEMENT = struct.Struct("<HHIH")
_ELEMENT_HEADER = struct.Struct("<HHI")


def _uid_value(uid: str) -> bytes | None:
    """A UI value as the general encoder writes it, or None when it would not."""
    try:
        raw = uid.encode("ascii")
    except UnicodeEncodeError:
        return None  # the general encoder raises DIMSEError for it
    if len(raw) > _MAX_ENCODED_UID:
        return None
    # PS3.5 6.2: a UI value is padded with one NUL to an even length.
    return raw + b"\x00" if len(raw) % 2 else raw


def c_store_rq_pdus(
    presentation_context_id: int,
    message_id: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    priority: int,
    max_pdu_length: int,
) -> bytes | None:
    """The C-STORE-RQ command set (PS3.7 9.3.1.1) in its P-DATA-TF PDU(s), as one bytes object.

    The bytes are exactly those of ``fragment_pdata(c_store_rq(message_id,
    sop_class_uid, sop_instance_uid, priority).encode(), presentation_context_id,
    True, max_pdu_length)`` joined: Implicit VR Little Endian (PS3.7 6.3.1), the
    Command Group Length first, then Affected SOP Class UID, Command Field
    0001, Message ID, Priority, Command Data Set Type 0000 (a data set
    follows) and Affected SOP Instance UID, in ascending tag order (PS3.5
    7.1); then split into PDUs of at most ``max_pdu_length`` (PS3.8 D.1,
    9.3.5) with the last fragment marked. None when the general encoder
    would not write it this way: a UID outside ASCII (it raises DIMSEError),
    a UID longer than 65535 bytes, or a Message ID or Priority that is not
    an integer 0..65535; the caller then takes the general path.
    Argument errors (context ID, maximum length) are those of fragment_pdata.
    """
    _check_presentation_context_id(presentation_context_id)
    max_fragment = _max_fragment_length(max_pdu_length)
    if not (isinstance(message_id, int) and isinstance(priority, int)):
        return None
    if not (0 <= message_id <= 0xFFFF and 0 <= priority <= 0xFFFF):
        return None
    class_uid = _uid_value(sop_class_uid)
    instance_uid = _uid_value(sop_instance_uid)
    if class_uid is None or instance_uid is None:
        return None
    body = b"".join(
        (
            _ELEMENT_HEADER.pack(0x0000, 0x0002, len(class_uid)),
            class_uid,
            _US_ELEMENT.pack(0x0000, _COMMAND_FIELD, 2, _C_STORE_RQ),
            _US_ELEMENT.pack(0x0000, 0x0110, 2, message_id),
            _US_ELEMENT.pack(0x0000, 0x0700, 2, priority),
            _US_ELEMENT.pack(0x0000, _COMMAND_DATA_SET_TYPE, 2, 0x0000),
            _ELEMENT_HEADER.pack(0x0000, 0x1000, len(instance_uid)),
            instance_uid,
        )
    )
    command = _ELEMENT_HEADER.pack(0x0000, 0x0000, 4) + struct.pack("<I", len(body)) + body
    total = len(command)
    count = max(1, -(-total // max_fragment))
    pdus: list[bytes] = []
    for index in range(count):
        start = index * max_fragment
        stop = min(start + max_fragment, total)
        pdus.append(
            struct.pack(
                ">BBIIBB",
                _P_DATA_TF,
                0x00,
                _PDV_OVERHEAD + stop - start,
                2 + stop - start,
                presentation_context_id,
                _message_control_header(True, index == count - 1),
            )
        )
        pdus.append(command[start:stop])
    return b"".join(pdus)


if TYPE_CHECKING:
    from typing import TypeAlias

    # One decoded command set: (presentation context ID, Command Field, Message
    # ID Being Responded To, Status, Command Data Set Type, Error Comment,
    # Offending Element); None for an element the command set does not hold.
    # (A plain tuple, for the compiled twin makes one without a class lookup.)
    CommandSummary: TypeAlias = tuple[
        int, int, int | None, int | None, int | None, str | None, tuple[int, ...] | None
    ]


def _summarize_command(
    view: memoryview, start: int, stop: int, presentation_context_id: int
) -> CommandSummary | None:
    """The elements the sender needs from one command set, or None where the general
    decoder (``dimse.Command.decode``) would raise or a data set follows."""
    command_field: int | None = None
    responded_to: int | None = None
    status: int | None = None
    data_set_type: int | None = None
    error_comment: str | None = None
    offending: tuple[int, ...] | None = None
    position = start
    while position < stop:
        if stop - position < 8:
            return None  # stray bytes
        group, element, length = _ELEMENT_HEADER.unpack_from(view, position)
        position += 8
        if length > stop - position or group != 0x0000:
            return None  # overruns the command set, or not a command element
        if element in _COMMAND_US_ELEMENTS:
            if length != 2:
                return None
            value: int = view[position] | (view[position + 1] << 8)
            # A repeated element: the last one counts, as in the general decoder's dict.
            if element == _COMMAND_FIELD:
                command_field = value
            elif element == _MESSAGE_ID_BEING_RESPONDED_TO:
                responded_to = value
            elif element == _STATUS:
                status = value
            elif element == _COMMAND_DATA_SET_TYPE:
                data_set_type = value
        elif element == _COMMAND_GROUP_LENGTH:
            if length != 4:
                return None
        elif element == _OFFENDING_ELEMENT:
            # AT: tags of 4 bytes each (group, element); a partial one is ignored.
            offending = tuple(
                (group_ << 16) | element_
                for group_, element_ in struct.iter_unpack(
                    "<HH", view[position : position + length - length % 4]
                )
            )
        elif element == _ERROR_COMMENT:
            error_comment = (
                bytes(view[position : position + length])
                .rstrip(b"\x00 ")
                .decode("ascii", "replace")
            )
        position += length
    if command_field is None:
        return None  # the general decoder requires (0000,0100)
    if data_set_type is not None and data_set_type != _NO_DATASET:
        return None  # a data set follows: the general path reassembles it
    return (
        presentation_context_id,
        command_field,
        responded_to,
        status,
        data_set_type,
        error_comment,
        offending,
    )


def parse_command_pdus(data: Buffer, limit: int) -> list[CommandSummary] | None:
    """Command sets from bytes that are whole P-DATA-TF PDUs of whole command sets.

    The usual answer to a C-STORE (PS3.7 9.3.1.2): one P-DATA-TF (PS3.8
    9.3.5) whose one PDV holds a command set in one fragment (message
    control header: command, last; PS3.8 E.2) and no data set follows. Each
    such PDV gives one ``CommandSummary``, in order. ``limit`` is the longest
    P-DATA-TF PDU-length accepted (the Maximum Length this side announced).

    None when the bytes are anything else: a partial PDU, another PDU type,
    a PDU beyond ``limit``, PDV items that do not tile the PDU, a data set or
    command fragment, a command set the general decoder would reject, or
    one announcing a data set. The caller then gives the same bytes to the
    general path, which reports errors as it always has; so this function
    only ever accepts what the general path accepts, and reads it the same.
    """
    with memoryview(data) as base, base.cast("B") as view:
        size = view.nbytes
        if size == 0:
            return None
        commands: list[CommandSummary] = []
        position = 0
        while position < size:
            if size - position < _PDU_HEADER_LENGTH or view[position] != _P_DATA_TF:
                return None
            (length,) = struct.unpack_from(">I", view, position + 2)
            end = position + _PDU_HEADER_LENGTH + length
            if length == 0 or length > limit or end > size:
                return None
            item = position + _PDU_HEADER_LENGTH
            while item < end:
                remaining = end - item
                if remaining < 6:
                    return None
                (item_length,) = struct.unpack_from(">I", view, item)
                if item_length < 2 or item_length > remaining - 4:
                    return None
                if view[item + 5] & (_COMMAND_BIT | _LAST_BIT) != _COMMAND_BIT | _LAST_BIT:
                    return None
                command = _summarize_command(view, item + 6, item + 4 + item_length, view[item + 4])
                if command is None:
                    return None
                commands.append(command)
                item += 4 + item_length
            position = end
        return commands
