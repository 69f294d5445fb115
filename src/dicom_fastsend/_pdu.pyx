# cython: language_level=3
"""Compiled hot path; ``_pdu_py.py`` is the readable reference with the same API.

Input comes in through the buffer protocol (``const unsigned char[:]``, so
read-only bytes and mmap work) and is never copied. The element walk runs in
cdef functions over a raw pointer; Python objects are made only for results
and errors. Error messages and offsets match ``_pdu_py`` exactly, because the
tests compare the two on arbitrary input.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.unicode cimport PyUnicode_DecodeASCII, PyUnicode_DecodeLatin1, PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint32_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from .errors import ElementScanError, PDUError

# PS3.8 9.3.5: PDU-type (1), reserved (1), PDU-length (4), then one PDV item:
# item-length (4), presentation context ID (1), message control header (1).
PDATA_HEADER_LENGTH = 12
# PS3.8 D.1: a Maximum Length of 0 means "no limit"; we still need a bound for
# the fragment size, and 4 MiB keeps each sendmsg reasonable.
MAX_UNLIMITED_PDU = 4194304
MAX_NESTING_DEPTH = 64

# Small constants as a C enum so they fold at compile time (DEF is deprecated
# in Cython 3); the 32-bit tags as C globals, since an enum is a signed int.
cdef enum:
    _HEADER_LENGTH = 12
    # PS3.8 9.3.1: PDU-length counts everything after the 6-byte PDU header, so
    # one PDV adds 6 bytes (item-length, context ID, control header) to its data.
    _PDV_OVERHEAD = 6
    _P_DATA_TF = 0x04
    # PS3.8 E.2: message control header bits.
    _COMMAND_BIT = 0x01
    _LAST_BIT = 0x02
    _ITEM_GROUP = 0xFFFE
    _MAX_DEPTH = 64
    # Two ASCII letters as a 16-bit number.
    _VR_OB = 0x4F42
    _VR_OD = 0x4F44
    _VR_OF = 0x4F46
    _VR_OL = 0x4F4C
    _VR_OV = 0x4F56
    _VR_OW = 0x4F57
    _VR_SQ = 0x5351
    _VR_SV = 0x5356
    _VR_UC = 0x5543
    _VR_UN = 0x554E
    _VR_UR = 0x5552
    _VR_UT = 0x5554
    _VR_UV = 0x5556

cdef long long _MAX_FRAGMENT_LENGTH = 0xFFFFFFFF - 6
# PS3.5 7.5: sequence items and their delimiters.
cdef uint32_t _ITEM = 0xFFFEE000
cdef uint32_t _ITEM_DELIMITATION = 0xFFFEE00D
cdef uint32_t _SEQUENCE_DELIMITATION = 0xFFFEE0DD
cdef uint32_t _UNDEFINED_LENGTH = 0xFFFFFFFF


cdef int _check_presentation_context_id(object presentation_context_id) except -1:
    # PS3.8 9.3.2.2: presentation context IDs are odd integers 1..255.
    if not (1 <= presentation_context_id <= 255 and presentation_context_id % 2 == 1):
        raise ValueError(
            f"presentation context ID must be an odd number 1..255, got {presentation_context_id}"
        )
    return 0


cdef inline void _write_header(
    uint8_t* out, uint8_t presentation_context_id, bint is_command, bint is_last,
    uint32_t fragment_length,
) noexcept nogil:
    cdef uint32_t pdu_length = _PDV_OVERHEAD + fragment_length
    cdef uint32_t item_length = 2 + fragment_length
    out[0] = _P_DATA_TF
    out[1] = 0
    out[2] = (pdu_length >> 24) & 0xFF
    out[3] = (pdu_length >> 16) & 0xFF
    out[4] = (pdu_length >> 8) & 0xFF
    out[5] = pdu_length & 0xFF
    out[6] = (item_length >> 24) & 0xFF
    out[7] = (item_length >> 16) & 0xFF
    out[8] = (item_length >> 8) & 0xFF
    out[9] = item_length & 0xFF
    out[10] = presentation_context_id
    out[11] = (_COMMAND_BIT if is_command else 0) | (_LAST_BIT if is_last else 0)


def pack_pdata_header(
    presentation_context_id, is_command, is_last, fragment_length
):
    """The 12 bytes in front of one PDV fragment in its own P-DATA-TF PDU (PS3.8 9.3.5)."""
    _check_presentation_context_id(presentation_context_id)
    if not 0 <= fragment_length <= _MAX_FRAGMENT_LENGTH:
        raise ValueError(f"fragment length must be 0..{_MAX_FRAGMENT_LENGTH}, got {fragment_length}")
    cdef uint8_t out[_HEADER_LENGTH]
    _write_header(
        out, <uint8_t>presentation_context_id, bool(is_command), bool(is_last),
        <uint32_t>fragment_length,
    )
    return (<char*>out)[:_HEADER_LENGTH]


cdef long long _max_fragment_length(object max_pdu_length) except -1:
    if max_pdu_length == 0:
        max_pdu_length = MAX_UNLIMITED_PDU
    # The PDU-length field is 32 bits (PS3.8 9.3.5), and a PDU must carry its
    # 6-byte PDV header plus at least one byte of data to make progress.
    if not _PDV_OVERHEAD < max_pdu_length <= 0xFFFFFFFF:
        raise ValueError(
            f"maximum PDU length must be 0 (no limit) or {_PDV_OVERHEAD + 1}..{0xFFFFFFFF},"
            f" got {max_pdu_length}"
        )
    return <long long>max_pdu_length - _PDV_OVERHEAD


def fragment_pdata(data, presentation_context_id, is_command, max_pdu_length):
    """Split ``data`` into P-DATA-TF PDUs of one PDV each: [header0, fragment0, ...].

    Fragments are memoryview slices of ``data`` (zero copy); the headers are
    slices of one bytearray allocated for this call.
    """
    _check_presentation_context_id(presentation_context_id)
    cdef long long max_fragment = _max_fragment_length(max_pdu_length)
    source = memoryview(data).cast("B")
    cdef long long total = source.nbytes
    cdef Py_ssize_t count = (total + max_fragment - 1) // max_fragment
    if count < 1:
        count = 1
    headers = bytearray(_HEADER_LENGTH * count)
    header_view = memoryview(headers)
    cdef uint8_t* out = <uint8_t*>(<char*>headers)
    cdef uint8_t context_id = <uint8_t>presentation_context_id
    cdef bint command = bool(is_command)
    cdef list parts = []
    cdef Py_ssize_t index, at
    cdef long long start, stop
    for index in range(count):
        start = index * max_fragment
        stop = start + max_fragment
        if stop > total:
            stop = total
        at = index * _HEADER_LENGTH
        _write_header(
            out + at, context_id, command, index == count - 1, <uint32_t>(stop - start)
        )
        parts.append(header_view[at:at + _HEADER_LENGTH])
        parts.append(source[start:stop])
    return parts


def fragment_pdata_prefixed(prefix, data, presentation_context_id, is_command, max_pdu_length):
    """``fragment_pdata`` of ``prefix`` then ``data`` without joining them (see _pdu_py).

    Fragments inside either buffer are slices of it; the one that straddles
    both, if any, is a new bytes object of at most one fragment.
    """
    _check_presentation_context_id(presentation_context_id)
    cdef long long max_fragment = _max_fragment_length(max_pdu_length)
    head = memoryview(prefix).cast("B")
    rest = memoryview(data).cast("B")
    cdef long long split_at = head.nbytes
    cdef long long total = split_at + rest.nbytes
    cdef Py_ssize_t count = (total + max_fragment - 1) // max_fragment
    if count < 1:
        count = 1
    headers = bytearray(_HEADER_LENGTH * count)
    header_view = memoryview(headers)
    cdef uint8_t* out = <uint8_t*>(<char*>headers)
    cdef uint8_t context_id = <uint8_t>presentation_context_id
    cdef bint command = bool(is_command)
    cdef list parts = []
    cdef Py_ssize_t index, at
    cdef long long start, stop
    for index in range(count):
        start = index * max_fragment
        stop = start + max_fragment
        if stop > total:
            stop = total
        at = index * _HEADER_LENGTH
        _write_header(
            out + at, context_id, command, index == count - 1, <uint32_t>(stop - start)
        )
        parts.append(header_view[at:at + _HEADER_LENGTH])
        if stop <= split_at:
            parts.append(head[start:stop])
        elif start >= split_at:
            parts.append(rest[start - split_at:stop - split_at])
        else:
            parts.append(memoryview(bytes(head[start:]) + bytes(rest[:stop - split_at])))
    return parts


cdef inline uint32_t _be32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


def parse_pdvs(body):
    """The PDV items of a P-DATA-TF variable field (PS3.8 9.3.5.1):
    [(presentation_context_id, message_control_header, value_offset, value_length)].
    """
    cdef const unsigned char[:] view = memoryview(body).cast("B")
    cdef Py_ssize_t size = view.shape[0]
    if size == 0:
        raise PDUError("P-DATA-TF PDU has no PDV items (PS3.8 9.3.5 requires one or more)")
    cdef const unsigned char* data = &view[0]
    cdef list items = []
    cdef Py_ssize_t position = 0, remaining
    cdef uint32_t item_length
    while position < size:
        remaining = size - position
        if remaining < 6:
            raise PDUError(
                f"PDV item at offset {position}: {remaining} trailing bytes,"
                " too short for an item header (6 bytes)"
            )
        item_length = _be32(data + position)
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
        items.append((data[position + 4], data[position + 5], position + 6, item_length - 2))
        position += 4 + item_length
    return items


# ---- element walk (PS3.5 7.1), mirroring _pdu_py._Walker method by method ----

cdef struct Walk:
    const unsigned char* data
    Py_ssize_t size


cdef struct ElementHeader:
    uint32_t tag
    uint32_t vr  # two ASCII letters; 0 when the header has no VR
    Py_ssize_t header_length
    uint32_t length


cdef inline uint32_t _read_u16(const Walk* walk, Py_ssize_t position, bint little_endian) noexcept nogil:
    cdef const unsigned char* p = walk.data + position
    if little_endian:
        return p[0] | (<uint32_t>p[1] << 8)
    return (<uint32_t>p[0] << 8) | p[1]


cdef inline uint32_t _read_u32(const Walk* walk, Py_ssize_t position, bint little_endian) noexcept nogil:
    cdef const unsigned char* p = walk.data + position
    if little_endian:
        return p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef str _tag_text(uint32_t tag):
    return f"({tag >> 16:04x},{tag & 0xFFFF:04x})"


cdef inline bint _is_long_vr(uint32_t vr) noexcept nogil:
    # PS3.5 7.1.2 (Table 7.1-1): VR, 2 reserved bytes, 32-bit length.
    return (
        vr == _VR_OB or vr == _VR_OD or vr == _VR_OF or vr == _VR_OL or vr == _VR_OV
        or vr == _VR_OW or vr == _VR_SQ or vr == _VR_SV or vr == _VR_UC or vr == _VR_UN
        or vr == _VR_UR or vr == _VR_UT or vr == _VR_UV
    )


cdef int _read_tag(
    const Walk* walk, Py_ssize_t position, bint little_endian, uint32_t* tag
) except -1:
    # PS3.5 7.1.1: group then element, each 16 bits in the syntax's byte order.
    cdef Py_ssize_t remaining = walk.size - position
    if remaining < 4:
        raise ElementScanError(
            f"element header at offset {position} is truncated: only {remaining} bytes remain",
            position,
        )
    tag[0] = (_read_u16(walk, position, little_endian) << 16) | _read_u16(
        walk, position + 2, little_endian
    )
    return 0


cdef object _truncated(const Walk* walk, uint32_t tag, Py_ssize_t position, int needed):
    return ElementScanError(
        f"element {_tag_text(tag)} at offset {position} is truncated: its header needs"
        f" {needed} bytes, only {walk.size - position} remain",
        position,
    )


cdef int _read_header(
    const Walk* walk, Py_ssize_t position, bint explicit_vr, bint little_endian,
    ElementHeader* header,
) except -1:
    cdef uint32_t tag
    _read_tag(walk, position, little_endian, &tag)
    if walk.size - position < 8:
        raise _truncated(walk, tag, position, 8)
    header.tag = tag
    # PS3.5 7.5: items and delimiters have no VR, even in explicit syntaxes.
    if not explicit_vr or (tag >> 16) == _ITEM_GROUP:
        header.vr = 0
        header.header_length = 8
        header.length = _read_u32(walk, position + 4, little_endian)
        return 0
    cdef uint32_t first = walk.data[position + 4]
    cdef uint32_t second = walk.data[position + 5]
    if not (0x41 <= first <= 0x5A and 0x41 <= second <= 0x5A):
        raise ElementScanError(
            f"element {_tag_text(tag)} at offset {position} has unknown explicit VR"
            f" bytes {first:02x} {second:02x} (PS3.5 7.1.2 wants two uppercase letters)",
            position,
        )
    header.vr = (first << 8) | second
    if _is_long_vr(header.vr):
        if walk.size - position < 12:
            raise _truncated(walk, tag, position, 12)
        header.header_length = 12
        header.length = _read_u32(walk, position + 8, little_endian)
    else:
        header.header_length = 8
        header.length = _read_u16(walk, position + 6, little_endian)
    return 0


cdef Py_ssize_t _skip_value(
    const Walk* walk, const ElementHeader* header, Py_ssize_t position, bint explicit_vr,
    bint little_endian, int depth,
) except -1:
    """The offset just after the element that starts at ``position``."""
    cdef Py_ssize_t value_position = position + header.header_length
    cdef Py_ssize_t remaining
    if header.length != _UNDEFINED_LENGTH:
        remaining = walk.size - value_position
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
        return _walk_sequence(
            walk, value_position, False, little_endian, depth + 1, header.tag, position
        )
    if header.vr == _VR_UN:
        # PS3.5 6.2.2: an undefined-length UN holds Implicit VR Little Endian.
        return _walk_sequence(walk, value_position, False, True, depth + 1, header.tag, position)
    if header.vr == _VR_SQ or header.vr == _VR_OB or header.vr == _VR_OW:
        # SQ (PS3.5 7.5.1) or encapsulated pixel data (PS3.5 A.4).
        return _walk_sequence(
            walk, value_position, True, little_endian, depth + 1, header.tag, position
        )
    raise ElementScanError(
        f"element {_tag_text(header.tag)} at offset {position} has undefined length,"
        f" which VR {chr(header.vr >> 8)}{chr(header.vr & 0xFF)} cannot have (PS3.5 7.1.2)",
        position,
    )


cdef Py_ssize_t _walk_sequence(
    const Walk* walk, Py_ssize_t position, bint explicit_vr, bint little_endian, int depth,
    uint32_t sequence_tag, Py_ssize_t sequence_position,
) except -1:
    """Walk items until the Sequence Delimitation Item; return the offset after it."""
    cdef uint32_t tag, length
    cdef Py_ssize_t remaining
    if depth > _MAX_DEPTH:
        raise ElementScanError(
            f"element {_tag_text(sequence_tag)} at offset {sequence_position}:"
            f" sequences nested deeper than {_MAX_DEPTH}",
            sequence_position,
        )
    while True:
        if walk.size - position < 8:
            raise ElementScanError(
                f"element {_tag_text(sequence_tag)} at offset {sequence_position} has"
                " undefined length but no Sequence Delimitation Item (fffe,e0dd)"
                " before the end of the data",
                sequence_position,
            )
        _read_tag(walk, position, little_endian, &tag)
        length = _read_u32(walk, position + 4, little_endian)
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
            position = _walk_item(walk, position + 8, explicit_vr, little_endian, depth, position)
            continue
        remaining = walk.size - position - 8
        if length > remaining:
            raise ElementScanError(
                f"item (fffe,e000) at offset {position} says {length} bytes,"
                f" only {remaining} remain",
                position,
            )
        position += 8 + length


cdef Py_ssize_t _walk_item(
    const Walk* walk, Py_ssize_t position, bint explicit_vr, bint little_endian, int depth,
    Py_ssize_t item_position,
) except -1:
    """Walk an undefined-length item's elements until the Item Delimitation Item."""
    cdef uint32_t tag
    cdef ElementHeader header
    while True:
        if walk.size - position < 8:
            raise ElementScanError(
                f"item (fffe,e000) at offset {item_position} has undefined length but no"
                " Item Delimitation Item (fffe,e00d) before the end of the data",
                item_position,
            )
        _read_tag(walk, position, little_endian, &tag)
        if tag == _ITEM_DELIMITATION:
            return position + 8
        _read_header(walk, position, explicit_vr, little_endian, &header)
        position = _skip_value(walk, &header, position, explicit_vr, little_endian, depth)


