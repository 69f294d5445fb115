"""What a run will send: the walk into the inventory, and the admission of a batch.

Both `send` and `scan` run these, so `scan` predicts what `send` does: the
same files found, already stored, duplicates, unreadable and not DICOM.

The walk (``Walker``) goes one directory at a time, so sending starts while
it goes on: each file is stat()ed and compared with the inventory's row for
it; one the destination holds, unchanged, is counted as already stored
without being opened, and every other one becomes a *pending* row. Nothing
is held in memory but the directory in hand.

Admission (``admit``) happens just before a batch is sent, in the worker
that sends it (or, with --cluster, in the coordinator): each file's header is
read (so its data then comes from the page cache), and its SOP Instance UID
claimed in the inventory, which finds the duplicates.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import msgspec
from msgspec import field

from ..io.discover import MissingInput, Unit, UnsearchedSubdirectories, discover, stat_names
from ..io.header import FileInfo, HeaderError, read_header_and_content
from .inventory import Inventory, Pending
from .results import Cause, FileResult, Outcome

# A file whose outcome was decided here: its result, its header when read, and why.
Reporter = Callable[[FileResult, FileInfo | None, Cause], None]


class Walk(msgspec.Struct):
    """What the walk found so far."""

    found: int = 0  # files and missing inputs: each ends in exactly one outcome
    pending: int = 0  # of those, written as pending rows
    already_stored: int = 0
    unsearched: list[UnsearchedSubdirectories] = field(default_factory=list)
    done: bool = False


class Walker:
    """The inputs, walked one step at a time into the inventory's pending rows."""

    def __init__(
        self,
        inputs: Sequence[os.PathLike[str] | str],
        recursive: bool,
        inventory: Inventory,
        resume: bool,
        report: Reporter,
        already_stored: Callable[[str, int], None] = lambda directory, count: None,
    ) -> None:
        self.walk = Walk()
        self._inventory = inventory
        self._resume = resume
        self._report = report
        self._already_stored = already_stored
        self._units = discover(inputs, recursive)

    def step(self) -> bool:
        """Walk one directory (or STEP_FILES of it); False once the walk is done."""
        if self.walk.done:
            return False
        for unit in self._units:
            if isinstance(unit, MissingInput):
                self.walk.found += 1
                self._report(
                    FileResult(unit.path, Outcome.FAILED, unit.reason), None, Cause.MISSING
                )
                continue
            if isinstance(unit, UnsearchedSubdirectories):
                self.walk.unsearched.append(unit)
                continue
            self._take(unit)
            return True
        self.walk.done = True
        return False

    def _take(self, unit: Unit) -> None:
        directory, names = unit.directory, unit.names
        held_versions: set[tuple[str, int, float]] = set()
        if self._resume:
            if unit.listed:
                held_versions = self._inventory.known(directory)
            else:
                for name in names:
                    row = self._inventory.known_path(os.path.join(directory, name))
                    if row is not None:
                        held_versions.add((name, row.size, row.mtime))
        pending: list[tuple[str, int, float]] = []  # (name, size, mtime)
        held = 0
        self.walk.found += len(names)
        # One stat a file, compiled (see _walk_py): at a million files on a
        # rerun, this loop is most of the time before the run can end.
        if unit.listed:
            statuses = stat_names(directory, names)
        else:
            # Named inputs: by their whole path, as os.stat. Opening their
            # directory would need read permission on it, where a stat needs
            # only search permission (a drop box of mode 0311).
            statuses = stat_names("", [os.path.join(directory, name) for name in names])
        for name, status in zip(names, statuses, strict=True):
            if isinstance(status, int):
                path = os.path.join(directory, name)
                reason = f"cannot read file: {os.strerror(status)}"
                self._report(FileResult(path, Outcome.FAILED, reason), None, Cause.UNREADABLE)
                continue
            size, mtime = status
            # Held, and unchanged since: same size and mtime as the version stored.
            if held_versions and (name, size, mtime) in held_versions:
                held += 1
                continue
            pending.append((name, size, mtime))
        self._inventory.add_pending_in(directory, pending)
        self.walk.pending += len(pending)
        if held:
            self.walk.already_stored += held
            self._already_stored(directory, held)


def admit(
    files: Sequence[Pending | FileInfo],
    inventory: Inventory | None,
    resume: bool,
    report: Reporter,
    contents: dict[str, bytes] | None = None,
    heads: dict[str, tuple[FileInfo, bytes | None]] | None = None,
) -> list[FileInfo]:
    """Read the headers of a batch and claim its instances; return what to send.

    Files that are not DICOM or cannot be read, and duplicates of an instance
    the destination holds or another worker sends, are reported here. With
    ``contents``, the bytes of each file small enough to be read whole with
    its header go there, by path, for the sender. ``heads``: headers already
    read (by the worker's look-ahead, with read_header_and_content), by
    path; each one used is taken out.
    """
    infos: list[FileInfo] = []
    for item in files:
        if isinstance(item, FileInfo):
            infos.append(item)
            continue
        try:
            head = heads.pop(item.path, None) if heads else None
            info, content = head if head is not None else read_header_and_content(item.path)
            infos.append(info)
            if content is not None and contents is not None:
                contents[info.path] = content
        except HeaderError as exc:
            if exc.kind == "unreadable":
                report(FileResult(item.path, Outcome.FAILED, exc.reason), None, Cause.UNREADABLE)
            else:
                report(FileResult(item.path, Outcome.SKIPPED, exc.reason), None, Cause.NOT_DICOM)
    if inventory is not None:
        duplicates = inventory.claim(infos, resume)
    else:
        duplicates = _duplicates_within(infos)
    if not duplicates:
        return infos
    kept: list[FileInfo] = []
    for info in infos:
        original = duplicates.get(info.path)
        if original is None:
            kept.append(info)
            continue
        reason = (
            f"duplicate SOP Instance UID {info.sop_instance_uid}: {original} has the same one "
            "and is sent (or was stored) instead"
        )
        report(FileResult.of(info, Outcome.SKIPPED, reason), info, Cause.DUPLICATE)
    return kept


def _duplicates_within(infos: Sequence[FileInfo]) -> dict[str, str]:
    first: dict[str, str] = {}
    duplicates: dict[str, str] = {}
    for info in infos:
        original = first.setdefault(info.sop_instance_uid, info.path)
        if original != info.path:
            duplicates[info.path] = original
    return duplicates
