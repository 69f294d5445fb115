"""Find the files to send under the inputs, in a stable order."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class MissingInput:
    """An input path that does not exist or cannot be listed."""

    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class UnsearchedSubdirectories:
    """A directory input, walked without ``recursive``, that has subdirectories.

    Not a file's outcome: a note for the user, who may have forgotten ``-r``
    and would otherwise believe the files below were sent.
    """

    path: str
    count: int

    @property
    def hint(self) -> str:
        plural = "y" if self.count == 1 else "ies"
        return f"{self.path}: {self.count} subdirector{plural} not searched; add -r to descend"


def discover(
    inputs: Iterable[Path], recursive: bool
) -> Iterator[str | MissingInput | UnsearchedSubdirectories]:
    """Yield file paths under ``inputs`` (sorted per directory), MissingInput, or
    UnsearchedSubdirectories (after the files of a directory walked without ``recursive``).

    Without ``recursive`` only a directory's own files are taken. Directory
    symlinks are not followed, so a link loop cannot make the walk endless;
    symlinked files are sent like any other.
    """
    for root in inputs:
        path = os.fspath(root)
        if os.path.isfile(path):
            yield path
            continue
        if not os.path.exists(path):
            yield MissingInput(path, "no such file or directory")
            continue
        if not os.path.isdir(path):
            yield MissingInput(path, "not a regular file or directory")
            continue
        if not recursive:
            try:
                names = sorted(os.listdir(path))
            except OSError as exc:
                yield MissingInput(path, f"cannot list directory: {exc.strerror or exc}")
                continue
            unsearched = 0
            for name in names:
                child = os.path.join(path, name)
                if os.path.isfile(child):
                    yield child
                elif os.path.isdir(child):
                    unsearched += 1
            if unsearched:
                yield UnsearchedSubdirectories(path, unsearched)
            continue
        errors: list[OSError] = []
        for directory, subdirectories, files in os.walk(path, onerror=errors.append):
            subdirectories.sort()
            for name in sorted(files):
                yield os.path.join(directory, name)
        for error in errors:
            yield MissingInput(
                str(error.filename), f"cannot list directory: {error.strerror or error}"
            )
