"""The walk's stat loop, pure Python: the reference for the compiled ``_walk.pyx``.

A rerun of a finished migration decides, for each file, from one stat whether
the destination already holds it (engine/prepare.py). At a million files that
loop is most of the rerun, and in Python each ``os.stat`` costs about three
times the system call; ``_walk.pyx`` makes the same calls from C. Both return
the same values: the tests compare them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

# Directory to open relative names in: a directory given as "" is the current one.
_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def stat_names(directory: str, names: Sequence[str]) -> list[tuple[int, float] | int]:
    """For each of ``names`` in ``directory``: ``(st_size, st_mtime)`` as
    ``os.stat`` gives them (links followed), or the errno of its failure.

    Each name is looked up relative to one descriptor of the directory
    (fstatat(2)), not by its whole path. A directory that cannot be opened
    gives its errno for every name.
    """
    if not directory:
        fd = None
    else:
        try:
            fd = os.open(directory, _FLAGS)
        except OSError as exc:
            return [exc.errno or 0] * len(names)
    try:
        out: list[tuple[int, float] | int] = []
        for name in names:
            try:
                status = os.stat(name, dir_fd=fd)
            except OSError as exc:
                out.append(exc.errno or 0)
                continue
            out.append((status.st_size, status.st_mtime))
        return out
    finally:
        if fd is not None:
            os.close(fd)
