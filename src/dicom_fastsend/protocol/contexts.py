"""Which presentation contexts to propose, and which accepted one each file uses.

Pure functions: no I/O, tested without a peer.

Each (SOP class, transfer syntax) pair is proposed as its own presentation
context with a single transfer syntax (PS3.8 9.3.2.2 allows several contexts
per abstract syntax). Proposing the file's own syntax alone means the peer
cannot pick a syntax that forces a conversion when it could take the file as
it is; uncompressed Little Endian syntaxes are proposed as further contexts so
a peer that takes only those still gets the file, converted. Implicit VR
Little Endian is the one syntax every SCP must accept (PS3.5 10.1), so it is
always among the fallbacks a file can be converted to.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import msgspec

from .pdu import (
    PresentationContextAC,
    PresentationContextRQ,
    presentation_context_result_text,
)
from .uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    UNCOMPRESSED_LITTLE_ENDIAN,
    describe,
    uid_name,
)

# Presentation context IDs are odd numbers 1..255 (PS3.8 9.3.2.2).
MAX_CONTEXTS_PER_ASSOCIATION = 128


def can_transcode(transfer_syntax: str) -> bool:
    """Whether ``--transcode if-needed`` can turn the file into uncompressed Little Endian.

    Compressed syntaxes are decompressed and Deflated Explicit VR LE is
    inflated by pydicom; Explicit VR Big Endian (retired, PS3.5 A.3) is
    byte-swapped by fastsend itself (see convert.py). The two uncompressed
    Little Endian syntaxes need no transcoding: they convert on the fly.
    """
    return transfer_syntax not in UNCOMPRESSED_LITTLE_ENDIAN


# Fallbacks for a file that must be transcoded, in order of preference, each
# proposed as a presentation context of its own (PS3.8 9.3.2.2): Explicit VR
# LE keeps every element's VR; Implicit VR LE is the default syntax that every
# SCP must accept (PS3.5 10.1), so a peer that takes only it still gets the file.
TRANSCODE_FALLBACKS = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)


def transfer_syntaxes_for(transfer_syntax: str, transcode: bool = False) -> tuple[str, ...]:
    """The file's own syntax, then the uncompressed syntaxes it can be converted to.

    In order of preference. The two uncompressed Little Endian syntaxes fall
    back to each other; with ``transcode``, any other syntax (compressed,
    deflated, big endian) falls back to Explicit VR LE, then Implicit VR LE.
    """
    if transfer_syntax in UNCOMPRESSED_LITTLE_ENDIAN:
        (other,) = (ts for ts in UNCOMPRESSED_LITTLE_ENDIAN if ts != transfer_syntax)
        return (transfer_syntax, other)
    if transcode and can_transcode(transfer_syntax):
        return (transfer_syntax, *TRANSCODE_FALLBACKS)
    return (transfer_syntax,)


def plan_associations(
    pairs: Iterable[tuple[str, str]],
    max_contexts: int = MAX_CONTEXTS_PER_ASSOCIATION,
    transcode: bool = False,
) -> list[tuple[PresentationContextRQ, ...]]:
    """Presentation contexts for (SOP class, transfer syntax) pairs, split into associations.

    All contexts of one SOP class stay in the same association, so any file
    of that class can use its fallback there. SOP classes are packed in
    sorted order, first fit, into groups of at most ``max_contexts``.
    """
    wanted: dict[str, set[str]] = defaultdict(set)
    for sop_class, transfer_syntax in pairs:
        wanted[sop_class].update(transfer_syntaxes_for(transfer_syntax, transcode))
    groups: list[list[tuple[str, str]]] = []
    for sop_class in sorted(wanted):
        contexts = [(sop_class, ts) for ts in sorted(wanted[sop_class])]
        for group in groups:
            if len(group) + len(contexts) <= max_contexts:
                group.extend(contexts)
                break
        else:
            # A single class never needs more than max_contexts syntaxes in practice;
            # if it did, it is split like any other overflow.
            for start in range(0, len(contexts), max_contexts):
                groups.append(contexts[start : start + max_contexts])
    return [
        tuple(
            PresentationContextRQ(2 * index + 1, sop_class, (ts,))
            for index, (sop_class, ts) in enumerate(group)
        )
        for group in groups
    ]


def association_for(plans: Sequence[tuple[PresentationContextRQ, ...]], sop_class: str) -> int:
    """Index of the planned association that carries ``sop_class``."""
    for index, contexts in enumerate(plans):
        if any(c.abstract_syntax == sop_class for c in contexts):
            return index
    raise KeyError(sop_class)


class Selection(msgspec.Struct, frozen=True):
    """The accepted context a file is sent on, and whether it must be converted."""

    presentation_context_id: int
    transfer_syntax: str

    def needs_conversion(self, file_transfer_syntax: str) -> bool:
        return self.transfer_syntax != file_transfer_syntax


class NoAcceptableContext(Exception):
    """No accepted presentation context can carry a file; the message says why."""


class AcceptedContexts:
    """The outcome of negotiation: what was proposed and what the peer answered."""

    def __init__(
        self,
        proposed: Sequence[PresentationContextRQ],
        answered: Sequence[PresentationContextAC],
        transcode: bool = False,
    ) -> None:
        self._transcode = transcode
        self._proposed = {c.presentation_context_id: c for c in proposed}
        self._answers = {c.presentation_context_id: c for c in answered}
        # (sop class, transfer syntax) -> presentation context id, accepted ones only.
        self._accepted: dict[tuple[str, str], int] = {}
        for pc_id, answer in self._answers.items():
            request = self._proposed.get(pc_id)
            # PS3.8 9.3.3.2: an accepted context must carry one of the proposed
            # syntaxes; anything else is ignored rather than trusted.
            if request and answer.accepted and answer.transfer_syntax in request.transfer_syntaxes:
                self._accepted.setdefault((request.abstract_syntax, answer.transfer_syntax), pc_id)
        # select's answers so far: an association carries many files of few
        # (SOP class, transfer syntax) pairs, and the answer never changes.
        self._selected: dict[tuple[str, str], Selection] = {}

    @property
    def accepted_count(self) -> int:
        return len(self._accepted)

    def transfer_syntax_of(self, presentation_context_id: int) -> str:
        return self._answers[presentation_context_id].transfer_syntax

    def select(self, sop_class: str, transfer_syntax: str) -> Selection:
        """The context for a file: its own syntax if accepted, else the first accepted fallback.

        Fallbacks are tried in the order of transfer_syntaxes_for. The peer
        answers each proposed context on its own (PS3.8 9.3.3.2), so any
        subset of them may be accepted.
        """
        key = (sop_class, transfer_syntax)
        selection = self._selected.get(key)
        if selection is None:
            selection = self._selected[key] = self._select(sop_class, transfer_syntax)
        return selection

    def _select(self, sop_class: str, transfer_syntax: str) -> Selection:
        candidates = transfer_syntaxes_for(transfer_syntax, self._transcode)
        for candidate in candidates:
            pc_id = self._accepted.get((sop_class, candidate))
            if pc_id is not None:
                return Selection(pc_id, candidate)
        answers = sorted(
            {
                presentation_context_result_text(self._answers[pc_id].result)
                for pc_id, rq in self._proposed.items()
                if rq.abstract_syntax == sop_class and pc_id in self._answers
            }
        )
        peer_said = (
            "; the peer answered: " + ", ".join(answers)
            if answers
            else ("; the peer did not answer those contexts")
        )
        fallbacks = candidates[1:]
        raise NoAcceptableContext(
            f"no accepted presentation context for SOP class {describe(sop_class)} "
            f"with transfer syntax {describe(transfer_syntax)}"
            + (
                f" or its uncompressed fallback{'s' if len(fallbacks) > 1 else ''} "
                + " or ".join(uid_name(ts) for ts in fallbacks)
                if fallbacks
                else ""
            )
            + peer_said
            + ". Configure the destination to accept this SOP class and transfer syntax"
            + (
                f", or let fastsend {_transcoding(transfer_syntax)} with --transcode if-needed."
                if can_transcode(transfer_syntax) and not self._transcode
                else "."
            )
        )


def _transcoding(transfer_syntax: str) -> str:
    """What ``--transcode if-needed`` would do to a file, for the hint in a message."""
    if transfer_syntax == EXPLICIT_VR_BIG_ENDIAN:
        return "convert it to Little Endian"
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        return "inflate it"
    return "decompress it"
