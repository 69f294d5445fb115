"""Tag coercion on the fly (``--coerce RULES.csv``): the rules, and re-encoding a data set's head.

A rules file is CSV with the header ``keyword,match,replace``. Each line names
one top-level data element by its keyword (``PatientID``) or its tag
(``(0010,0020)``). When the element's value equals ``match`` (``*``: any value)
it becomes ``replace``; an empty ``replace`` removes the element; an element the
data set lacks is added when ``match`` is ``*``. For one element, a line whose
``match`` equals the value wins over a ``*`` line.

Zero copy survives: only the elements up to and including the last one that
changes are re-encoded (``coerce_dataset``), in the data set's own transfer
syntax (PS3.5 7.1: explicit or implicit VR, little or big endian); the caller
sends those bytes, then the rest of the mapped file untouched from
``Coerced.resume_at`` on. The pixel data always lies in that untouched rest:
rules may not name it, nor anything after it, nor a sequence.

This module imports pydicom only inside the functions that need it (reading
the rules; text in a non-default character set), so that a worker unpickling
the rules does not pay its import.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ..errors import ElementScanError, FastsendError
from ..protocol.hotpath import scan_elements
from ..protocol.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)

if TYPE_CHECKING:
    from typing_extensions import Buffer

HEADER: Final = ("keyword", "match", "replace")
ANY: Final = "*"

# PS3.5 Table 6.2-1: text VRs whose values are character strings; the ones a
# Specific Character Set (0008,0005) applies to (PS3.5 6.1.2.3) are CHARSET_VRS.
TEXT_VRS: Final = frozenset(
    ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI")
    + ("UR", "UT")
)
CHARSET_VRS: Final = frozenset(("LO", "LT", "PN", "SH", "ST", "UC", "UT"))
# VRs whose value is one string, never split at a backslash (PS3.5 6.2: VM 1).
SINGLE_VALUED_VRS: Final = frozenset(("LT", "ST", "UR", "UT"))
# Binary numbers, by the struct format of one value (PS3.5 6.2, 7.3 byte order).
NUMBER_FORMATS: Final = {
    "US": "H",
    "SS": "h",
    "UL": "I",
    "SL": "i",
    "UV": "Q",
    "SV": "q",
    "FL": "f",
    "FD": "d",
}
# PS3.5 7.1.2: explicit VRs with 2 reserved bytes and a 32-bit length.
LONG_VRS: Final = frozenset(
    ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV")
)
PIXEL_DATA_GROUP: Final = 0x7FE0
SPECIFIC_CHARACTER_SET: Final = 0x00080005
# Elements a rule may not change, and why. The UIDs identify the instance: the
# C-STORE-RQ's Affected SOP Class and Instance UIDs must equal the data set's
# (PS3.7 9.3.1.1), the presentation context is the SOP Class's (PS3.8 7.1.1.13),
# and the journal de-duplicates and verifies (C-FIND, Storage Commitment) by
# them. The character set says how every other text value is encoded (PS3.5
# 6.1.2.3); changing it relabels those values without re-encoding them.
_UID_REASON: Final = (
    "UIDs identify the instance: the C-STORE request, the presentation context, the journal"
    " and fastsend verify use the original ones (PS3.7 9.3.1.1); remap UIDs with a"
    " de-identification or UID-remapping tool before sending, not with --coerce"
)
REFUSED: Final = {
    0x00080016: _UID_REASON,  # SOPClassUID
    0x00080018: _UID_REASON,  # SOPInstanceUID
    0x0020000D: _UID_REASON,  # StudyInstanceUID
    0x0020000E: _UID_REASON,  # SeriesInstanceUID
    SPECIFIC_CHARACTER_SET: (
        "it declares how every other text value of the data set is encoded (PS3.5 6.1.2.3);"
        " changing it would relabel those values without re-encoding them"
    ),
}
_TAG_PATTERN: Final = re.compile(r"^\(?\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)?$")


class CoercionRulesError(FastsendError):
    """The rules file is unusable; the message names the file and the line."""


class CoercionError(FastsendError):
    """One data set cannot be coerced (its syntax, its character set); the file fails."""


def tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


@dataclass(frozen=True, slots=True)
class Rule:
    """One line of the rules file."""

    line: int
    keyword: str  # the keyword, or the tag as written when it has none
    tag: int
    vr: str  # from the DICOM dictionary (PS3.6)
    match: str  # ANY: whatever the value is, or absent
    replace: str  # "": remove the element

    def describe(self) -> str:
        to = "remove" if not self.replace else repr(self.replace)
        return f"line {self.line}: {self.keyword} {self.match!r} -> {to}"


@dataclass(frozen=True, slots=True)
class TagRules:
    """The rules for one element: by exact match, and the ``*`` one."""

    vr: str
    exact: dict[str, Rule]
    anything: Rule | None

    def rule_for(self, value: str | None) -> Rule | None:
        """The rule that applies to this value (None: the element is absent)."""
        if value is None:
            return self.anything if self.anything is not None and self.anything.replace else None
        return self.exact.get(value, self.anything)


@dataclass(frozen=True, slots=True)
class Coercion:
    """The rules of one run, as the workers get them (picklable, pydicom-free)."""

    source: str  # the rules file, for messages
    rules: tuple[Rule, ...]
    by_tag: dict[int, TagRules] = field(init=False, compare=False, repr=False)  # derived
    tags: tuple[int, ...] = field(init=False, compare=False, repr=False)  # ascending
    # What the rules do, line numbers and order aside: the journal keeps it with
    # each instance stored, so a rerun with other rules sends the file again.
    digest: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        by_tag: dict[int, TagRules] = {}
        for rule in self.rules:
            rules = by_tag.setdefault(rule.tag, TagRules(rule.vr, {}, None))
            if rule.match == ANY:
                by_tag[rule.tag] = TagRules(rule.vr, rules.exact, rule)
            else:
                rules.exact[rule.match] = rule
        object.__setattr__(self, "by_tag", by_tag)
        object.__setattr__(self, "tags", tuple(sorted(by_tag)))
        what = sorted((rule.tag, rule.match, rule.replace) for rule in self.rules)
        text = json.dumps(what, ensure_ascii=False, separators=(",", ":"))
        object.__setattr__(self, "digest", hashlib.sha256(text.encode()).hexdigest()[:32])


# ---------------------------------------------------------------- reading the rules


def load_rules(path: str | Path) -> Coercion:
    """Read and check a rules file; CoercionRulesError names the first bad line."""
    shown = str(path)
    try:
        # utf-8-sig: spreadsheets often write a byte order mark first.
        with open(path, encoding="utf-8-sig", newline="") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise CoercionRulesError(f"cannot read the coercion rules {shown}: {exc}") from exc
    return parse_rules(text, shown)


def load_rules_apart(path: str | Path) -> Coercion:
    """``load_rules`` in a short-lived spawned process.

    Checking the rules needs pydicom's dictionary and VR rules, and importing
    pydicom costs about 28 MB of RSS. Done here, in the coordinator, every
    worker forked from it would carry those pages too: a coerced send would not
    keep the memory of a plain one. A spawned process imports it and is gone.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(load_rules, str(path)).result()


