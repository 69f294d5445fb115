"""PDU encoding, decoding and framing (PS3.8 9.3).

The golden byte strings below are written out by hand from the PDU and item
layouts of PS3.8 9.3 (Tables 9-11 to 9-26) and PS3.8 Annex D / PS3.7 Annex D
for the user information sub-items, one annotated field at a time. They are
not captured from ``encode``. All multi-byte PDU fields are big endian
(PS3.8 9.3.1).
"""

from __future__ import annotations

import string
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicom_fastsend.errors import PDUError
from dicom_fastsend.protocol.pdu import (
    MAX_CONTROL_PDU_LENGTH,
    PDV,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PDUReader,
    PresentationContextAC,
    PresentationContextRQ,
    UserInformation,
    decode_pdu,
    encode,
    presentation_context_result_text,
)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"  # PS3.4 B.5 / PS3.6 Annex A
EXPLICIT_LE = "1.2.840.10008.1.2.1"  # PS3.5 A.2
IMPLICIT_LE = "1.2.840.10008.1.2"  # PS3.5 A.1
DICOM_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # PS3.7 A.2.1
SCU_CLASS_UID = "1.2.826.0.1.3680043.10.1447.99"  # 30 characters
SCU_VERSION = "FASTSEND_010"  # 12 characters
SCP_CLASS_UID = "1.2.40.0.13.1.3"  # 15 characters: odd, and not padded in UL items


def body(pdu_bytes: bytes) -> memoryview:
    """The variable field of a PDU: everything after the 6-byte header (PS3.8 9.3.1)."""
    return memoryview(pdu_bytes)[6:]


# ----------------------------------------------------------------- golden PDUs

# A-ASSOCIATE-RQ, PS3.8 9.3.2 Table 9-11.
RQ_GOLDEN = b"".join(
    [
        b"\x01",  # PDU-type 01H
        b"\x00",  # reserved
        b"\x00\x00\x00\xd7",  # PDU-length 215 = 68 fixed + 25 + 60 + 62 (items below)
        b"\x00\x01",  # protocol-version: bit 0 set (version 1)
        b"\x00\x00",  # reserved
        b"ANY-SCP         ",  # called-AE-title, 16 bytes, space padded
        b"FASTSEND        ",  # calling-AE-title, 16 bytes, space padded
        bytes(32),  # reserved (32 bytes of 00H)
        # Application Context Item, PS3.8 9.3.2.1 Table 9-12 (UID per Annex F, no padding)
        b"\x10\x00\x00\x15",  # item-type 10H, reserved, item-length 21
        b"1.2.840.10008.3.1.1.1",  # application-context-name (21 bytes)
        # Presentation Context Item (RQ), PS3.8 9.3.2.2 Table 9-13
        b"\x20\x00\x00\x38",  # item-type 20H, reserved, item-length 56 = 4 + 29 + 23
        b"\x01\x00\x00\x00",  # presentation-context-ID 1, three reserved bytes
        # Abstract Syntax Sub-Item, PS3.8 9.3.2.2.1 Table 9-14
        b"\x30\x00\x00\x19",  # item-type 30H, reserved, item-length 25
        b"1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage (25 bytes)
        # Transfer Syntax Sub-Item, PS3.8 9.3.2.2.2 Table 9-15
        b"\x40\x00\x00\x13",  # item-type 40H, reserved, item-length 19
        b"1.2.840.10008.1.2.1",  # Explicit VR Little Endian (19 bytes)
        # User Information Item, PS3.8 9.3.2.3 Table 9-16
        b"\x50\x00\x00\x3a",  # item-type 50H, reserved, item-length 58 = 8 + 34 + 16
        # Maximum Length Sub-Item, PS3.8 D.1 Table D.1-1
        b"\x51\x00\x00\x04",  # item-type 51H, reserved, item-length 4
        b"\x00\x00\x40\x00",  # maximum-length-received 16384
        # Implementation Class UID Sub-Item, PS3.7 D.3.3.2.1 Table D.3-1
        b"\x52\x00\x00\x1e",  # item-type 52H, reserved, item-length 30
        b"1.2.826.0.1.3680043.10.1447.99",
        # Implementation Version Name Sub-Item, PS3.7 D.3.3.2.3 Table D.3-3
        b"\x55\x00\x00\x0c",  # item-type 55H, reserved, item-length 12
        b"FASTSEND_010",
    ]
)