def scan_elements(buf, offset, explicit_vr, little_endian, wanted, stop_tag):
    """Find the top-level elements in ``wanted`` from ``offset`` on (see _pdu_py)."""
    if not 0 <= stop_tag <= 0xFFFFFFFF:
        raise ValueError(f"stop tag must be 0..0xffffffff, got {stop_tag}")
    cdef tuple wanted_tuple = tuple(wanted)
    cdef Py_ssize_t wanted_count = len(wanted_tuple)
    cdef const unsigned char[:] view = memoryview(buf).cast("B")
    cdef Walk walk
    walk.size = view.shape[0]
    walk.data = &view[0] if walk.size > 0 else NULL
    if not 0 <= offset <= walk.size:
        raise ValueError(f"offset {offset} is outside the buffer (0..{walk.size})")
    cdef uint32_t stop = stop_tag
    cdef bint explicit = bool(explicit_vr)
    cdef bint little = bool(little_endian)
    # Tags outside 0..0xffffffff can never match; leave them out of the C array.
    cdef uint32_t* wanted_tags = <uint32_t*>malloc((wanted_count + 1) * sizeof(uint32_t))
    if wanted_tags == NULL:
        raise MemoryError()
    cdef Py_ssize_t wanted_used = 0, index
    cdef dict found = {}
    cdef Py_ssize_t position = offset, following, value_position
    cdef uint32_t tag
    cdef ElementHeader header
    try:
        for candidate in wanted_tuple:
            if 0 <= candidate <= 0xFFFFFFFF:
                wanted_tags[wanted_used] = candidate
                wanted_used += 1
        while position < walk.size:
            _read_tag(&walk, position, little, &tag)
            if tag > stop:
                return found, position
            _read_header(&walk, position, explicit, little, &header)
            following = _skip_value(&walk, &header, position, explicit, little, 0)
            for index in range(wanted_used):
                if wanted_tags[index] == tag:
                    value_position = position + header.header_length
                    found[tag] = (value_position, following - value_position)
                    break
            position = following
        return found, walk.size
    finally:
        free(wanted_tags)


