"""A receiving Storage SCP for demos, tests and benchmarks (`fastsend sink`).

It accepts every abstract syntax proposed (storage and verification) with the
first proposed transfer syntax it supports, and either discards the data sets
or writes them as Part 10 files. One thread per association.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .engine.scu import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from .io.transport import Listener, Transport, TransportError
from .protocol.association import (
    Aborted,
    Association,
    AssociationRequested,
    DataReceived,
    ReleaseRequested,
    Role,
    State,
)
from .protocol.dimse import (
    TAG_AFFECTED_SOP_CLASS_UID,
    TAG_AFFECTED_SOP_INSTANCE_UID,
    CommandField,
    DIMSEError,
    Message,
    MessageAssembler,
    c_echo_rsp,
    c_store_rsp,
)
from .protocol.hotpath import fragment_pdata
from .protocol.pdu import (
    AAssociateAC,
    AAssociateRQ,
    PresentationContextAC,
    PresentationContextResult,
    UserInformation,
)

# PS3.8 9.1.5: how long an acceptor waits for the A-ASSOCIATE-RQ (ARTIM).
ARTIM_TIMEOUT = 30.0
STATUS_PROCESSING_FAILURE = 0x0110
# Asynchronous Operations Window (PS3.7 D.3.3.3): how many C-STOREs a sender
# may have outstanding with us. We answer them in order as they arrive.
MAX_OPERATIONS_PERFORMED = 64


@dataclass(slots=True)
class SinkStats:
    associations: int = 0
    instances: int = 0
    bytes: int = 0
    received_uids: list[str] = field(default_factory=list)
    # Most C-STORE-RQs completed by one read: above 1 only when the sender
    # pipelines them (--max-ops).
    max_pipelined: int = 0


def _meta_element(group_element: int, vr: bytes, value: bytes) -> bytes:
    # File Meta elements are Explicit VR Little Endian (PS3.10 7.1).
    tag = struct.pack("<HH", group_element >> 16, group_element & 0xFFFF)
    if vr == b"OB":
        return tag + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return tag + vr + struct.pack("<H", len(value)) + value


def _ui(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, 'DICM' and the File Meta group for a received data set (PS3.10 7.1)."""
    elements = b"".join(
        (
            _meta_element(0x00020001, b"OB", b"\x00\x01"),
            _meta_element(0x00020002, b"UI", _ui(sop_class_uid)),
            _meta_element(0x00020003, b"UI", _ui(sop_instance_uid)),
            _meta_element(0x00020010, b"UI", _ui(transfer_syntax)),
            _meta_element(0x00020012, b"UI", _ui(IMPLEMENTATION_CLASS_UID)),
            _meta_element(0x00020013, b"SH", IMPLEMENTATION_VERSION_NAME.encode().ljust(16)[:16]),
        )
    )
    group_length = _meta_element(0x00020000, b"UL", struct.pack("<I", len(elements)))
    return bytes(128) + b"DICM" + group_length + elements


