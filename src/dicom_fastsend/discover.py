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


def discover(inputs: Iterable[Path], recursive: bool) -> Iterator[str | MissingInput]:
    """Yield file paths under ``inputs`` (sorted per directory), or MissingInput.

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
            for name in names:
                child = os.path.join(path, name)
                if os.path.isfile(child):
                    yield child
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