RQ_PDU = AAssociateRQ(
    called_ae_title="ANY-SCP",
    calling_ae_title="FASTSEND",
    presentation_contexts=(PresentationContextRQ(1, CT_IMAGE_STORAGE, (EXPLICIT_LE,)),),
    user_information=UserInformation(16384, SCU_CLASS_UID, SCU_VERSION),
)

# A-ASSOCIATE-AC, PS3.8 9.3.3 Table 9-17: one context accepted, one rejected.
AC_GOLDEN = b"".join(
    [
        b"\x02",  # PDU-type 02H
        b"\x00",  # reserved
        b"\x00\x00\x00\xb8",  # PDU-length 184 = 68 + 25 + 31 + 29 + 31
        b"\x00\x01",  # protocol-version bit 0
        b"\x00\x00",  # reserved
        b"ANY-SCP         ",  # reserved, sent with the RQ's called-AE-title
        b"FASTSEND        ",  # reserved, sent with the RQ's calling-AE-title
        bytes(32),  # reserved
        # Application Context Item, PS3.8 9.3.3.1
        b"\x10\x00\x00\x15",
        b"1.2.840.10008.3.1.1.1",
        # Presentation Context Item (AC), PS3.8 9.3.3.2 Table 9-18
        b"\x21\x00\x00\x1b",  # item-type 21H, reserved, item-length 27 = 4 + 23
        b"\x01\x00",  # presentation-context-ID 1, reserved
        b"\x00\x00",  # result/reason 0 = acceptance, reserved
        b"\x40\x00\x00\x13",  # Transfer Syntax Sub-Item (Table 9-19), item-length 19
        b"1.2.840.10008.1.2.1",
        # second context: rejected, its transfer syntax sub-item is not significant
        b"\x21\x00\x00\x19",  # item-type 21H, reserved, item-length 25 = 4 + 21
        b"\x03\x00",  # presentation-context-ID 3, reserved
        b"\x04\x00",  # result/reason 4 = transfer-syntaxes-not-supported, reserved
        b"\x40\x00\x00\x11",  # Transfer Syntax Sub-Item, item-length 17
        b"1.2.840.10008.1.2",
        # User Information Item, PS3.8 9.3.3.3
        b"\x50\x00\x00\x1b",  # item-type 50H, reserved, item-length 27 = 8 + 19
        b"\x51\x00\x00\x04",  # Maximum Length Sub-Item, item-length 4
        b"\x00\x00\x80\x00",  # maximum-length-received 32768
        b"\x52\x00\x00\x0f",  # Implementation Class UID Sub-Item, item-length 15
        b"1.2.40.0.13.1.3",  # odd length, no trailing NUL (PS3.8 Annex F)
    ]
)

AC_PDU = AAssociateAC(
    called_ae_title="ANY-SCP",
    calling_ae_title="FASTSEND",
    presentation_contexts=(
        PresentationContextAC(1, 0, EXPLICIT_LE),
        PresentationContextAC(3, 4, IMPLICIT_LE),
    ),
    user_information=UserInformation(32768, SCP_CLASS_UID),
)

# A-ASSOCIATE-RJ, PS3.8 9.3.4 Table 9-21.
RJ_GOLDEN = b"".join(
    [
        b"\x03",  # PDU-type 03H
        b"\x00",  # reserved
        b"\x00\x00\x00\x04",  # PDU-length, fixed 4
        b"\x00",  # reserved
        b"\x01",  # result 1 = rejected-permanent
        b"\x01",  # source 1 = DICOM UL service-user
        b"\x07",  # reason/diag. 7 = called-AE-title-not-recognized
    ]
)

