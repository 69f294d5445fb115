"""Choose the hot-path implementation: compiled ``_pdu`` or pure-Python ``_pdu_py``.

``from dicom_fastsend.protocol.hotpath import impl`` (or the functions re-exported here)
gives the compiled module unless FASTSEND_PURE_PYTHON=1 asks for the reference,
as msgpack does with MSGPACK_PUREPYTHON. A missing extension (an unbuilt source
checkout) falls back to pure Python with a warning, because sending still works,
only slower.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from .. import _pdu_py

PURE_PYTHON_ENV: Final = "FASTSEND_PURE_PYTHON"


def _select() -> tuple[ModuleType, Literal["cython", "python"]]:
    # The twin is imported only when chosen: it costs every run ~4 ms to import.
    if os.environ.get(PURE_PYTHON_ENV) == "1":
        from .. import _pdu_py

        return _pdu_py, "python"
    try:
        from .. import _pdu
    except ImportError as error:
        warnings.warn(
            f"compiled hot path dicom_fastsend._pdu is not built ({error}); using the"
            " pure-Python version, which is slower. Build it with `pip install -e .`"
            # Cython is a build requirement only: without build isolation it
            # must be installed by hand first.
            " (offline: `pip install cython`, then `pip install -e . --no-build-isolation`).",
            RuntimeWarning,
            stacklevel=2,
        )
        from .. import _pdu_py

        return _pdu_py, "python"
    return _pdu, "cython"


_selected, IMPLEMENTATION = _select()

if TYPE_CHECKING:
    # Both modules have one API (_pdu.pyi mirrors _pdu_py); type against the reference.
    impl = _pdu_py
else:
    impl = _selected

PDATA_HEADER_LENGTH: Final = impl.PDATA_HEADER_LENGTH
MAX_UNLIMITED_PDU: Final = impl.MAX_UNLIMITED_PDU
MAX_NESTING_DEPTH: Final = impl.MAX_NESTING_DEPTH
pack_pdata_header = impl.pack_pdata_header
fragment_pdata = impl.fragment_pdata
fragment_pdata_prefixed = impl.fragment_pdata_prefixed
parse_pdvs = impl.parse_pdvs
scan_elements = impl.scan_elements
c_store_rq_pdus = impl.c_store_rq_pdus
parse_command_pdus = impl.parse_command_pdus

__all__ = [
    "IMPLEMENTATION",
    "MAX_NESTING_DEPTH",
    "MAX_UNLIMITED_PDU",
    "PDATA_HEADER_LENGTH",
    "PURE_PYTHON_ENV",
    "c_store_rq_pdus",
    "fragment_pdata",
    "fragment_pdata_prefixed",
    "impl",
    "pack_pdata_header",
    "parse_command_pdus",
    "parse_pdvs",
    "scan_elements",
]