cdef struct WantedValue:
    uint32_t tag
    bint usable  # False for a tag outside 0..0xffffffff, which can never match
    Py_ssize_t start  # -1 while the element has not been found
    Py_ssize_t stop


cdef enum:
    # scan_values keeps this many wanted tags on the stack; more are malloc'ed.
    _LOCAL_WANTED = 16


cdef inline bint _is_ascii(const unsigned char* data, Py_ssize_t length) noexcept nogil:
    cdef Py_ssize_t index
    for index in range(length):
        if data[index] >= 0x80:
            return False
    return True


cdef inline Py_ssize_t _stripped_stop(
    const unsigned char* data, Py_ssize_t start, Py_ssize_t stop
) noexcept nogil:
    # PS3.5 6.2: values are padded to even length, UI with a NUL and text with
    # a space; writers also leave either kind, so both are stripped.
    while stop > start and (data[stop - 1] == 0 or data[stop - 1] == 0x20):
        stop -= 1
    return stop


cdef object _ui_value(const unsigned char* data, const WantedValue* wanted):
    if wanted.start < 0:
        return None
    cdef Py_ssize_t stop = _stripped_stop(data, wanted.start, wanted.stop)
    if stop == wanted.start or not _is_ascii(data + wanted.start, stop - wanted.start):
        return None
    return PyUnicode_DecodeASCII(<const char*>data + wanted.start, stop - wanted.start, NULL)