# P-DATA-TF with two PDV items, PS3.8 9.3.5 Table 9-22, 9.3.5.1 Table 9-23, Annex E.2.
PDATA_GOLDEN = b"".join(
    [
        b"\x04",  # PDU-type 04H
        b"\x00",  # reserved
        b"\x00\x00\x00\x13",  # PDU-length 19 = (4 + 6) + (4 + 5)
        # PDV item 1
        b"\x00\x00\x00\x06",  # item-length 6: context ID + control header + 4 data bytes
        b"\x01",  # presentation-context-ID 1
        b"\x03",  # message control header: bit 0 = command, bit 1 = last fragment
        b"\xde\xad\xbe\xef",  # fragment
        # PDV item 2
        b"\x00\x00\x00\x05",  # item-length 5: 2 + 3 data bytes
        b"\x03",  # presentation-context-ID 3
        b"\x00",  # message control header: data set, not last
        b"\x01\x02\x03",  # fragment
    ]
)

PDATA_PDU = PDataTF(
    (
        PDV(1, True, True, memoryview(b"\xde\xad\xbe\xef")),
        PDV(3, False, False, memoryview(b"\x01\x02\x03")),
    )
)

# A-RELEASE-RQ, PS3.8 9.3.6 Table 9-24: type 05H, reserved, length 4, 4 reserved bytes.
RELEASE_RQ_GOLDEN = b"\x05\x00" + b"\x00\x00\x00\x04" + b"\x00\x00\x00\x00"
# A-RELEASE-RP, PS3.8 9.3.7 Table 9-25: type 06H, otherwise the same layout.
RELEASE_RP_GOLDEN = b"\x06\x00" + b"\x00\x00\x00\x04" + b"\x00\x00\x00\x00"

# A-ABORT, PS3.8 9.3.8 Table 9-26.
ABORT_GOLDEN = b"".join(
    [
        b"\x07",  # PDU-type 07H
        b"\x00",  # reserved
        b"\x00\x00\x00\x04",  # PDU-length, fixed 4
        b"\x00\x00",  # two reserved bytes
        b"\x02",  # source 2 = DICOM UL service-provider (initiated abort)
        b"\x01",  # reason/diag. 1 = unrecognized-PDU
    ]
)

GOLDEN = [
    pytest.param(RQ_GOLDEN, RQ_PDU, id="A-ASSOCIATE-RQ"),
    pytest.param(AC_GOLDEN, AC_PDU, id="A-ASSOCIATE-AC"),
    pytest.param(RJ_GOLDEN, AAssociateRJ(1, 1, 7), id="A-ASSOCIATE-RJ"),
    pytest.param(RELEASE_RQ_GOLDEN, AReleaseRQ(), id="A-RELEASE-RQ"),
    pytest.param(RELEASE_RP_GOLDEN, AReleaseRP(), id="A-RELEASE-RP"),
    pytest.param(ABORT_GOLDEN, AAbort(2, 1), id="A-ABORT"),
]


def test_golden_lengths_are_consistent() -> None:
    """Guards the hand arithmetic above: each PDU-length field counts the rest."""
    for golden in (RQ_GOLDEN, AC_GOLDEN, RJ_GOLDEN, PDATA_GOLDEN, RELEASE_RQ_GOLDEN):
        assert struct.unpack(">I", golden[2:6])[0] == len(golden) - 6


@pytest.mark.parametrize(("golden", "pdu"), GOLDEN)
def test_encode_matches_standard_layout(golden: bytes, pdu: object) -> None:
    assert encode(pdu) == golden  # type: ignore[arg-type]


@pytest.mark.parametrize(("golden", "pdu"), GOLDEN)
def test_decode_golden_round_trips(golden: bytes, pdu: object) -> None:
    decoded = decode_pdu(golden[0], body(golden))
    assert decoded == pdu
    assert encode(decoded) == golden


def test_pdata_tf_encode_and_decode() -> None:
    assert encode(PDATA_PDU) == PDATA_GOLDEN
    decoded = decode_pdu(0x04, body(PDATA_GOLDEN))
    assert isinstance(decoded, PDataTF)
    got = [
        (pdv.presentation_context_id, pdv.is_command, pdv.is_last, bytes(pdv.data))
        for pdv in decoded.pdvs
    ]
    assert got == [(1, True, True, b"\xde\xad\xbe\xef"), (3, False, False, b"\x01\x02\x03")]
    assert encode(decoded) == PDATA_GOLDEN


