"""Find the files to send under the inputs, one directory at a time, in a stable order."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import msgspec

from .._twins import select

if TYPE_CHECKING:
    from .._walk_py import stat_names as stat_names
else:
    # The walk's stat loop, compiled unless FASTSEND_PURE_PYTHON=1 (_walk.pyx).
    stat_names = select("_walk")[0].stat_names

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


class Unit(msgspec.Struct, frozen=True):
    """Files of one directory, by name, sorted; ``listed``: from a listing of it
    (else one file named as an input, by the directory and name of its path)."""

    directory: str
    names: Sequence[str]
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
            directory, name = os.path.split(path)
            yield Unit(directory, [name], listed=False)
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
            files: list[str] = []
            subdirectories: list[str] = []
            links = 0
            try:
                with os.scandir(directory) as listing:
                    for entry in listing:
                        # The type comes with the listing (d_type): no stat here.
                        try:
                            is_directory = entry.is_dir()
                            linked = is_directory and entry.is_symlink()
                        except OSError:
                            is_directory = linked = False
                        if not is_directory:
                            files.append(entry.name)
                        elif linked:
                            links += 1
                        else:
                            subdirectories.append(entry.path)
            except OSError as exc:
                yield MissingInput(directory, f"cannot list directory: {exc.strerror or exc}")
                continue
            # Sorting names, not DirEntry objects by a key: a third of the cost.
            files.sort()
            subdirectories.sort()
            for start in range(0, len(files), STEP_FILES):
                yield Unit(directory, files[start : start + STEP_FILES], listed=True)
            if links:
                yield UnsearchedSubdirectories(directory, links, linked=True)
            if not recursive:
                if subdirectories:
                    yield UnsearchedSubdirectories(directory, len(subdirectories))
                continue
            stack.extend(reversed(subdirectories))