def parse_rules(text: str, source: str = "<rules>") -> Coercion:
    """The rules in ``text`` (CSV); ``source`` names it in errors."""
    # A file object, not text.splitlines(): that also splits at U+2028, U+001C
    # and the like, inside values and with wrong line numbers; newline="" lets
    # the csv module see quoted line breaks (its documented way).
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rules: list[Rule] = []
    seen: dict[tuple[int, str], int] = {}
    header_seen = False
    line = 0
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if not header_seen:
                if tuple(cell.strip().lower() for cell in row) != HEADER:
                    raise CoercionRulesError(
                        f"{source} line {line}: the first line must be the header"
                        f" 'keyword,match,replace', not {','.join(row)!r}"
                    )
                header_seen = True
                continue
            if len(row) == 4 and row[0].lstrip().startswith("(") and row[1].rstrip().endswith(")"):
                # An unquoted tag: "(0010,0020)" holds the CSV delimiter.
                row = [f"{row[0]},{row[1]}", row[2], row[3]]
            if len(row) != 3:
                raise CoercionRulesError(
                    f"{source} line {line}: {len(row)} fields, a rule has 3"
                    " (keyword,match,replace); quote a value that holds a comma"
                )
            rule = _rule(source, line, row[0].strip(), row[1], row[2])
            key = (rule.tag, rule.match)
            if key in seen:
                raise CoercionRulesError(
                    f"{source} line {line}: {rule.keyword} with match {rule.match!r} is"
                    f" already given on line {seen[key]}; keep one"
                )
            seen[key] = line
            rules.append(rule)
    except csv.Error as exc:
        raise CoercionRulesError(f"{source} line {reader.line_num}: malformed CSV: {exc}") from exc
    if not header_seen:
        raise CoercionRulesError(f"{source}: empty; it needs the header 'keyword,match,replace'")
    if not rules:
        raise CoercionRulesError(f"{source}: no rules after the header")
    return Coercion(source, tuple(rules))