def test_decoded_rq_fields() -> None:
    rq = decode_pdu(0x01, body(RQ_GOLDEN))
    assert isinstance(rq, AAssociateRQ)
    assert rq.called_ae_title == "ANY-SCP"
    assert rq.calling_ae_title == "FASTSEND"
    assert rq.application_context_name == DICOM_APPLICATION_CONTEXT
    assert rq.protocol_version == 1
    assert rq.user_information.maximum_length == 16384
    assert rq.user_information.implementation_class_uid == SCU_CLASS_UID
    assert rq.user_information.implementation_version_name == SCU_VERSION


def test_decoded_ac_contexts() -> None:
    ac = decode_pdu(0x02, body(AC_GOLDEN))
    assert isinstance(ac, AAssociateAC)
    first, second = ac.presentation_contexts
    assert (first.presentation_context_id, first.accepted, first.transfer_syntax) == (
        1,
        True,
        EXPLICIT_LE,
    )
    assert (second.presentation_context_id, second.accepted) == (3, False)
    # PS3.8 9.3.3.2 Table 9-18 result/reason words
    assert presentation_context_result_text(second.result) == (
        "transfer-syntaxes-not-supported (provider rejection)"
    )


def test_decode_tolerates_padded_uids_and_spare_sub_items() -> None:
    """A UID with a trailing NUL (as some peers send) and an unknown sub-item are accepted."""
    user_info = b"".join(
        [
            b"\x51\x00\x00\x04\x00\x00\x40\x00",  # maximum length 16384
            b"\x52\x00\x00\x10" + b"1.2.40.0.13.1.3\x00",  # class UID padded to 16 bytes
            b"\x54\x00\x00\x08" + b"\x00\x04" + b"1.23" + b"\x01\x00",  # role selection (D.3.3.4)
        ]
    )
    variable = b"".join(
        [
            b"\x00\x01\x00\x00" + b"A".ljust(16) + b"B".ljust(16) + bytes(32),
            b"\x10\x00\x00\x15" + b"1.2.840.10008.3.1.1.1",
            b"\x50\x00" + struct.pack(">H", len(user_info)) + user_info,
        ]
    )
    rq = decode_pdu(0x01, memoryview(variable))
    assert isinstance(rq, AAssociateRQ)
    assert rq.user_information.implementation_class_uid == SCP_CLASS_UID
    assert rq.presentation_contexts == ()


# ----------------------------------------------------------------- decoding errors


