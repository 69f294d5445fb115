"""Choose the hot-path implementation: compiled ``_pdu`` or pure-Python ``_pdu_py``.

``from dicom_fastsend.protocol.hotpath import impl`` (or the functions re-exported here)
gives the compiled module unless FASTSEND_PURE_PYTHON=1 asks for the reference
(see _twins.select).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .._twins import PURE_PYTHON_ENV, select

if TYPE_CHECKING:
    from .. import _pdu_py

_selected, IMPLEMENTATION = select("_pdu")

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
scan_values = impl.scan_values
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
    "scan_values",
]