def _rule(source: str, line: int, name: str, match: str, replace: str) -> Rule:
    from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

    where = f"{source} line {line}"
    found = _TAG_PATTERN.match(name)
    if found:
        tag = int(found.group(1) + found.group(2), 16)
        keyword = keyword_for_tag(tag) or tag_text(tag)
    else:
        looked_up = tag_for_keyword(name)
        if looked_up is None:
            raise CoercionRulesError(
                f"{where}: unknown keyword {name!r}: give a DICOM keyword (PS3.6, e.g."
                " PatientID) or a tag as (gggg,eeee)"
            )
        tag, keyword = looked_up, name
    group, element = tag >> 16, tag & 0xFFFF
    if group in (0x0000, 0x0002) or group == 0xFFFE:
        raise CoercionRulesError(
            f"{where}: {keyword} {tag_text(tag)} is not a data set element (groups 0000, 0002"
            " and FFFE are the command, the file meta information and items)"
        )
    if group % 2:
        raise CoercionRulesError(
            f"{where}: {tag_text(tag)} is a private element; its VR is not in the DICOM"
            " dictionary, so it cannot be coerced"
        )
    if tag in REFUSED:
        raise CoercionRulesError(
            f"{where}: {keyword} {tag_text(tag)} cannot be coerced: {REFUSED[tag]}"
        )
    if element == 0x0000:
        raise CoercionRulesError(
            f"{where}: {tag_text(tag)} is a group length; fastsend recomputes those itself"
        )
    if group >= PIXEL_DATA_GROUP:
        raise CoercionRulesError(
            f"{where}: {keyword} {tag_text(tag)} is pixel data or after it: not supported,"
            " coercion re-encodes only the elements before the pixel data"
        )
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise CoercionRulesError(
            f"{where}: {tag_text(tag)} is not in the DICOM dictionary (PS3.6): its VR is unknown"
        ) from None
    if vr == "SQ":
        raise CoercionRulesError(
            f"{where}: {keyword} is a sequence (SQ): not supported, only elements with a"
            " single value"
        )
    if vr not in TEXT_VRS and vr not in NUMBER_FORMATS:
        raise CoercionRulesError(
            f"{where}: {keyword} has VR {vr}: not supported (text VRs and US, SS, UL, SL, UV,"
            " SV, FL, FD are)"
        )
    if match != ANY:
        _check_value(where, keyword, vr, match, "match")
    if replace:
        _check_value(where, keyword, vr, replace, "replace")
    return Rule(line, keyword, tag, vr, match, replace)


def _check_value(where: str, keyword: str, vr: str, value: str, what: str) -> None:
    """PS3.5 Table 6.2-1 character repertoire and length limits, as pydicom checks them."""
    from pydicom import config
    from pydicom.valuerep import validate_value

    values: list[object]
    try:
        if vr in NUMBER_FORMATS:
            convert = float if vr in ("FL", "FD") else int
            values = [convert(part) for part in value.split("\\")]
        else:
            if vr not in CHARSET_VRS and not value.isascii():
                raise ValueError(f"VR {vr} allows only the default character repertoire")
            values = list(value.split("\\") if vr not in SINGLE_VALUED_VRS else [value])
        for one in values:
            validate_value(vr, one, config.RAISE)
    except ValueError as exc:
        raise CoercionRulesError(
            f"{where}: {what} value {value!r} is not valid for {keyword} (VR {vr}): {exc}"
        ) from None