def _replace(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


# Offsets into RQ_GOLDEN's variable field (after the 6-byte header):
APP_CONTEXT_ITEM = 68  # first item after the 68-byte fixed part
PRES_CONTEXT_ITEM = APP_CONTEXT_ITEM + 4 + 21
ABSTRACT_SUB_ITEM = PRES_CONTEXT_ITEM + 4 + 4
USER_INFO_ITEM = PRES_CONTEXT_ITEM + 4 + 56
MAX_LENGTH_SUB_ITEM = USER_INFO_ITEM + 4


def test_offsets_point_at_the_items() -> None:
    variable = RQ_GOLDEN[6:]
    assert variable[APP_CONTEXT_ITEM] == 0x10
    assert variable[PRES_CONTEXT_ITEM] == 0x20
    assert variable[ABSTRACT_SUB_ITEM] == 0x30
    assert variable[USER_INFO_ITEM] == 0x50
    assert variable[MAX_LENGTH_SUB_ITEM] == 0x51
    assert len(variable) == USER_INFO_ITEM + 4 + 58


@pytest.mark.parametrize("pdu_type", [0x00, 0x08, 0x10, 0xFF])
def test_unknown_pdu_type(pdu_type: int) -> None:
    with pytest.raises(PDUError, match="unknown PDU type"):
        decode_pdu(pdu_type, memoryview(bytes(4)))


@pytest.mark.parametrize(
    ("offset", "length_field"),
    [
        pytest.param(APP_CONTEXT_ITEM + 2, b"\x01\x00", id="application-context-overrun"),
        pytest.param(PRES_CONTEXT_ITEM + 2, b"\x00\x39", id="presentation-context-overrun"),
        pytest.param(ABSTRACT_SUB_ITEM + 2, b"\x00\x40", id="abstract-syntax-overrun"),
        pytest.param(USER_INFO_ITEM + 2, b"\x00\x3b", id="user-information-overrun"),
        pytest.param(MAX_LENGTH_SUB_ITEM + 2, b"\x00\x40", id="max-length-sub-item-overrun"),
    ],
)
def test_item_length_overrun(offset: int, length_field: bytes) -> None:
    variable = _replace(RQ_GOLDEN[6:], offset, length_field)
    with pytest.raises(PDUError):
        decode_pdu(0x01, memoryview(variable))


def test_stray_bytes_after_the_last_item() -> None:
    with pytest.raises(PDUError):
        decode_pdu(0x01, memoryview(RQ_GOLDEN[6:] + b"\x50\x00"))


def test_max_length_sub_item_of_wrong_size() -> None:
    # PS3.8 D.1: the maximum-length-received field is 4 bytes; claim 3 instead
    # (and shrink the enclosing user information item to match).
    variable = RQ_GOLDEN[6:]
    ui_value = variable[USER_INFO_ITEM + 4 :]
    bad_ui = b"\x51\x00\x00\x03\x00\x40\x00" + ui_value[8:]
    variable = variable[:USER_INFO_ITEM] + b"\x50\x00" + struct.pack(">H", len(bad_ui)) + bad_ui
    with pytest.raises(PDUError):
        decode_pdu(0x01, memoryview(variable))


@pytest.mark.parametrize(
    ("pdu_type", "variable"),
    [
        pytest.param(0x01, RQ_GOLDEN[6 : 6 + 67], id="RQ-fixed-part-67-bytes"),
        pytest.param(0x02, AC_GOLDEN[6 : 6 + 40], id="AC-fixed-part-40-bytes"),
        pytest.param(0x01, b"", id="RQ-empty"),
        pytest.param(0x03, RJ_GOLDEN[6:9], id="RJ-3-bytes"),
        pytest.param(0x05, b"\x00\x00\x00", id="release-rq-3-bytes"),
        pytest.param(0x06, b"\x00\x00\x00\x00\x00", id="release-rp-5-bytes"),
        pytest.param(0x07, b"\x00\x00\x02", id="abort-3-bytes"),
        pytest.param(0x04, b"", id="pdata-no-pdv"),
        pytest.param(0x04, b"\x00\x00\x00\x06\x01\x03\xde", id="pdata-pdv-overrun"),
        pytest.param(0x04, b"\x00\x00\x00\x01\x01", id="pdata-pdv-item-length-1"),
    ],
)
def test_short_or_malformed_fixed_parts(pdu_type: int, variable: bytes) -> None:
    with pytest.raises(PDUError):
        decode_pdu(pdu_type, memoryview(variable))


def test_presentation_context_item_shorter_than_its_fixed_fields() -> None:
    # A presentation context item of 2 bytes cannot hold ID + 3 reserved (PS3.8 9.3.2.2).
    variable = b"".join(
        [
            RQ_GOLDEN[6 : 6 + 68 + 25],  # fixed part + application context item
            b"\x20\x00\x00\x02\x01\x00",
            RQ_GOLDEN[6 + USER_INFO_ITEM :],
        ]
    )
    with pytest.raises(PDUError):
        decode_pdu(0x01, memoryview(variable))


def test_missing_user_information_item() -> None:
    variable = RQ_GOLDEN[6 : 6 + USER_INFO_ITEM]  # everything up to the user information item
    with pytest.raises(PDUError, match="user information"):
        decode_pdu(0x01, memoryview(variable))


def test_missing_application_context_item() -> None:
    variable = RQ_GOLDEN[6 : 6 + 68] + RQ_GOLDEN[6 + PRES_CONTEXT_ITEM :]
    with pytest.raises(PDUError, match="application context"):
        decode_pdu(0x01, memoryview(variable))


def test_ac_item_in_an_rq_is_rejected() -> None:
    # item-type 21H belongs to the A-ASSOCIATE-AC (PS3.8 9.3.3.2), not the RQ.
    variable = RQ_GOLDEN[6:] + b"\x21\x00\x00\x04\x01\x00\x00\x00"
    with pytest.raises(PDUError):
        decode_pdu(0x01, memoryview(variable))


# ----------------------------------------------------------------- describe()

# PS3.8 9.3.4 Table 9-21: result, source, reason/diag. per source.
RJ_WORDS = [
    (1, 1, 1, "rejected-permanent", "DICOM UL service-user", "no-reason-given"),
    (
        1,
        1,
        2,
        "rejected-permanent",
        "DICOM UL service-user",
        "application-context-name-not-supported",
    ),
    (2, 1, 3, "rejected-transient", "DICOM UL service-user", "calling-AE-title-not-recognized"),
    (1, 1, 7, "rejected-permanent", "DICOM UL service-user", "called-AE-title-not-recognized"),
    (
        1,
        2,
        1,
        "rejected-permanent",
        "DICOM UL service-provider (ACSE related function)",
        "no-reason-given",
    ),
    (
        1,
        2,
        2,
        "rejected-permanent",
        "DICOM UL service-provider (ACSE related function)",
        "protocol-version-not-supported",
    ),
    (
        2,
        3,
        1,
        "rejected-transient",
        "DICOM UL service-provider (Presentation related function)",
        "temporary-congestion",
    ),
    (
        2,
        3,
        2,
        "rejected-transient",
        "DICOM UL service-provider (Presentation related function)",
        "local-limit-exceeded",
    ),
]


@pytest.mark.parametrize(("result", "source", "reason", "r_text", "s_text", "d_text"), RJ_WORDS)
def test_reject_describe_uses_the_standards_words(
    result: int, source: int, reason: int, r_text: str, s_text: str, d_text: str
) -> None:
    text = AAssociateRJ(result, source, reason).describe()
    assert r_text in text
    assert s_text in text
    assert d_text in text
    assert AAssociateRJ(result, source, reason).transient == (result == 2)


def test_reject_describe_reason_depends_on_source() -> None:
    # Reason 2 means different things for source 1 and source 2 (Table 9-21).
    assert "application-context-name-not-supported" in AAssociateRJ(1, 1, 2).describe()
    assert "application-context-name-not-supported" not in AAssociateRJ(1, 2, 2).describe()
    # Reserved values are reported as numbers rather than guessed.
    assert "reason 5" in AAssociateRJ(1, 1, 5).describe()


# PS3.8 9.3.8 Table 9-26: reason/diag. when the source is the service-provider.
ABORT_WORDS = [
    (0, "reason-not-specified"),
    (1, "unrecognized-PDU"),
    (2, "unexpected-PDU"),
    (4, "unrecognized-PDU parameter"),
    (5, "unexpected-PDU parameter"),
    (6, "invalid-PDU-parameter value"),
]


@pytest.mark.parametrize(("reason", "words"), ABORT_WORDS)
def test_abort_describe_provider_reasons(reason: int, words: str) -> None:
    text = AAbort(2, reason).describe()
    assert "DICOM UL service-provider" in text
    assert text.endswith(words)


def test_abort_describe_service_user() -> None:
    # Source 0: the reason field is not significant (Table 9-26).
    text = AAbort(0, 0).describe()
    assert "DICOM UL service-user" in text
    assert text == AAbort(0, 6).describe()


# ----------------------------------------------------------------- PDUReader


def test_reader_byte_by_byte() -> None:
    reader = PDUReader(16384)
    stream = RQ_GOLDEN + RELEASE_RQ_GOLDEN
    frames = []
    for index in range(len(stream)):
        reader.feed(stream[index : index + 1])
        frame = reader.next_pdu()
        if frame is None:
            continue
        frames.append((index, frame[0], bytes(frame[1])))
    assert frames == [
        (len(RQ_GOLDEN) - 1, 0x01, RQ_GOLDEN[6:]),
        (len(stream) - 1, 0x05, RELEASE_RQ_GOLDEN[6:]),
    ]
    assert reader.buffered == 0


@settings(max_examples=300, deadline=None)
@given(
    bodies=st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=12),
    drain=st.lists(st.booleans(), min_size=13, max_size=13),
)
def test_reader_frames_any_split_of_a_stream_and_its_views_stay_valid(
    bodies: list[bytes], cuts: list[int], drain: list[bool]
) -> None:
    """However the stream is cut into feeds, and whether or not the PDUs are taken
    after each feed, the same PDUs come out, and each stays intact afterwards."""
    stream = b"".join(b"\x04\x00" + struct.pack(">I", len(body)) + body for body in bodies)
    points = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    reader = PDUReader(16384)
    frames: list[tuple[int, memoryview]] = []
    for number, (start, end) in enumerate(zip(points, points[1:], strict=False)):
        reader.feed(stream[start:end])
        if drain[number] or end == len(stream):
            while (frame := reader.next_pdu()) is not None:
                frames.append(frame)
    assert [(pdu_type, bytes(body)) for pdu_type, body in frames] == [
        (0x04, body) for body in bodies
    ]
    assert reader.buffered == 0


