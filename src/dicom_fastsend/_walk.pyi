"""Typed face of the compiled stat loop (_walk.pyx); _walk_py.py documents it."""

from collections.abc import Sequence

def stat_names(directory: str, names: Sequence[str]) -> list[tuple[int, float] | int]: ...