# ---------------------------------------------------------------- re-encoding


@dataclass(frozen=True, slots=True)
class Change:
    """What happened to one element of one instance."""

    keyword: str
    original: str | None  # None: the element was absent (added)
    new: str | None  # None: the element was removed
    line: int  # the rule's line in the rules file


@dataclass(frozen=True, slots=True)
class Coerced:
    """A coerced data set: ``prefix`` then the source bytes from ``resume_at`` on."""

    prefix: bytes
    resume_at: int
    changes: tuple[Change, ...]


@dataclass(frozen=True, slots=True)
class _Syntax:
    explicit_vr: bool
    little_endian: bool

    @property
    def order(self) -> str:
        return "<" if self.little_endian else ">"


def _syntax(transfer_syntax: str) -> _Syntax:
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        # PS3.5 A.5: the whole data set is one deflate stream; changing an
        # element means inflating and deflating all of it.
        raise CoercionError(
            "coercion of Deflated Explicit VR Little Endian data sets is not supported;"
            " send it with --transcode if-needed to a destination that does not accept"
            " deflate, or without --coerce"
        )
    return _Syntax(
        transfer_syntax != IMPLICIT_VR_LITTLE_ENDIAN, transfer_syntax != EXPLICIT_VR_BIG_ENDIAN
    )


# PS3.3 C.12.1.1.2 Table C.12-2 and -4: single-byte and multi-byte character sets
# without code extensions, as Python codecs. The table is here, not pydicom's:
# importing pydicom.charset costs a worker about 28 MB of RSS.
DEFAULT_CODEC: Final = "iso8859"  # pydicom's name for the default repertoire (ISO-IR 6)
_SINGLE_CODECS: Final = {
    "": DEFAULT_CODEC,  # decoded leniently (as Latin-1), encoded as ASCII only
    "ISO_IR 6": DEFAULT_CODEC,
    "ISO_IR 100": "latin_1",
    "ISO_IR 101": "iso8859_2",
    "ISO_IR 109": "iso8859_3",
    "ISO_IR 110": "iso8859_4",
    "ISO_IR 144": "iso8859_5",
    "ISO_IR 127": "iso8859_6",
    "ISO_IR 126": "iso8859_7",
    "ISO_IR 138": "iso8859_8",
    "ISO_IR 148": "iso8859_9",
    "ISO_IR 203": "iso8859_15",
    "ISO_IR 166": "iso8859_11",
    "ISO_IR 13": "shift_jis",
    "ISO_IR 192": "UTF8",
    "GB18030": "GB18030",
    "GBK": "GBK",
}


def _python_codecs(charset: bytes) -> list[str]:
    """Python codecs for a Specific Character Set value (PS3.3 C.12.1.1.2)."""
    terms = [t.strip(b" \x00").decode("ascii", "replace") for t in charset.split(b"\\")]
    if len(terms) == 1 and terms[0] in _SINGLE_CODECS:
        return [_SINGLE_CODECS[terms[0]]]
    # Code extensions (ISO 2022, several terms): pydicom knows them.
    from pydicom.charset import convert_encodings

    return list(convert_encodings(terms))


