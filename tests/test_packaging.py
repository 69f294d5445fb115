"""The installed package is the sender: Cython only builds it, the bench harness stays in bench/.

Cython compiles `_pdu.pyx` when the wheel is built ([build-system] requires);
a wheel that also required it at run time would pull a compiler toolchain's
worth of package onto every sending host. The comparison harness (finding
DCMTK and Orthanc, rewriting README.md) runs from a checkout as
`python bench/run.py`; `fastsend bench` is the quick self-check only.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import dicom_fastsend

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
