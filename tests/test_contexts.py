"""Presentation context planning and selection (PS3.8 9.3.2.2, 9.3.3.2; PS3.5 10.1)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicom_fastsend.protocol.contexts import (
    AcceptedContexts,
    NoAcceptableContext,
    association_for,
    plan_associations,
    transfer_syntaxes_for,
)
from dicom_fastsend.protocol.pdu import PresentationContextAC, PresentationContextRQ
from dicom_fastsend.protocol.uids import TRANSFER_SYNTAX_NAMES, describe

CT = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
MR = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
US_CLASS = "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image Storage
EXPLICIT = "1.2.840.10008.1.2.1"  # Explicit VR Little Endian (PS3.5 A.2)
IMPLICIT = "1.2.840.10008.1.2"  # Implicit VR Little Endian (PS3.5 A.1)
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG2000 = "1.2.840.10008.1.2.4.91"
RLE = "1.2.840.10008.1.2.5"  # RLE Lossless (PS3.5 A.4.2)
DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian (PS3.5 A.5)
BIG_ENDIAN = "1.2.840.10008.1.2.2"  # Explicit VR Big Endian (PS3.5 A.3, retired)
# Every syntax fastsend names, plus one it does not know: all but the two
# uncompressed LE ones need --transcode to reach an uncompressed-only peer.
ALL_SYNTAXES = sorted(TRANSFER_SYNTAX_NAMES) + ["1.2.3.999"]
TRANSCODED = [ts for ts in ALL_SYNTAXES if ts not in (EXPLICIT, IMPLICIT)]

# PS3.8 9.3.3.2 Table 9-18: Result/Reason values of a Presentation Context Item (AC).
ACCEPTANCE = 0
USER_REJECTION = 1
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


def pairs_of(plans: list[tuple[PresentationContextRQ, ...]]) -> list[tuple[str, str]]:
    return [(c.abstract_syntax, ts) for plan in plans for c in plan for ts in c.transfer_syntaxes]


def test_transfer_syntaxes_for_little_endian_adds_the_other() -> None:
    for transcode in (False, True):
        assert transfer_syntaxes_for(EXPLICIT, transcode) == (EXPLICIT, IMPLICIT)
        assert transfer_syntaxes_for(IMPLICIT, transcode) == (IMPLICIT, EXPLICIT)


def test_transfer_syntaxes_for_compressed_is_only_itself() -> None:
    # Compressed pixel data cannot be converted on the fly, so no fallback is offered.
    assert transfer_syntaxes_for(JPEG_BASELINE) == (JPEG_BASELINE,)


@pytest.mark.parametrize("syntax", TRANSCODED)
def test_transfer_syntaxes_for_transcoded_falls_back_to_both_le_syntaxes(syntax: str) -> None:
    # Implicit VR LE is the syntax every SCP must take (PS3.5 10.1); Explicit
    # comes first because it keeps the VRs. Big endian and deflated too.
    assert transfer_syntaxes_for(syntax, transcode=True) == (syntax, EXPLICIT, IMPLICIT)
    assert transfer_syntaxes_for(syntax, transcode=False) == (syntax,)


def test_plan_with_transcode_proposes_both_le_fallbacks_for_every_other_syntax() -> None:
    pairs = [(CT, RLE), (CT, JPEG2000), (MR, BIG_ENDIAN), (US_CLASS, DEFLATED)]
    (plan,) = plan_associations(pairs, transcode=True)
    assert all(len(c.transfer_syntaxes) == 1 for c in plan)
    assert sorted(pairs_of([plan])) == sorted(
        [
            (CT, RLE), (CT, JPEG2000), (CT, EXPLICIT), (CT, IMPLICIT),
            (MR, BIG_ENDIAN), (MR, EXPLICIT), (MR, IMPLICIT),
            (US_CLASS, DEFLATED), (US_CLASS, EXPLICIT), (US_CLASS, IMPLICIT),
        ]
    )  # fmt: skip
    # Without --transcode each is proposed alone: nothing to fall back to.
    (plan,) = plan_associations(pairs)
    assert sorted(pairs_of([plan])) == sorted(pairs)


def test_each_syntax_is_its_own_context_plus_le_fallback() -> None:
    (plan,) = plan_associations([(CT, EXPLICIT), (CT, JPEG2000), (MR, IMPLICIT)])
    assert all(len(c.transfer_syntaxes) == 1 for c in plan)
    assert sorted(pairs_of([plan])) == sorted(
        [(CT, EXPLICIT), (CT, IMPLICIT), (CT, JPEG2000), (MR, IMPLICIT), (MR, EXPLICIT)]
    )


def test_duplicate_files_do_not_duplicate_contexts() -> None:
    plans = plan_associations([(CT, EXPLICIT)] * 5 + [(CT, IMPLICIT)] * 3)
    assert sorted(pairs_of(plans)) == sorted([(CT, EXPLICIT), (CT, IMPLICIT)])


def test_ids_are_odd_and_consecutive() -> None:
    classes = [f"1.2.3.{n}" for n in range(10)]
    (plan,) = plan_associations([(c, EXPLICIT) for c in classes])
    assert [c.presentation_context_id for c in plan] == list(range(1, 40, 2))


def test_empty_input_plans_nothing() -> None:
    assert plan_associations([]) == []


def test_more_than_128_contexts_split_and_keep_classes_together() -> None:
    # 70 classes x 2 LE syntaxes = 140 contexts: more than the 128 odd IDs 1..255.
    classes = [f"1.2.3.{n}" for n in range(70)]
    plans = plan_associations([(c, EXPLICIT) for c in classes])
    assert len(plans) == 2
    for plan in plans:
        assert len(plan) <= 128
        assert [c.presentation_context_id for c in plan] == list(range(1, 2 * len(plan), 2))
    for sop_class in classes:
        holders = [
            i for i, plan in enumerate(plans) if any(c.abstract_syntax == sop_class for c in plan)
        ]
        assert len(holders) == 1
        assert association_for(plans, sop_class) == holders[0]
    assert Counter(pairs_of(plans)) == Counter(
        [(c, EXPLICIT) for c in classes] + [(c, IMPLICIT) for c in classes]
    )


def test_association_for_unknown_class() -> None:
    with pytest.raises(KeyError):
        association_for(plan_associations([(CT, EXPLICIT)]), MR)


SYNTAXES = [EXPLICIT, IMPLICIT, JPEG_BASELINE, JPEG2000, RLE, DEFLATED, BIG_ENDIAN]


@settings(max_examples=150, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(st.integers(0, 400).map(lambda n: f"1.2.840.99.{n}"), st.sampled_from(SYNTAXES)),
        max_size=400,
    ),
    max_contexts=st.sampled_from([128, 7, 5]),
    transcode=st.booleans(),
)
def test_plan_property(pairs: list[tuple[str, str]], max_contexts: int, transcode: bool) -> None:
    plans = plan_associations(pairs, max_contexts, transcode)
    # Independent expectation: the file's syntax, plus the other LE syntax for
    # LE files, plus both LE syntaxes for any other file with --transcode.
    other_le = {EXPLICIT: IMPLICIT, IMPLICIT: EXPLICIT}
    expected = {(c, ts) for c, ts in pairs} | {
        (c, other_le[ts]) for c, ts in pairs if ts in other_le
    }
    if transcode:
        expected |= {(c, le) for c, ts in pairs if ts not in other_le for le in other_le}
    planned = pairs_of(plans)
    assert len(planned) == len(set(planned))  # nothing duplicated
    assert set(planned) == expected  # nothing lost, nothing invented
    for plan in plans:
        assert 1 <= len(plan) <= max_contexts
        assert [c.presentation_context_id for c in plan] == list(range(1, 2 * len(plan), 2))
        assert all(len(c.transfer_syntaxes) == 1 for c in plan)
    # A class sits in one association when its contexts fit in one (at most
    # 7 here); one with more than max_contexts is split into as few as fit.
    for sop_class in {c for c, _ in pairs}:
        holders = {
            i for i, plan in enumerate(plans) for c in plan if c.abstract_syntax == sop_class
        }
        count = sum(1 for c, _ in expected if c == sop_class)
        assert len(holders) == -(-count // max_contexts)


# ----------------------------------------------------------------- selection


PROPOSED = (
    PresentationContextRQ(1, CT, (EXPLICIT,)),
    PresentationContextRQ(3, CT, (IMPLICIT,)),
    PresentationContextRQ(5, CT, (JPEG_BASELINE,)),
    PresentationContextRQ(7, MR, (IMPLICIT,)),
    PresentationContextRQ(9, MR, (EXPLICIT,)),
)


def test_select_prefers_the_files_own_syntax() -> None:
    accepted = AcceptedContexts(
        PROPOSED,
        [
            PresentationContextAC(pc.presentation_context_id, ACCEPTANCE, pc.transfer_syntaxes[0])
            for pc in PROPOSED
        ],
    )
    assert accepted.accepted_count == 5
    selection = accepted.select(CT, EXPLICIT)
    assert (selection.presentation_context_id, selection.transfer_syntax) == (1, EXPLICIT)
    assert not selection.needs_conversion(EXPLICIT)
    selection = accepted.select(CT, IMPLICIT)
    assert (selection.presentation_context_id, selection.transfer_syntax) == (3, IMPLICIT)
    selection = accepted.select(CT, JPEG_BASELINE)
    assert (selection.presentation_context_id, selection.transfer_syntax) == (5, JPEG_BASELINE)
    selection = accepted.select(MR, EXPLICIT)
    assert selection.presentation_context_id == 9


def test_select_falls_back_to_the_other_le_syntax() -> None:
    accepted = AcceptedContexts(
        PROPOSED,
        [
            PresentationContextAC(1, TRANSFER_SYNTAXES_NOT_SUPPORTED, ""),
            PresentationContextAC(3, ACCEPTANCE, IMPLICIT),
            PresentationContextAC(7, ACCEPTANCE, IMPLICIT),
            PresentationContextAC(9, USER_REJECTION, EXPLICIT),
        ],
    )
    selection = accepted.select(CT, EXPLICIT)
    assert (selection.presentation_context_id, selection.transfer_syntax) == (3, IMPLICIT)
    assert selection.needs_conversion(EXPLICIT)
    selection = accepted.select(MR, EXPLICIT)
    assert (selection.presentation_context_id, selection.transfer_syntax) == (7, IMPLICIT)


def test_select_ignores_acceptance_with_a_syntax_never_proposed() -> None:
    # PS3.8 9.3.3.2: the accepted transfer syntax must be one proposed for that context.
    accepted = AcceptedContexts(
        PROPOSED,
        [
            PresentationContextAC(1, ACCEPTANCE, JPEG2000),  # never proposed anywhere
            PresentationContextAC(3, ACCEPTANCE, EXPLICIT),  # proposed, but not in context 3
            PresentationContextAC(11, ACCEPTANCE, EXPLICIT),  # a context ID never proposed
        ],
    )
    assert accepted.accepted_count == 0
    with pytest.raises(NoAcceptableContext):
        accepted.select(CT, EXPLICIT)
    with pytest.raises(NoAcceptableContext):
        accepted.select(CT, JPEG2000)


def test_no_acceptable_context_names_class_syntax_and_answer() -> None:
    accepted = AcceptedContexts(
        PROPOSED,
        [
            PresentationContextAC(pc.presentation_context_id, ABSTRACT_SYNTAX_NOT_SUPPORTED, "")
            for pc in PROPOSED[:3]
        ],
    )
    with pytest.raises(NoAcceptableContext) as info:
        accepted.select(CT, JPEG_BASELINE)
    message = str(info.value)
    assert CT in message
    assert JPEG_BASELINE in message
    # PS3.8 9.3.3.2 Table 9-18 wording for result 3.
    assert "abstract-syntax-not-supported (provider rejection)" in message


def test_no_acceptable_context_when_the_peer_did_not_answer() -> None:
    accepted = AcceptedContexts(PROPOSED, [])
    with pytest.raises(NoAcceptableContext) as info:
        accepted.select(MR, IMPLICIT)
    assert MR in str(info.value)
    assert IMPLICIT in str(info.value)
    assert "did not answer" in str(info.value)


def test_no_acceptable_context_for_a_class_never_proposed() -> None:
    accepted = AcceptedContexts(PROPOSED, [PresentationContextAC(1, ACCEPTANCE, EXPLICIT)])
    with pytest.raises(NoAcceptableContext):
        accepted.select("1.2.840.10008.5.1.4.1.1.7", EXPLICIT)  # Secondary Capture


def negotiated(
    files: list[tuple[str, str]], peer_takes: set[str], transcode: bool
) -> AcceptedContexts:
    """What fastsend would propose for ``files``, answered by a peer that takes
    each SOP class only in ``peer_takes`` (PS3.8 9.3.3.2: one answer per context)."""
    (plan,) = plan_associations(files, transcode=transcode)
    answers = [
        PresentationContextAC(pc.presentation_context_id, ACCEPTANCE, pc.transfer_syntaxes[0])
        if pc.transfer_syntaxes[0] in peer_takes
        else PresentationContextAC(pc.presentation_context_id, TRANSFER_SYNTAXES_NOT_SUPPORTED, "")
        for pc in plan
    ]
    return AcceptedContexts(plan, answers, transcode)


def context_of(accepted: AcceptedContexts, syntax: str) -> int:
    """The accepted context ID that carries CT in ``syntax``."""
    return accepted.select(CT, syntax).presentation_context_id


@pytest.mark.parametrize("syntax", TRANSCODED)
def test_select_transcoded_prefers_own_then_explicit_then_implicit(syntax: str) -> None:
    # The issue 13 case: a peer whose CT context takes only Implicit VR LE,
    # the default syntax every SCP must accept (PS3.5 10.1).
    implicit_only = negotiated([(CT, syntax)], {IMPLICIT}, transcode=True)
    selection = implicit_only.select(CT, syntax)
    assert selection.transfer_syntax == IMPLICIT
    assert selection.needs_conversion(syntax)
    assert implicit_only.transfer_syntax_of(selection.presentation_context_id) == IMPLICIT
    # Explicit before Implicit: it keeps the VRs; the file's own syntax first.
    both_le = negotiated([(CT, syntax)], {EXPLICIT, IMPLICIT}, transcode=True)
    assert both_le.select(CT, syntax).transfer_syntax == EXPLICIT
    everything = negotiated([(CT, syntax)], {syntax, EXPLICIT, IMPLICIT}, transcode=True)
    assert everything.select(CT, syntax).transfer_syntax == syntax
    assert not everything.select(CT, syntax).needs_conversion(syntax)


@pytest.mark.parametrize(
    ("syntax", "name", "hint"),
    [
        (DEFLATED, "Deflated Explicit VR Little Endian", "inflate it"),
        (BIG_ENDIAN, "Explicit VR Big Endian", "convert it to Little Endian"),
    ],
)
def test_select_without_transcode_names_the_syntax_and_the_option(
    syntax: str, name: str, hint: str
) -> None:
    accepted = negotiated([(CT, syntax)], {IMPLICIT}, transcode=False)
    with pytest.raises(NoAcceptableContext) as info:
        accepted.select(CT, syntax)
    message = str(info.value)
    assert f"with transfer syntax {name} ({syntax}); the peer answered" in message
    assert "fallback" not in message  # none was proposed
    assert message.endswith(f", or let fastsend {hint} with --transcode if-needed.")


@pytest.mark.parametrize("syntax", TRANSCODED)
def test_select_with_transcode_names_both_fallbacks_when_none_was_taken(syntax: str) -> None:
    # A peer that refuses the class in every syntax: the message says what
    # was tried, and suggests no option that is already on.
    accepted = negotiated([(CT, syntax)], set(), transcode=True)
    with pytest.raises(NoAcceptableContext) as info:
        accepted.select(CT, syntax)
    message = str(info.value)
    assert (
        f"{describe(syntax)} or its uncompressed fallbacks "
        "Explicit VR Little Endian or Implicit VR Little Endian; the peer answered: "
        "transfer-syntaxes-not-supported"
    ) in message
    assert "--transcode" not in message


def test_select_le_names_its_one_fallback() -> None:
    accepted = negotiated([(CT, EXPLICIT)], {JPEG_BASELINE}, transcode=True)
    with pytest.raises(NoAcceptableContext) as info:
        accepted.select(CT, EXPLICIT)
    assert "or its uncompressed fallback Implicit VR Little Endian;" in str(info.value)
    assert "--transcode" not in str(info.value)


def test_select_many_syntaxes_of_one_class_share_the_fallback_contexts() -> None:
    # RLE, big endian and deflated CT files in one association: one Implicit
    # context serves all three, and LE files keep their own contexts.
    files = [(CT, RLE), (CT, BIG_ENDIAN), (CT, DEFLATED), (CT, EXPLICIT)]
    accepted = negotiated(files, {IMPLICIT, EXPLICIT}, transcode=True)
    assert context_of(accepted, RLE) == context_of(accepted, BIG_ENDIAN)
    assert context_of(accepted, RLE) == context_of(accepted, DEFLATED)
    assert context_of(accepted, RLE) == context_of(accepted, EXPLICIT)
    assert accepted.select(CT, IMPLICIT).transfer_syntax == IMPLICIT
    implicit_only = negotiated(files, {IMPLICIT}, transcode=True)
    assert {implicit_only.select(CT, ts).transfer_syntax for (ts,) in [(RLE,), (BIG_ENDIAN,)]} == {
        IMPLICIT
    }
