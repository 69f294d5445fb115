"""The installed package is the sender: Cython only builds it, the bench harness stays in bench/.

Cython compiles `_pdu.pyx` when the wheel is built ([build-system] requires);
a wheel that also required it at run time would pull a compiler toolchain's
worth of package onto every sending host. The comparison harness (finding
DCMTK and Orthanc, rewriting README.md) runs from a checkout as
`python bench/run.py`; `fastsend bench` is the quick self-check only.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path

import dicom_fastsend
from fastsend_cli import fastsend

PACKAGE = Path(dicom_fastsend.__file__).parent


def requirement_name(requirement: str) -> str:
    """The project name a Requires-Dist line names (PEP 508), normalised (PEP 503)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def test_cython_is_not_a_runtime_requirement() -> None:
    requirements = importlib.metadata.requires("dicom-fastsend") or []
    runtime = [r for r in requirements if "extra ==" not in r]
    names = {requirement_name(r) for r in runtime}
    assert "pydicom" in names  # the metadata was read: a real runtime requirement is there
    assert "cython" not in names, runtime


def test_the_package_holds_no_comparison_harness() -> None:
    sources = [*PACKAGE.rglob("*.py"), *PACKAGE.rglob("*.pyx")]
    assert any(path.name == "cli.py" for path in sources)
    # The markers between which bench/run.py --readme writes its table.
    writers = [path.name for path in sources if "bench:begin" in path.read_text()]
    assert writers == []
    assert importlib.util.find_spec("dicom_fastsend.delayproxy") is None


def test_bench_is_the_self_check_only() -> None:
    run = fastsend("bench", "--help")
    assert run.returncode == 0, run.output
    assert "--runs" in run.stdout and "--max-ops" in run.stdout
    assert "--compare" not in run.stdout
    # The full comparison is `python bench/run.py` from a checkout now; the
    # option is gone, and click says so.
    run = fastsend("bench", "--compare")
    assert run.returncode == 2, run.output
    # click 8.1 writes "No such option: --compare", 8.2 "No such option '--compare'".
    assert re.search(r"No such option:? '?--compare", run.stderr), run.stderr