def _encode_text(value: str, vr: str, codecs: list[str]) -> bytes:
    if vr not in CHARSET_VRS or value.isascii():
        return value.encode("ascii")
    if codecs == [DEFAULT_CODEC]:
        # PS3.5 6.1.2.3: without (0008,0005), or with ISO_IR 6, a value holds
        # the default repertoire (ASCII) only. Python's "iso8859" is Latin-1:
        # encoding with it would write undeclared Latin-1 bytes.
        raise CoercionError(
            f"{value!r} is not ASCII, and the data set declares no Specific Character Set"
            " (0008,0005) that can hold it (PS3.5 6.1.2.3: the default repertoire is ASCII);"
            " give this file an ASCII value (a rule matching its current value), or send it"
            " without --coerce"
        )
    if len(codecs) == 1:
        try:
            return value.encode(codecs[0])  # strict: never a replacement character
        except UnicodeError as exc:
            raise CoercionError(
                f"{value!r} cannot be written in the data set's Specific Character Set"
                f" ({codecs[0]}): {exc}"
            ) from None
    # ISO 2022 code extensions (PS3.5 6.1.2.5): pydicom writes the escapes. It
    # tries the first term's codec first, with no escape sequence; for ISO 2022
    # IR 6 that is Latin-1, whose bytes above 0x7F are then undeclared (G1 is
    # empty until an escape designates a set): "ascii" in its place makes it
    # escape to the term that holds them. A value no term holds comes back
    # with replacement characters, not an error: the round trip finds those.
    attempts = [codecs]
    if codecs[0] == DEFAULT_CODEC:
        attempts.append(["ascii", *codecs[1:]])
    for attempt in attempts:
        encoded = _encode_iso2022(value, attempt)
        if encoded is not None and _declared(encoded, codecs, value):
            return encoded
    raise CoercionError(
        f"{value!r} cannot be written in the data set's Specific Character Set"
        f" ({', '.join(codecs)}): no term of it holds all its characters"
    )


def _encode_iso2022(value: str, codecs: list[str]) -> bytes | None:
    import warnings

    from pydicom.charset import encode_string

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the replacement warning: _declared decides
        try:
            return bytes(encode_string(value, codecs))
        except (UnicodeError, ValueError, LookupError, KeyError):
            return None


def _declared(encoded: bytes, codecs: list[str], value: str) -> bool:
    """Whether ``encoded`` reads back as ``value``, with no byte above 0x7F before an escape
    when the first term is the default repertoire."""
    import warnings

    from pydicom.charset import decode_bytes

    if codecs[0] == DEFAULT_CODEC and not encoded.split(b"\x1b", 1)[0].isascii():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return str(decode_bytes(encoded, codecs, set())) == value


def _decode_text(raw: bytes, vr: str, codecs: list[str]) -> str:
    if vr not in CHARSET_VRS or raw.isascii():
        return raw.decode("ascii", "replace")
    from pydicom.charset import decode_bytes

    return str(decode_bytes(raw, codecs, set()))


def _pad(raw: bytes, vr: str) -> bytes:
    # PS3.5 6.2 and 7.1: values have even length; UI pads with NUL, text with space.
    if len(raw) % 2:
        return raw + (b"\x00" if vr == "UI" else b" ")
    return raw


def _strip(raw: bytes, vr: str) -> bytes:
    # PS3.5 6.2: trailing padding is not part of the value (UI: NUL; text:
    # spaces, and a trailing NUL some writers use).
    return raw.rstrip(b" \x00") if vr in TEXT_VRS else raw


def encode_value(value: str, vr: str, little_endian: bool, codecs: list[str]) -> bytes:
    """The padded value bytes of ``value`` (a rule's text) for ``vr``."""
    if vr in NUMBER_FORMATS:
        order = "<" if little_endian else ">"
        convert = float if vr in ("FL", "FD") else int
        numbers = [convert(part) for part in value.split("\\")]
        return struct.pack(f"{order}{len(numbers)}{NUMBER_FORMATS[vr]}", *numbers)
    return _pad(_encode_text(value, vr, codecs), vr)


def decode_value(raw: bytes, vr: str, little_endian: bool, codecs: list[str]) -> str:
    """A value as the rules file would write it (padding stripped, numbers joined by ``\\``)."""
    if vr in NUMBER_FORMATS:
        code = NUMBER_FORMATS[vr]
        size = struct.calcsize(code)
        order = "<" if little_endian else ">"
        count = len(raw) // size
        numbers = struct.unpack(f"{order}{count}{code}", raw[: count * size])
        return "\\".join(repr(n) if isinstance(n, float) else str(n) for n in numbers)
    return _decode_text(_strip(raw, vr), vr, codecs)