cdef object _text_value(const unsigned char* data, const WantedValue* wanted):
    if wanted.start < 0:
        return ""
    cdef Py_ssize_t stop = _stripped_stop(data, wanted.start, wanted.stop)
    cdef const char* text = <const char*>data + wanted.start
    cdef Py_ssize_t length = stop - wanted.start
    if _is_ascii(data + wanted.start, length):
        return PyUnicode_DecodeASCII(text, length, NULL)
    try:
        return PyUnicode_DecodeUTF8(text, length, NULL)
    except UnicodeDecodeError:
        return PyUnicode_DecodeLatin1(text, length, NULL)


def scan_values(buf, offset, explicit_vr, little_endian, ui_tags, text_tags, stop_tag):
    """``scan_elements`` for ``ui_tags`` and ``text_tags``, decoded (see _pdu_py).

    One walk over the buffer that records each wanted element's span in a C
    array, then one Python object per value: no dict, no (offset, length)
    tuples, no bytes copies.
    """
    # The twin's order of checks: the tags, the stop tag, the buffer, the offset.
    cdef tuple ui_tuple = tuple(ui_tags)
    cdef tuple text_tuple = tuple(text_tags)
    if not 0 <= stop_tag <= 0xFFFFFFFF:
        raise ValueError(f"stop tag must be 0..0xffffffff, got {stop_tag}")
    # The buffer protocol straight, not memoryview(buf).cast("B") as scan_elements:
    # two memoryviews and a typed view cost about as much as decoding four
    # values. Anything PyBUF_SIMPLE refuses goes the twin's way, for its errors.
    cdef Py_buffer buffer
    cdef bint held = False
    cdef const unsigned char[:] view
    cdef Walk walk
    try:
        PyObject_GetBuffer(buf, &buffer, PyBUF_SIMPLE)
    except Exception:
        view = memoryview(buf).cast("B")
        walk.size = view.shape[0]
        walk.data = &view[0] if walk.size > 0 else NULL
    else:
        held = True
        walk.size = buffer.len
        walk.data = <const unsigned char*>buffer.buf
    try:
        return _scan_values(
            &walk, offset, explicit_vr, little_endian, ui_tuple, text_tuple, stop_tag
        )
    finally:
        # Held to the end, as the typed view would be: a bytearray cannot be
        # resized nor an mmap closed under the walk.
        if held:
            PyBuffer_Release(&buffer)


