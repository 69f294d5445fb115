"""Study order (``--order``, ``--priority-list``): which directory goes out first.

The default, ``path``, is the streaming dispatch of coordinator.py: pending
files in path order while the walk goes on, with no header read before a
worker's. Any other order, or a priority list, needs what only headers say
(Study Date, Study Time, Accession Number), so it costs a pre-pass once the
walk is done: the first and the last pending file of each directory have
their header read (in parallel threads; the headers are small, the data is
not read), and the directories go out in the order of their studies.

The unit is the directory, the layout of nearly every archive (a series or
a study per directory); the two headers read show a directory that holds
more than one study, which then goes where its most urgent study would.
Files not in any planned directory (none, normally) go last, in path order.
``plan_order`` is pure and tested without files or processes; ``Sequence``
hands out the batches in that order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from enum import Enum
from pathlib import Path
from typing import Final

import msgspec

from ..io.header import FileInfo, HeaderError, read_header
from .inventory import Inventory, Pending

# Threads reading headers in the pre-pass: the reads wait on the disk (or the
# network share), not on the CPU.
HEADER_THREADS: Final = 8


class Order(Enum):
    PATH = "path"  # the walk's order, streaming (no pre-pass)
    NEWEST_FIRST = "newest-first"  # Study Date and Time, the latest first
    OLDEST_FIRST = "oldest-first"


class PriorityListError(ValueError):
    """A --priority-list that cannot be read: names the file and why."""


def read_priority_list(path: Path) -> tuple[str, ...]:
    """Study Instance UIDs or Accession Numbers, one a line; '#' starts a comment."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PriorityListError(f"cannot read the priority list {path}: {why}") from None
    entries = []
    for line in text.splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            entries.append(entry)
    return tuple(dict.fromkeys(entries))


class Study(msgspec.Struct, frozen=True):
    """What a header read says of the study a file belongs to."""

    study_instance_uid: str = ""
    accession_number: str = ""
    study_date: str = ""  # DA, YYYYMMDD (PS3.5 6.2)
    study_time: str = ""  # TM, HHMMSS.FFFFFF

    @classmethod
    def of(cls, info: FileInfo) -> Study:
        return cls(info.study_instance_uid, info.accession_number, info.study_date, info.study_time)

    @property
    def when(self) -> str:
        """Date then time, as one string that sorts in time order; "" when unknown.

        A DA value is YYYYMMDD and a TM value HH[MM[SS[.F]]] (PS3.5 6.2), so
        the text of the two, time padded to 6 digits, sorts as the moment.
        """
        date = self.study_date.strip()
        if len(date) != 8 or not date.isdigit():
            return ""
        clock = self.study_time.strip().split(".")[0]
        return date + clock.ljust(6, "0")[:6] if clock.isdigit() else date + "000000"


class Group(msgspec.Struct, frozen=True):
    """A directory of pending files and the studies its headers named."""

    directory: str
    files: int = 0
    studies: tuple[Study, ...] = ()


class Plan(msgspec.Struct, frozen=True):
    groups: tuple[Group, ...]
    prioritized: int  # how many of the groups come from the priority list
    unmatched: tuple[str, ...]  # priority entries no directory's study matched


def plan_order(groups: Iterable[Group], order: Order, priority: Sequence[str] = ()) -> Plan:
    """The directories in dispatch order.

    First the directories of the priority list's studies, in the list's
    order (an entry matches a Study Instance UID or an Accession Number);
    then the rest by study time, newest or oldest first, those without a
    Study Date last; in path order where that says nothing.
    """
    rank = {entry: index for index, entry in enumerate(priority)}
    matched: set[str] = set()
    first: list[tuple[int, str, Group]] = []
    rest: list[Group] = []
    for group in groups:
        best: int | None = None
        for study in group.studies:
            for key in (study.study_instance_uid, study.accession_number):
                if key and key in rank:
                    matched.add(key)
                    best = rank[key] if best is None else min(best, rank[key])
        if best is None:
            rest.append(group)
        else:
            first.append((best, group.directory, group))
    first.sort(key=lambda item: (item[0], item[1]))
    rest.sort(key=lambda group: group.directory)
    if order is not Order.PATH:
        newest = order is Order.NEWEST_FIRST

        def moment(group: Group) -> str:
            times = [s.when for s in group.studies if s.when]
            if not times:
                return ""
            return max(times) if newest else min(times)

        dated = [g for g in rest if moment(g)]
        undated = [g for g in rest if not moment(g)]
        dated.sort(key=moment, reverse=newest)  # stable: path order among equals
        rest = dated + undated
    unmatched = tuple(entry for entry in priority if entry not in matched)
    return Plan(tuple(g for _, _, g in first) + tuple(rest), len(first), unmatched)


def survey_groups(
    directories: Sequence[tuple[str, str, str, int]],
    between: Callable[[], bool] = lambda: True,
) -> tuple[list[Group], list[str]]:
    """Read the first and last pending file's header of each directory.

    ``directories``: (directory, first name, last name, files). Returns the
    groups and a note for each directory found to hold more than one study.
    ``between`` runs between chunks (the coordinator serves its metrics);
    False stops the survey there (Ctrl-C).
    """
    groups: list[Group] = []
    mixed: list[str] = []

    def read(entry: tuple[str, str, str, int]) -> Group:
        directory, first, last, count = entry
        studies: list[Study] = []
        for name in dict.fromkeys((first, last)):
            try:
                studies.append(Study.of(read_header(os.path.join(directory, name))))
            except HeaderError:
                pass  # not DICOM or unreadable: the worker's admission says so later
        return Group(directory, count, tuple(dict.fromkeys(studies)))

    chunk = 256
    # Imported here: concurrent.futures costs every run ~5 ms to import, and
    # only --order newest-first/oldest-first and --priority-list get here.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(HEADER_THREADS, thread_name_prefix="fastsend-order") as pool:
        for start in range(0, len(directories), chunk):
            for group in pool.map(read, directories[start : start + chunk]):
                groups.append(group)
                uids = {s.study_instance_uid for s in group.studies}
                if len(uids) > 1:
                    mixed.append(group.directory)
            if not between():
                break
    return groups, mixed


class StudyQueue(msgspec.Struct):
    """Hands out pending files directory by directory, in the plan's order."""

    directories: list[str]
    _next: int = 0

    def take(self, inventory: Inventory, max_files: int, max_bytes: int) -> list[Pending]:
        """The next batch: from the current directory on, then whatever is left."""
        files: list[Pending] = []
        size = 0
        while self._next < len(self.directories) and len(files) < max_files:
            room = max_bytes - size
            if files and room <= 0:
                break
            # A file larger than a batch travels alone, never added to others.
            more = inventory.take_pending_in(
                self.directories[self._next], max_files - len(files), room, alone=not files
            )
            if not more:
                self._next += 1
                continue
            files += more
            size += sum(f.size for f in more)
        if not files:
            files = inventory.take_pending(max_files, max_bytes)
        return files