def encode_element(tag: int, vr: str, value: bytes, syntax: _Syntax) -> bytes:
    """One data element (PS3.5 7.1.2 explicit, 7.1.3 implicit) in the syntax's byte order."""
    order = syntax.order
    head = struct.pack(f"{order}HH", tag >> 16, tag & 0xFFFF)
    if not syntax.explicit_vr:
        return head + struct.pack(f"{order}I", len(value)) + value
    if vr in LONG_VRS:
        return (
            head + vr.encode("ascii") + b"\x00\x00" + struct.pack(f"{order}I", len(value)) + value
        )
    if len(value) > 0xFFFF:
        raise CoercionError(f"a {vr} value of {len(value)} bytes does not fit its 16-bit length")
    return head + vr.encode("ascii") + struct.pack(f"{order}H", len(value)) + value


def _element_span(view: memoryview, position: int, syntax: _Syntax) -> tuple[int, int, int]:
    """(tag, value offset, offset after) of the element at ``position``.

    The hot path's walker measures it, sequences of undefined length included.
    """
    order = syntax.order
    group, element = struct.unpack_from(f"{order}HH", view, position)
    tag = (group << 16) | element
    found, _ = scan_elements(view, position, syntax.explicit_vr, syntax.little_endian, (tag,), tag)
    if tag not in found:  # pragma: no cover - the walker always reports the element asked for
        raise ElementScanError(f"element {tag_text(tag)} at offset {position} not found", position)
    value_at, length = found[tag]
    return tag, value_at, value_at + length


def coerce_dataset(data: Buffer, transfer_syntax: str, coercion: Coercion) -> Coerced | None:
    """Apply the rules to one data set; None when nothing changes (send it as it is).

    Raises CoercionError when the syntax cannot be coerced and ElementScanError
    when the elements cannot be walked.
    """
    syntax = _syntax(transfer_syntax)
    with memoryview(data) as base, base.cast("B") as view:
        wanted = (*coercion.tags, SPECIFIC_CHARACTER_SET)
        found, _ = scan_elements(
            view, 0, syntax.explicit_vr, syntax.little_endian, wanted, coercion.tags[-1]
        )
        codecs = [DEFAULT_CODEC]
        if SPECIFIC_CHARACTER_SET in found:
            at, length = found[SPECIFIC_CHARACTER_SET]
            codecs = _python_codecs(bytes(view[at : at + length]))
        little = syntax.little_endian
        # tag -> (rule, new value bytes or None to remove, original bytes or None)
        planned: dict[int, tuple[Rule, bytes | None, bytes | None]] = {}
        for tag in coercion.tags:
            rules = coercion.by_tag[tag]
            if tag not in found:
                rule = rules.rule_for(None)
                if rule is not None:
                    planned[tag] = (
                        rule,
                        encode_value(rule.replace, rules.vr, little, codecs),
                        None,
                    )
                continue
            at, length = found[tag]
            original = bytes(view[at : at + length])
            rule = rules.rule_for(decode_value(original, rules.vr, little, codecs))
            if rule is None:
                continue
            new = encode_value(rule.replace, rules.vr, little, codecs) if rule.replace else None
            if new != original:  # a rule that writes the value already there changes nothing
                planned[tag] = (rule, new, original)
        if not planned:
            return None
        return _rewrite(view, syntax, planned, codecs)