cdef tuple _scan_values(
    const Walk* walk, object offset, object explicit_vr, object little_endian, tuple ui_tuple,
    tuple text_tuple, object stop_tag,
):
    """scan_values's walk and decoding over a buffer held by its caller."""
    cdef Py_ssize_t ui_count = len(ui_tuple)
    cdef Py_ssize_t wanted_count = ui_count + len(text_tuple)
    if not 0 <= offset <= walk.size:
        raise ValueError(f"offset {offset} is outside the buffer (0..{walk.size})")
    # Every argument converted before the malloc below: a conversion that
    # raises after it would leak the array (the try that frees it starts later).
    cdef Py_ssize_t position = offset
    cdef uint32_t stop = stop_tag
    cdef bint explicit = bool(explicit_vr)
    cdef bint little = bool(little_endian)
    cdef WantedValue local[_LOCAL_WANTED]
    cdef WantedValue* wanted = local
    if wanted_count > _LOCAL_WANTED:
        wanted = <WantedValue*>malloc(wanted_count * sizeof(WantedValue))
        if wanted == NULL:
            raise MemoryError()
    cdef Py_ssize_t index, following, value_position
    cdef uint32_t tag
    cdef ElementHeader header
    cdef tuple ui_values, text_values
    cdef object value
    try:
        for index in range(wanted_count):
            candidate = ui_tuple[index] if index < ui_count else text_tuple[index - ui_count]
            wanted[index].usable = 0 <= candidate <= 0xFFFFFFFF
            wanted[index].tag = candidate if wanted[index].usable else 0
            wanted[index].start = -1
            wanted[index].stop = -1
        while position < walk.size:
            _read_tag(walk, position, little, &tag)
            if tag > stop:
                break
            _read_header(walk, position, explicit, little, &header)
            following = _skip_value(walk, &header, position, explicit, little, 0)
            # No break on a match: a tag may be asked for as UI and as text.
            for index in range(wanted_count):
                if wanted[index].usable and wanted[index].tag == tag:
                    value_position = position + header.header_length
                    wanted[index].start = value_position
                    wanted[index].stop = following
            position = following
        else:
            position = walk.size
        ui_values = PyTuple_New(ui_count)
        for index in range(ui_count):
            value = _ui_value(walk.data, &wanted[index])
            Py_INCREF(value)
            PyTuple_SET_ITEM(ui_values, index, value)
        text_values = PyTuple_New(wanted_count - ui_count)
        for index in range(ui_count, wanted_count):
            value = _text_value(walk.data, &wanted[index])
            Py_INCREF(value)
            PyTuple_SET_ITEM(text_values, index - ui_count, value)
        return ui_values, text_values, position
    finally:
        if wanted != local:
            free(wanted)


