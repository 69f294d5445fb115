"""Typed face of the compiled hot path (_pdu.pyx); _pdu_py.py documents each function."""

from typing import Final, TypeAlias

from typing_extensions import Buffer

PDATA_HEADER_LENGTH: Final[int]
MAX_UNLIMITED_PDU: Final[int]
MAX_NESTING_DEPTH: Final[int]

# (presentation context ID, Command Field, Message ID Being Responded To, Status,
# Command Data Set Type, Error Comment, Offending Element); None: not in the command set.
CommandSummary: TypeAlias = tuple[
    int, int, int | None, int | None, int | None, str | None, tuple[int, ...] | None
]

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
def scan_values(
    buf: Buffer,
    offset: int,
    explicit_vr: bool,
    little_endian: bool,
    ui_tags: tuple[int, ...],
    text_tags: tuple[int, ...],
    stop_tag: int,
) -> tuple[tuple[str | None, ...], tuple[str, ...], int]: ...
def c_store_rq_pdus(
    presentation_context_id: int,
    message_id: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    priority: int,
    max_pdu_length: int,
) -> bytes | None: ...
def parse_command_pdus(data: Buffer, limit: int) -> list[CommandSummary] | None: ...