def test_reader_several_pdus_in_one_feed() -> None:
    reader = PDUReader(16384)
    reader.feed(AC_GOLDEN + PDATA_GOLDEN + RELEASE_RP_GOLDEN + ABORT_GOLDEN[:7])
    got = []
    while (frame := reader.next_pdu()) is not None:
        got.append((frame[0], bytes(frame[1])))
    assert got == [
        (0x02, AC_GOLDEN[6:]),
        (0x04, PDATA_GOLDEN[6:]),
        (0x06, RELEASE_RP_GOLDEN[6:]),
    ]
    assert reader.buffered == 7  # the partial A-ABORT waits for the rest
    reader.feed(ABORT_GOLDEN[7:])
    frame = reader.next_pdu()
    assert frame is not None
    assert decode_pdu(*frame) == AAbort(2, 1)


def test_reader_views_survive_later_feeds() -> None:
    reader = PDUReader(16384)
    reader.feed(PDATA_GOLDEN)
    frame = reader.next_pdu()
    assert frame is not None
    reader.feed(b"\xff" * 64)  # more data must not disturb the PDU already handed out
    assert bytes(frame[1]) == PDATA_GOLDEN[6:]


def test_reader_pdata_at_the_announced_maximum_waits_for_the_body() -> None:
    reader = PDUReader(16384)
    reader.feed(b"\x04\x00" + struct.pack(">I", 16384))  # PDU-length == Maximum Length
    assert reader.next_pdu() is None