# ---- the per-file C-STORE path: command sets straight to and from P-DATA-TF PDUs ----
# (_pdu_py documents each function; the two give the same bytes and the same None.)

cdef enum:
    # PS3.7 E.1 command elements (group 0000) by element number.
    _EL_GROUP_LENGTH = 0x0000  # UL
    _EL_AFFECTED_SOP_CLASS_UID = 0x0002
    _EL_COMMAND_FIELD = 0x0100
    _EL_MESSAGE_ID = 0x0110
    _EL_MESSAGE_ID_BEING_RESPONDED_TO = 0x0120
    _EL_PRIORITY = 0x0700
    _EL_COMMAND_DATA_SET_TYPE = 0x0800
    _EL_STATUS = 0x0900
    _EL_OFFENDING_ELEMENT = 0x0901  # AT
    _EL_ERROR_COMMENT = 0x0902  # LO
    _EL_AFFECTED_SOP_INSTANCE_UID = 0x1000
    _NO_DATASET = 0x0101
    _C_STORE_RQ = 0x0001
    _MAX_ENCODED_UID = 0xFFFF
    _PDU_HEADER = 6


cdef inline bint _is_command_us(uint32_t element) noexcept nogil:
    # The US entries of protocol.dimse._VR: the general decoder rejects a US of
    # any length but 2 among them, so every one present is checked here too.
    return (
        element == 0x0100 or element == 0x0110 or element == 0x0120 or element == 0x0700
        or element == 0x0800 or element == 0x0900 or element == 0x0903 or element == 0x1002
        or element == 0x1008 or element == 0x1031
    )


cdef inline void _put_le16(uint8_t* p, uint32_t value) noexcept nogil:
    p[0] = value & 0xFF
    p[1] = (value >> 8) & 0xFF