def _rewrite(
    view: memoryview,
    syntax: _Syntax,
    planned: dict[int, tuple[Rule, bytes | None, bytes | None]],
    codecs: list[str],
) -> Coerced:
    """Re-encode the elements up to the last planned change; see coerce_dataset."""
    last = max(planned)
    added = sorted(tag for tag, (_, _, original) in planned.items() if original is None)
    out = bytearray()
    group_lengths: dict[int, tuple[int, int]] = {}  # group -> (offset of its value in out, value)
    delta: dict[int, int] = {}  # group -> change of its byte count
    changes: list[Change] = []

    def emit(tag: int, old_span: int) -> None:
        rule, new, original = planned[tag]
        element = b"" if new is None else encode_element(tag, rule.vr, new, syntax)
        out.extend(element)
        delta[tag >> 16] = delta.get(tag >> 16, 0) + len(element) - old_span
        changes.append(
            Change(
                rule.keyword,
                None
                if original is None
                else decode_value(original, rule.vr, syntax.little_endian, codecs),
                None if new is None else decode_value(new, rule.vr, syntax.little_endian, codecs),
                rule.line,
            )
        )

    position, size = 0, view.nbytes
    while position < size:
        tag, value_at, after = _element_span(view, position, syntax)
        if tag > last:
            break
        while added and added[0] < tag:
            emit(added.pop(0), 0)
        if tag in planned:
            emit(tag, after - position)
        else:
            if tag & 0xFFFF == 0 and after - value_at == 4:
                # PS3.5 7.2: a group length counts the group's bytes after
                # it; patched below once the group's changes are known.
                (value,) = struct.unpack_from(f"{syntax.order}I", view, value_at)
                group_lengths[tag >> 16] = (len(out) + value_at - position, value)
            out.extend(view[position:after])
        position = after
    while added:
        emit(added.pop(0), 0)
    for group, (at, value) in group_lengths.items():
        if group in delta:
            struct.pack_into(f"{syntax.order}I", out, at, value + delta[group])
    return Coerced(bytes(out), position, tuple(changes))


# ---------------------------------------------------------------- scan --coerce


EXAMPLES_PER_RULE: Final = 3


@dataclass(slots=True)
class CoercionPreview:
    """What --coerce would change (``fastsend scan --coerce``): counts per rule, examples."""

    coercion: Coercion
    instances: int = 0  # instances that would be sent with a change
    per_rule: dict[int, int] = field(default_factory=dict)  # rule line -> instances changed
    examples: dict[int, list[tuple[str, Change]]] = field(
        default_factory=dict
    )  # line -> (path, change)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (path, why) would fail

    def observe(self, path: str, dataset_offset: int, transfer_syntax: str) -> None:
        """Coerce one file's data set in memory, as send would in its own syntax."""
        import mmap

        try:
            with open(path, "rb") as handle:
                mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                with memoryview(mapped) as whole, whole[dataset_offset:] as view:
                    coerced = coerce_dataset(view, transfer_syntax, self.coercion)
            finally:
                mapped.close()
        except (OSError, ValueError, CoercionError, ElementScanError) as exc:
            self.refused.append((path, str(exc)))
            return
        if coerced is None:
            return
        self.instances += 1
        for change in coerced.changes:
            self.per_rule[change.line] = self.per_rule.get(change.line, 0) + 1
            shown = self.examples.setdefault(change.line, [])
            if len(shown) < EXAMPLES_PER_RULE:
                shown.append((path, change))

    def as_dict(self) -> dict[str, object]:
        return {
            "rules": self.coercion.source,
            "instances": self.instances,
            "per_rule": [
                {
                    "line": rule.line,
                    "keyword": rule.keyword,
                    "match": rule.match,
                    "replace": rule.replace,
                    "instances": self.per_rule.get(rule.line, 0),
                    "examples": [
                        {"path": path, "original": change.original, "new": change.new}
                        for path, change in self.examples.get(rule.line, [])
                    ],
                }
                for rule in self.coercion.rules
                if rule.line in self.per_rule
            ],
            "refused": [{"path": path, "reason": why} for path, why in self.refused],
        }

    def lines(self) -> list[str]:
        """The plain-text report."""
        out = [
            f"coercion ({self.coercion.source}): {self.instances} instance(s) would change,"
            f" {sum(1 for r in self.coercion.rules if r.line in self.per_rule)} of"
            f" {len(self.coercion.rules)} rule(s) apply"
        ]
        for rule in self.coercion.rules:
            count = self.per_rule.get(rule.line, 0)
            if not count:
                continue
            out.append(f"  {count:>8}  {rule.describe()}")
            for path, change in self.examples.get(rule.line, []):
                before = "(absent)" if change.original is None else repr(change.original)
                after = "(removed)" if change.new is None else repr(change.new)
                out.append(f"            {path}: {before} -> {after}")
        if self.refused:
            out.append("cannot be coerced (would fail):")
            out += [f"  {path}: {why}" for path, why in self.refused]
        return out
