"""Presentation context planning and selection (PS3.8 9.3.2.2, 9.3.3.2; PS3.5 10.1)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicom_fastsend.contexts import (
    AcceptedContexts,
    NoAcceptableContext,
    association_for,
    plan_associations,
    transfer_syntaxes_for,
)
from dicom_fastsend.ul.pdu import PresentationContextAC, PresentationContextRQ

CT = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
MR = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
EXPLICIT = "1.2.840.10008.1.2.1"  # Explicit VR Little Endian (PS3.5 A.2)
IMPLICIT = "1.2.840.10008.1.2"  # Implicit VR Little Endian (PS3.5 A.1)
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG2000 = "1.2.840.10008.1.2.4.91"

# PS3.8 9.3.3.2 Table 9-18: Result/Reason values of a Presentation Context Item (AC).
ACCEPTANCE = 0
USER_REJECTION = 1
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


def pairs_of(plans: list[tuple[PresentationContextRQ, ...]]) -> list[tuple[str, str]]:
    return [(c.abstract_syntax, ts) for plan in plans for c in plan for ts in c.transfer_syntaxes]


def test_transfer_syntaxes_for_little_endian_adds_the_other() -> None:
    assert transfer_syntaxes_for(EXPLICIT) == (EXPLICIT, IMPLICIT)
    assert transfer_syntaxes_for(IMPLICIT) == (IMPLICIT, EXPLICIT)


def test_transfer_syntaxes_for_compressed_is_only_itself() -> None:
    # Compressed pixel data cannot be converted on the fly, so no fallback is offered.
    assert transfer_syntaxes_for(JPEG_BASELINE) == (JPEG_BASELINE,)


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


SYNTAXES = [EXPLICIT, IMPLICIT, JPEG_BASELINE, JPEG2000, "1.2.840.10008.1.2.5"]


@settings(max_examples=150, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(st.integers(0, 400).map(lambda n: f"1.2.840.99.{n}"), st.sampled_from(SYNTAXES)),
        max_size=400,
    ),
    max_contexts=st.sampled_from([128, 7, 5]),
)
def test_plan_property(pairs: list[tuple[str, str]], max_contexts: int) -> None:
    plans = plan_associations(pairs, max_contexts)
    # Independent expectation: the file's syntax, plus the other LE syntax for LE files.
    other_le = {EXPLICIT: IMPLICIT, IMPLICIT: EXPLICIT}
    expected = {(c, ts) for c, ts in pairs} | {
        (c, other_le[ts]) for c, ts in pairs if ts in other_le
    }
    planned = pairs_of(plans)
    assert len(planned) == len(set(planned))  # nothing duplicated
    assert set(planned) == expected  # nothing lost, nothing invented
    for plan in plans:
        assert 1 <= len(plan) <= max_contexts
        assert [c.presentation_context_id for c in plan] == list(range(1, 2 * len(plan), 2))
        assert all(len(c.transfer_syntaxes) == 1 for c in plan)
    # A class needs at most 5 contexts here (<= max_contexts), so it sits in one association.
    for sop_class in {c for c, _ in pairs}:
        holders = {
            i for i, plan in enumerate(plans) for c in plan if c.abstract_syntax == sop_class
        }
        assert len(holders) == 1


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