cdef inline void _put_le32(uint8_t* p, uint32_t value) noexcept nogil:
    p[0] = value & 0xFF
    p[1] = (value >> 8) & 0xFF
    p[2] = (value >> 16) & 0xFF
    p[3] = (value >> 24) & 0xFF


cdef inline uint8_t* _put_element_header(
    uint8_t* p, uint32_t element, uint32_t length
) noexcept nogil:
    # PS3.5 7.1.3 (Implicit VR Little Endian): group, element, 32-bit length.
    _put_le16(p, 0x0000)
    _put_le16(p + 2, element)
    _put_le32(p + 4, length)
    return p + 8


cdef inline uint8_t* _put_us(uint8_t* p, uint32_t element, uint32_t value) noexcept nogil:
    p = _put_element_header(p, element, 2)
    _put_le16(p, value)
    return p + 2


cdef inline uint8_t* _put_uid(
    uint8_t* p, uint32_t element, const char* value, Py_ssize_t length
) noexcept nogil:
    # PS3.5 6.2: a UI value is padded with one NUL to an even length.
    cdef Py_ssize_t padded = length + (length & 1)
    p = _put_element_header(p, element, <uint32_t>padded)
    memcpy(p, value, length)
    if padded != length:
        p[length] = 0
    return p + padded


cdef object _ascii_uid(object uid):
    try:
        raw = uid.encode("ascii")
    except UnicodeEncodeError:
        return None  # the general encoder raises DIMSEError for it
    if len(raw) > _MAX_ENCODED_UID:
        return None
    return raw


def c_store_rq_pdus(
    presentation_context_id, message_id, sop_class_uid, sop_instance_uid, priority,
    max_pdu_length,
):
    """The C-STORE-RQ command set (PS3.7 9.3.1.1) in its P-DATA-TF PDU(s), one bytes object,
    or None where the general encoder would not write it so (see _pdu_py)."""
    _check_presentation_context_id(presentation_context_id)
    cdef long long max_fragment = _max_fragment_length(max_pdu_length)
    if not (isinstance(message_id, int) and isinstance(priority, int)):
        return None
    if not (0 <= message_id <= 0xFFFF and 0 <= priority <= 0xFFFF):
        return None
    class_uid = _ascii_uid(sop_class_uid)
    instance_uid = _ascii_uid(sop_instance_uid)
    if class_uid is None or instance_uid is None:
        return None
    cdef bytes class_bytes = <bytes>class_uid
    cdef bytes instance_bytes = <bytes>instance_uid
    cdef Py_ssize_t class_length = len(class_bytes), instance_length = len(instance_bytes)
    # After the Command Group Length: two UIDs and four US elements (PS3.7 E.1).
    cdef Py_ssize_t body = (
        8 + class_length + (class_length & 1) + 4 * 10 + 8 + instance_length + (instance_length & 1)
    )
    cdef Py_ssize_t total = 12 + body
    cdef Py_ssize_t count = (total + max_fragment - 1) // max_fragment
    cdef uint8_t* command = <uint8_t*>malloc(total)
    if command == NULL:
        raise MemoryError()
    cdef uint8_t* p
    cdef uint8_t* out
    cdef Py_ssize_t index, start, stop
    cdef uint8_t context_id = <uint8_t>presentation_context_id
    try:
        p = _put_element_header(command, _EL_GROUP_LENGTH, 4)
        _put_le32(p, <uint32_t>body)
        p = _put_uid(
            p + 4, _EL_AFFECTED_SOP_CLASS_UID, PyBytes_AS_STRING(class_bytes), class_length
        )
        p = _put_us(p, _EL_COMMAND_FIELD, _C_STORE_RQ)
        p = _put_us(p, _EL_MESSAGE_ID, <uint32_t>message_id)
        p = _put_us(p, _EL_PRIORITY, <uint32_t>priority)
        p = _put_us(p, _EL_COMMAND_DATA_SET_TYPE, 0x0000)  # a data set follows
        _put_uid(
            p, _EL_AFFECTED_SOP_INSTANCE_UID, PyBytes_AS_STRING(instance_bytes), instance_length
        )
        # PS3.8 9.3.5, D.1: one PDV per PDU, the last fragment marked (E.2).
        pdus = PyBytes_FromStringAndSize(NULL, total + _HEADER_LENGTH * count)
        out = <uint8_t*>PyBytes_AS_STRING(pdus)
        for index in range(count):
            start = index * max_fragment
            stop = start + max_fragment
            if stop > total:
                stop = total
            _write_header(out, context_id, True, index == count - 1, <uint32_t>(stop - start))
            memcpy(out + _HEADER_LENGTH, command + start, stop - start)
            out += _HEADER_LENGTH + stop - start
        return pdus
    finally:
        free(command)


