"""Typed face of the compiled hot path (_pdu.pyx); _pdu_py.py documents each function."""

from typing import Final

from typing_extensions import Buffer

PDATA_HEADER_LENGTH: Final[int]
MAX_UNLIMITED_PDU: Final[int]
MAX_NESTING_DEPTH: Final[int]

def pack_pdata_header(
    presentation_context_id: int, is_command: bool, is_last: bool, fragment_length: int
) -> bytes: ...
def fragment_pdata(
    data: Buffer, presentation_context_id: int, is_command: bool, max_pdu_length: int
) -> list[memoryview]: ...
def fragment_pdata_prefixed(
    prefix: Buffer,
    data: Buffer,
    presentation_context_id: int,
    is_command: bool,
    max_pdu_length: int,
) -> list[memoryview]: ...
def parse_pdvs(body: Buffer) -> list[tuple[int, int, int, int]]: ...
def scan_elements(
    buf: Buffer,
    offset: int,
    explicit_vr: bool,
    little_endian: bool,
    wanted: tuple[int, ...],
    stop_tag: int,
) -> tuple[dict[int, tuple[int, int]], int]: ...