class Sink:
    """A Storage SCP on ``host:port`` (port 0 picks a free one)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        ae_title: str = "FASTSEND_SINK",
        output_dir: Path | None = None,
        maximum_length: int = 131072,
        transfer_syntaxes: Iterable[str] | None = None,
        response_delay: float = 0.0,
    ) -> None:
        self.ae_title = ae_title
        self.response_delay = response_delay  # seconds before each C-STORE-RSP (slow storage)
        self.output_dir = output_dir
        self.maximum_length = maximum_length
        self.transfer_syntaxes = set(transfer_syntaxes) if transfer_syntaxes else None
        self.stats = SinkStats()
        self._lock = threading.Lock()
        self._listener = Listener(host, port)
        self.port = self._listener.port
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    def serve_forever(self) -> None:
        while not self._stopping.is_set():
            transport = self._listener.accept(timeout=0.2)
            if transport is not None:
                threading.Thread(target=self._serve, args=(transport,), daemon=True).start()

    def start(self) -> Sink:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        self._listener.close()

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ one association

    def _answer(self, request: AAssociateRQ) -> AAssociateAC:
        answers = []
        for context in request.presentation_contexts:
            usable = [
                ts
                for ts in context.transfer_syntaxes
                if self.transfer_syntaxes is None or ts in self.transfer_syntaxes
            ]
            if usable:
                answers.append(
                    PresentationContextAC(
                        context.presentation_context_id,
                        PresentationContextResult.ACCEPTANCE,
                        usable[0],
                    )
                )
            else:
                answers.append(
                    PresentationContextAC(
                        context.presentation_context_id,
                        PresentationContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED,
                        context.transfer_syntaxes[0] if context.transfer_syntaxes else "",
                    )
                )
        window = None
        proposed = request.user_information.asynchronous_operations_window
        if proposed is not None:
            # Answered from our side: we invoke nothing, we perform up to N.
            invoked = proposed[0] or MAX_OPERATIONS_PERFORMED
            window = (1, min(invoked, MAX_OPERATIONS_PERFORMED))
        return AAssociateAC(
            called_ae_title=request.called_ae_title,
            calling_ae_title=request.calling_ae_title,
            presentation_contexts=tuple(answers),
            user_information=UserInformation(
                maximum_length=self.maximum_length,
                implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version_name=IMPLEMENTATION_VERSION_NAME,
                asynchronous_operations_window=window,
            ),
        )

    def _serve(self, transport: Transport) -> None:
        association = Association(Role.ACCEPTOR, self.maximum_length)
        association.connection_accepted()
        assembler = MessageAssembler(keep_dataset=self.output_dir is not None)
        accepted: dict[int, str] = {}
        peer_maximum = 0
        try:
            while association.state is not State.STA1:
                timeout = None if association.established else ARTIM_TIMEOUT
                data = transport.receive(timeout)
                events = association.receive_data(data) if data else association.connection_closed()
                completed = 0  # requests completed by this one read
                for event in events:
                    if isinstance(event, AssociationRequested):
                        answer = self._answer(event.request)
                        accepted = {
                            c.presentation_context_id: c.transfer_syntax
                            for c in answer.presentation_contexts
                            if c.accepted
                        }
                        peer_maximum = event.request.user_information.maximum_length
                        association.accept(answer)
                        with self._lock:
                            self.stats.associations += 1
                    elif isinstance(event, DataReceived):
                        before = assembler.dataset_bytes
                        messages = assembler.feed(event.pdata.pdvs)
                        completed += len(messages)
                        for message in messages:
                            self._handle(message, accepted, association, transport, peer_maximum)
                        with self._lock:
                            self.stats.bytes += assembler.dataset_bytes - before
                    elif isinstance(event, ReleaseRequested):
                        association.release_response()
                    elif isinstance(event, Aborted):
                        break
                with self._lock:
                    self.stats.max_pipelined = max(self.stats.max_pipelined, completed)
                pending = association.data_to_send()
                if pending:
                    transport.send(pending)
                if association.transport_should_close or association.state is State.STA13:
                    break
        except (TransportError, DIMSEError):
            association.abort()
        finally:
            transport.close()

    def _handle(
        self,
        message: Message,
        accepted: dict[int, str],
        association: Association,
        transport: Transport,
        peer_maximum: int,
    ) -> None:
        command = message.command
        if command.command_field == CommandField.C_ECHO_RQ:
            response = c_echo_rsp(command)
        elif command.command_field == CommandField.C_STORE_RQ:
            status = 0x0000
            if self.output_dir is not None:
                try:
                    self._write(message, accepted[message.presentation_context_id])
                except OSError:
                    status = STATUS_PROCESSING_FAILURE
            with self._lock:
                self.stats.instances += 1
                self.stats.received_uids.append(command.get_str(TAG_AFFECTED_SOP_INSTANCE_UID))
            if self.response_delay:
                time.sleep(self.response_delay)
            response = c_store_rsp(command, status)
        else:
            raise DIMSEError(f"unsupported command 0x{command.command_field or 0:04x}")
        buffers = fragment_pdata(
            response.encode(), message.presentation_context_id, True, peer_maximum
        )
        transport.send_buffers(association.send_pdata(list(buffers)))

    def _write(self, message: Message, transfer_syntax: str) -> None:
        assert self.output_dir is not None
        command = message.command
        sop_instance_uid = command.get_str(TAG_AFFECTED_SOP_INSTANCE_UID)
        header = part10_header(
            command.get_str(TAG_AFFECTED_SOP_CLASS_UID), sop_instance_uid, transfer_syntax
        )
        path = self.output_dir / f"{sop_instance_uid}.dcm"
        temporary = path.with_suffix(".part")
        with open(temporary, "wb") as handle:
            handle.write(header)
            handle.writelines(message.dataset_fragments)
        os.replace(temporary, path)
