"""The walk's stat loop (_walk.pyx) against its pure-Python twin and os.stat."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicom_fastsend import _walk, _walk_py

StatNames = Callable[[str, Sequence[str]], list[tuple[int, float] | int]]
BOTH: list[StatNames] = [_walk.stat_names, _walk_py.stat_names]


def as_os_stat(directory: Path, names: Sequence[str]) -> list[tuple[int, float] | int]:
    out: list[tuple[int, float] | int] = []
    for name in names:
        try:
            status = os.stat(directory / name)
        except OSError as exc:
            out.append(exc.errno or 0)
            continue
        out.append((status.st_size, status.st_mtime))
    return out


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "a.dcm").write_bytes(b"x" * 10)
    (tmp_path / "b.dcm").write_bytes(b"")
    os.symlink(tmp_path / "a.dcm", tmp_path / "link.dcm")
    os.symlink(tmp_path / "gone", tmp_path / "dangling.dcm")
    (tmp_path / "sub").mkdir()
    # A name that is not UTF-8: it comes from a listing as a surrogate escape.
    os.close(os.open(bytes(tmp_path) + b"/caf\xe9.dcm", os.O_CREAT | os.O_WRONLY))
    return tmp_path


@pytest.mark.parametrize("stat_names", BOTH, ids=["cython", "python"])
def test_sizes_mtimes_and_errors_are_os_stat_s(stat_names: StatNames, folder: Path) -> None:
    names = sorted(os.listdir(folder)) + ["missing.dcm", "sub/../a.dcm"]
    assert "caf\udce9.dcm" in names
    got = stat_names(str(folder), names)
    assert got == as_os_stat(folder, names)
    by_name = dict(zip(names, got, strict=True))
    assert by_name["link.dcm"] == by_name["a.dcm"]  # links are followed, as os.stat does
    assert by_name["dangling.dcm"] == errno.ENOENT
    assert by_name["missing.dcm"] == errno.ENOENT
    assert by_name["sub"][0] == os.stat(folder / "sub").st_size  # type: ignore[index]


@pytest.mark.parametrize("stat_names", BOTH, ids=["cython", "python"])
def test_a_directory_that_cannot_be_opened_fails_every_name(
    stat_names: StatNames, folder: Path
) -> None:
    assert stat_names(str(folder / "gone"), ["a", "b"]) == [errno.ENOENT] * 2
    assert stat_names(str(folder / "a.dcm"), ["a"]) == [errno.ENOTDIR]
    assert stat_names(str(folder), []) == []


@pytest.mark.parametrize("stat_names", BOTH, ids=["cython", "python"])
def test_no_directory_is_the_current_one(
    stat_names: StatNames, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(folder)
    assert stat_names("", ["a.dcm", "missing"]) == [(10, os.stat("a.dcm").st_mtime), 2]


@pytest.mark.parametrize("stat_names", BOTH, ids=["cython", "python"])
def test_a_name_with_a_null_byte_is_refused_as_os_stat_refuses_it(
    stat_names: StatNames, folder: Path
) -> None:
    with pytest.raises(ValueError, match="embedded null byte"):
        stat_names(str(folder), ["a\0.dcm"])


@settings(max_examples=200, deadline=None)
@given(
    seconds=st.integers(min_value=0, max_value=2**34),
    nanoseconds=st.integers(min_value=0, max_value=999_999_999),
)
def test_mtimes_are_the_same_double_as_os_stat_s(
    tmp_path_factory: pytest.TempPathFactory, seconds: int, nanoseconds: int
) -> None:
    """A rerun skips a file when its (size, mtime) equals the stored one exactly: the
    compiled loop must round seconds + nanoseconds as CPython does, to the bit."""
    folder = tmp_path_factory.getbasetemp() / "mtimes"
    folder.mkdir(exist_ok=True)
    path = folder / "f.dcm"
    path.write_bytes(b"abc")
    mtime_ns = seconds * 1_000_000_000 + nanoseconds
    os.utime(path, ns=(mtime_ns, mtime_ns))
    expected = (3, os.stat(path).st_mtime)
    assert _walk.stat_names(str(folder), ["f.dcm"]) == [expected]
    assert _walk_py.stat_names(str(folder), ["f.dcm"]) == [expected]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory: needs a plain user")
def test_a_file_named_in_a_directory_that_cannot_be_listed_is_found(tmp_path: Path) -> None:
    """A drop box (mode 0311): its files can be stat()ed by path, the directory not
    opened. A file named as an input is stat()ed by its whole path (prepare.Walker)."""
    from dicom_fastsend.engine.inventory import Inventory
    from dicom_fastsend.engine.prepare import Walker

    box = tmp_path / "box"
    box.mkdir()
    (box / "x.dcm").write_bytes(b"x" * 10)
    box.chmod(0o311)
    try:
        inventory = Inventory(tmp_path / "i.sqlite", "A@h:1", "s")
        failed: list[object] = []
        walker = Walker([box / "x.dcm"], False, inventory, True, lambda *a: failed.append(a))
        while walker.step():
            pass
        assert failed == []
        assert walker.walk.pending == 1
    finally:
        box.chmod(0o755)
