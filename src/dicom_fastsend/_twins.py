"""Choose between a compiled module and its pure-Python twin (``<name>_py``).

The compiled module is used unless FASTSEND_PURE_PYTHON=1 asks for the
reference, as msgpack does with MSGPACK_PUREPYTHON. A missing extension (an
unbuilt source checkout) falls back to pure Python with a warning, because
sending still works, only slower. The twin is imported only when chosen:
importing one costs a run milliseconds.
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType
from typing import Final, Literal

PURE_PYTHON_ENV: Final = "FASTSEND_PURE_PYTHON"


def select(name: str) -> tuple[ModuleType, Literal["cython", "python"]]:
    """``dicom_fastsend.<name>`` (compiled), or ``dicom_fastsend.<name>_py``."""
    package = __name__.rpartition(".")[0]
    if os.environ.get(PURE_PYTHON_ENV) == "1":
        return importlib.import_module(f"{package}.{name}_py"), "python"
    try:
        return importlib.import_module(f"{package}.{name}"), "cython"
    except ImportError as error:
        warnings.warn(
            f"compiled module {package}.{name} is not built ({error}); using the"
            " pure-Python version, which is slower. Build it with `pip install -e .`"
            # Cython is a build requirement only: without build isolation it
            # must be installed by hand first.
            " (offline: `pip install cython`, then `pip install -e . --no-build-isolation`).",
            RuntimeWarning,
            stacklevel=3,
        )
        return importlib.import_module(f"{package}.{name}_py"), "python"