cdef inline uint32_t _le16_at(const unsigned char* p) noexcept nogil:
    return p[0] | (<uint32_t>p[1] << 8)


cdef object _summarize_command(
    const unsigned char* data, Py_ssize_t start, Py_ssize_t stop, int presentation_context_id
):
    # -1: the element is not in the command set. A repeated element: the last counts.
    cdef long command_field = -1, responded_to = -1, status = -1, data_set_type = -1
    cdef Py_ssize_t comment_at = -1, comment_length = 0, offending_at = -1, offending_length = 0
    cdef Py_ssize_t position = start, index
    cdef uint32_t group, element, value
    cdef Py_ssize_t length
    while position < stop:
        if stop - position < 8:
            return None  # stray bytes
        group = _le16_at(data + position)
        element = _le16_at(data + position + 2)
        length = <Py_ssize_t>(
            data[position + 4] | (<uint32_t>data[position + 5] << 8)
            | (<uint32_t>data[position + 6] << 16) | (<uint32_t>data[position + 7] << 24)
        )
        position += 8
        if length > stop - position or group != 0x0000:
            return None  # overruns the command set, or not a command element
        if _is_command_us(element):
            if length != 2:
                return None
            value = _le16_at(data + position)
            if element == _EL_COMMAND_FIELD:
                command_field = value
            elif element == _EL_MESSAGE_ID_BEING_RESPONDED_TO:
                responded_to = value
            elif element == _EL_STATUS:
                status = value
            elif element == _EL_COMMAND_DATA_SET_TYPE:
                data_set_type = value
        elif element == _EL_GROUP_LENGTH:
            if length != 4:
                return None
        elif element == _EL_OFFENDING_ELEMENT:
            offending_at = position
            offending_length = length
        elif element == _EL_ERROR_COMMENT:
            comment_at = position
            comment_length = length
        position += length
    if command_field < 0:
        return None  # the general decoder requires (0000,0100)
    if data_set_type >= 0 and data_set_type != _NO_DATASET:
        return None  # a data set follows: the general path reassembles it
    error_comment = None
    if comment_at >= 0:
        error_comment = (
            (<const char*>data)[comment_at:comment_at + comment_length]
            .rstrip(b"\x00 ")
            .decode("ascii", "replace")
        )
    offending = None
    if offending_at >= 0:
        # AT: tags of 4 bytes each (group, element); a partial one is ignored.
        offending = tuple([
            (_le16_at(data + offending_at + 4 * index) << 16)
            | _le16_at(data + offending_at + 4 * index + 2)
            for index in range(offending_length // 4)
        ])
    return (
        presentation_context_id,
        command_field,
        None if responded_to < 0 else responded_to,
        None if status < 0 else status,
        None if data_set_type < 0 else data_set_type,
        error_comment,
        offending,
    )


def parse_command_pdus(data, limit):
    """Command sets from bytes that are whole P-DATA-TF PDUs of whole command sets
    (PS3.8 9.3.5, E.2; PS3.7 9.3.1.2), or None for anything else (see _pdu_py)."""
    cdef const unsigned char[:] view = memoryview(data).cast("B")
    cdef Py_ssize_t size = view.shape[0]
    if size == 0:
        return None
    # The PDU-length field is 32 bits: a larger limit is no limit.
    cdef long long maximum = limit if limit <= 0xFFFFFFFF else 0xFFFFFFFF
    cdef const unsigned char* bytes_ = &view[0]
    cdef list commands = []
    cdef Py_ssize_t position = 0, end, item, remaining
    cdef long long length, item_length
    while position < size:
        if size - position < _PDU_HEADER or bytes_[position] != _P_DATA_TF:
            return None
        length = _be32(bytes_ + position + 2)
        end = position + _PDU_HEADER + length
        if length == 0 or length > maximum or end > size:
            return None
        item = position + _PDU_HEADER
        while item < end:
            remaining = end - item
            if remaining < 6:
                return None
            item_length = _be32(bytes_ + item)
            if item_length < 2 or item_length > remaining - 4:
                return None
            if bytes_[item + 5] & (_COMMAND_BIT | _LAST_BIT) != _COMMAND_BIT | _LAST_BIT:
                return None
            command = _summarize_command(
                bytes_, item + 6, item + 4 + item_length, bytes_[item + 4]
            )
            if command is None:
                return None
            commands.append(command)
            item += 4 + item_length
        position = end
    return commands