def test_reader_rejects_pdata_over_the_announced_maximum_from_the_header() -> None:
    # PS3.8 D.1: the P-DATA-TF variable field may not exceed the Maximum Length we announced.
    reader = PDUReader(16384)
    reader.feed(b"\x04\x00" + struct.pack(">I", 16385))  # header only, no body yet
    with pytest.raises(PDUError):
        reader.next_pdu()


def test_reader_maximum_zero_means_no_limit_for_ordinary_sizes() -> None:
    # PS3.8 D.1: a Maximum Length of 0 means no maximum is specified.
    reader = PDUReader(0)
    reader.feed(b"\x04\x00" + struct.pack(">I", 1 << 22))
    assert reader.next_pdu() is None


def test_reader_rejects_huge_control_pdu() -> None:
    reader = PDUReader(16384)
    reader.feed(b"\x01\x00" + struct.pack(">I", MAX_CONTROL_PDU_LENGTH + 1))
    with pytest.raises(PDUError):
        reader.next_pdu()


def test_reader_control_pdu_under_the_cap_is_not_limited_by_maximum_length() -> None:
    # Maximum Length applies to P-DATA-TF only (PS3.8 D.1); a 20000-byte RQ header is fine.
    reader = PDUReader(16384)
    reader.feed(b"\x01\x00" + struct.pack(">I", 20000))
    assert reader.next_pdu() is None


def test_reader_unknown_type_in_header() -> None:
    reader = PDUReader(16384)
    reader.feed(b"\x09\x00\x00\x00\x00\x04")
    with pytest.raises(PDUError, match="unknown PDU type"):
        reader.next_pdu()


def test_reader_short_header_waits() -> None:
    reader = PDUReader(16384)
    reader.feed(b"\xff\x00\x00")  # 3 bytes: the type is there but the header is not complete
    assert reader.next_pdu() is None


# ----------------------------------------------------------------- properties


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(pdu_type=st.integers(0, 255), variable=st.binary(max_size=300))
def test_decode_arbitrary_bytes_raises_only_pdu_error(pdu_type: int, variable: bytes) -> None:
    try:
        decode_pdu(pdu_type, memoryview(variable))
    except PDUError:
        pass


