"""Find the files to send under the inputs, one directory at a time, in a stable order."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from operator import attrgetter
from typing import Protocol

import msgspec

# Files handed over per unit at most, so that the coordinator's loop stays
# responsive in a directory of a hundred thousand files.
STEP_FILES = 1000


class MissingInput(msgspec.Struct, frozen=True):
    """An input path that does not exist or cannot be listed."""

    path: str
    reason: str


class UnsearchedSubdirectories(msgspec.Struct, frozen=True):
    """Subdirectories of a directory input whose files were not searched.

    Not a file's outcome: a note for the user, who may have forgotten ``-r``
    (or given a folder of links) and would otherwise believe the files below
    were sent. ``linked``: links to directories, which are never followed.
    """

    path: str
    count: int
    linked: bool = False

    @property
    def hint(self) -> str:
        if self.linked:
            plural = "" if self.count == 1 else "s"
            return (
                f"{self.path}: {self.count} link{plural} to directories not followed; "
                "give their targets with -i"
            )
        plural = "y" if self.count == 1 else "ies"
        return f"{self.path}: {self.count} subdirector{plural} not searched; add -r to descend"


class Entry(Protocol):
    """A file the walk met: an os.DirEntry, or a Named input."""

    @property
    def path(self) -> str: ...

    @property
    def name(self) -> str: ...

    def stat(self) -> os.stat_result: ...


class Named(msgspec.Struct, frozen=True):
    """A file named as an input (or in --input-list), not met in a listing."""

    path: str

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def stat(self) -> os.stat_result:
        return os.stat(self.path)


class Unit(msgspec.Struct, frozen=True):
    """Files of one directory, sorted by name; ``listed``: from a listing of it."""

    directory: str
    entries: Sequence[Entry]
    listed: bool


def discover(
    inputs: Sequence[os.PathLike[str] | str], recursive: bool
) -> Iterator[Unit | MissingInput | UnsearchedSubdirectories]:
    """The inputs in walk order: at most STEP_FILES files of one directory at a time.

    A directory's own files come before its subdirectories (sorted by name),
    as os.walk gives them. Everything that is not a directory is a file to
    account for: a dangling link then fails with its reason, a FIFO or a
    device is skipped as not DICOM; none is dropped. Links to directories
    are not followed (a link loop cannot make the walk endless), and are
    named in a note; symlinked files are sent.
    """
    for root in inputs:
        # "dir/" and "dir" are one directory: its files' rows are kept under
        # "dir", and a rerun given "dir/" must find them there.
        path = os.fspath(root).rstrip(os.sep) or os.sep
        if os.path.isfile(path):
            yield Unit(os.path.dirname(path), [Named(path)], listed=False)
            continue
        if not os.path.exists(path):
            yield MissingInput(path, "no such file or directory")
            continue
        if not os.path.isdir(path):
            yield MissingInput(path, "not a regular file or directory")
            continue
        stack = [path]
        while stack:
            directory = stack.pop()
            try:
                with os.scandir(directory) as listing:
                    entries = sorted(listing, key=attrgetter("name"))
            except OSError as exc:
                yield MissingInput(directory, f"cannot list directory: {exc.strerror or exc}")
                continue
            files: list[os.DirEntry[str]] = []
            subdirectories: list[str] = []
            links = 0
            for entry in entries:
                try:
                    is_directory = entry.is_dir()
                    linked = is_directory and entry.is_symlink()
                except OSError:
                    is_directory = linked = False
                if not is_directory:
                    files.append(entry)
                elif linked:
                    links += 1
                else:
                    subdirectories.append(entry.path)
            for start in range(0, len(files), STEP_FILES):
                yield Unit(directory, files[start : start + STEP_FILES], listed=True)
            if links:
                yield UnsearchedSubdirectories(directory, links, linked=True)
            if not recursive:
                if subdirectories:
                    yield UnsearchedSubdirectories(directory, len(subdirectories))
                continue
            stack.extend(reversed(subdirectories))