@settings(max_examples=400)
@given(
    golden=st.sampled_from([RQ_GOLDEN, AC_GOLDEN, PDATA_GOLDEN]),
    edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.integers(0, 400),
)
def test_decode_mutated_golden_raises_only_pdu_error(
    golden: bytes, edits: list[tuple[int, int]], cut: int
) -> None:
    """Byte flips and truncations of valid PDUs reach the item parsers, not just the header."""
    variable = bytearray(golden[6:])
    for position, value in edits:
        variable[position % len(variable)] = value
    del variable[cut:]
    try:
        decode_pdu(golden[0], memoryview(bytes(variable)))
    except PDUError:
        pass


UIDS = (
    st.lists(st.integers(0, 10**8), min_size=2, max_size=10)
    .map(lambda parts: ".".join(str(p) for p in parts))
    .filter(lambda uid: len(uid) <= 64)
)
# PS3.5 AE: leading/trailing spaces are not significant, so generate titles without them.
AE_TITLES = (
    st.text(string.ascii_uppercase + string.digits + "-_ ", min_size=1, max_size=16)
    .map(str.strip)
    .filter(bool)
)
VERSION_NAMES = st.text(string.ascii_letters + string.digits + "._-", min_size=0, max_size=16)
USER_INFO = st.builds(
    UserInformation,
    maximum_length=st.integers(0, 0xFFFFFFFF),
    implementation_class_uid=UIDS,
    implementation_version_name=VERSION_NAMES,
    asynchronous_operations_window=st.none()
    | st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
)
CONTEXT_IDS = st.integers(0, 127).map(lambda n: 2 * n + 1)


@settings(max_examples=200)
@given(
    called=AE_TITLES,
    calling=AE_TITLES,
    contexts=st.lists(
        st.builds(
            PresentationContextRQ,
            CONTEXT_IDS,
            UIDS,
            st.lists(UIDS, min_size=1, max_size=4).map(tuple),
        ),
        max_size=6,
    ),
    user_information=USER_INFO,
)
def test_rq_round_trip(
    called: str,
    calling: str,
    contexts: list[PresentationContextRQ],
    user_information: UserInformation,
) -> None:
    rq = AAssociateRQ(called, calling, tuple(contexts), user_information)
    raw = encode(rq)
    assert raw[0] == 0x01
    assert struct.unpack(">I", raw[2:6])[0] == len(raw) - 6
    decoded = decode_pdu(raw[0], body(raw))
    assert decoded == rq
    assert encode(decoded) == raw


@settings(max_examples=200)
@given(
    called=AE_TITLES,
    calling=AE_TITLES,
    contexts=st.lists(
        st.builds(PresentationContextAC, CONTEXT_IDS, st.integers(0, 4), UIDS), max_size=6
    ),
    user_information=USER_INFO,
)
def test_ac_round_trip(
    called: str,
    calling: str,
    contexts: list[PresentationContextAC],
    user_information: UserInformation,
) -> None:
    ac = AAssociateAC(called, calling, tuple(contexts), user_information)
    raw = encode(ac)
    assert raw[0] == 0x02
    assert struct.unpack(">I", raw[2:6])[0] == len(raw) - 6
    decoded = decode_pdu(raw[0], body(raw))
    assert decoded == ac
    assert encode(decoded) == raw


def test_pdu_reader_returns_whole_pdus_as_views_of_the_fed_bytes() -> None:
    # Two whole PDUs and the first 10 bytes of a third, in one feed.
    release = encode(AReleaseRQ())
    pdata = encode(PDataTF((PDV(1, False, True, memoryview(b"x" * 100)),)))
    data = pdata + release + pdata[:10]
    reader = PDUReader(16384)
    reader.feed(data)
    first = reader.next_pdu()
    assert first is not None and first[0] == 0x04
    assert first[1].obj is data  # a view, no copy
    assert reader.next_pdu() is not None  # the A-RELEASE-RQ
    assert reader.next_pdu() is None and reader.buffered == 10
    reader.feed(pdata[10:])  # the split PDU is completed from the buffer
    third = reader.next_pdu()
    assert third is not None and bytes(third[1]) == pdata[6:]
    assert reader.buffered == 0
