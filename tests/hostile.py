"""A scripted, byte-level hostile Storage SCP on 127.0.0.1 for fault-injection tests.

It frames the Upper Layer stream itself (``socket`` + ``struct``, PS3.8 9.3)
so that it can misbehave at any byte: reject, abort or reset in the middle of
a data set, never answer, answer with malformed PDUs, or go away and come
back on the same port. The package's encoders are used only for the
well-formed PDUs and command sets it sends (A-ASSOCIATE-AC, C-STORE-RSP,
C-ECHO-RSP) and to decode the A-ASSOCIATE-RQ; P-DATA-TF is parsed here.

A :class:`Script` says what to do, per association number (0, 1, 2, ... in
order of arrival) and per C-STORE number (0, 1, 2, ... counted across the
whole server, in order of arrival of the C-STORE-RQ command sets)::

    script = Script(
        associations={0: Reject(result=2, source=3, reason=1)},  # first one: transient
        stores={2: AbortMidDataset(after_bytes=2000)},          # third C-STORE
    )
    with HostileSCP(script) as scp:
        ...  # run the sender against scp.port
        scp.wait_idle()
        scp.association_records(), scp.store_records()

Store actions: Respond (any status), AbortMidDataset, ResetMidDataset,
NoResponse, Malformed (unknown PDU type, huge length, truncated, garbage, bad
PDV, bad command set) and Trickle (a response that never completes, one byte
at a time). ``scp.restart(after_stores=k, down_for=s)`` takes the SCP down
after its k-th C-STORE-RSP and listens on the same port again s seconds later.

Every socket operation is bounded: reads poll in short slices, give up after
``idle_timeout`` seconds of silence, and ``stop()`` closes everything.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

from dicom_fastsend.protocol.dimse import (
    TAG_AFFECTED_SOP_CLASS_UID,
    TAG_AFFECTED_SOP_INSTANCE_UID,
    TAG_MESSAGE_ID,
    Command,
    CommandField,
    c_echo_rsp,
    c_store_rsp,
)
from dicom_fastsend.protocol.pdu import (
    AAssociateAC,
    AAssociateRQ,
    PresentationContextAC,
    PresentationContextResult,
    UserInformation,
    decode_pdu,
    encode,
)
from waiting import wait_until

LOOPBACK = "127.0.0.1"
POLL = 0.05  # seconds per blocking slice: how fast stop() and restarts are noticed
DEFAULT_IDLE_TIMEOUT = 20.0  # a connection silent this long is dropped

# PDU types (PS3.8 9.3.1, Table 9-11 and its siblings)
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

_HEADER = struct.Struct(">BBI")  # PDU-type, reserved, PDU-length (PS3.8 9.3.1)
_PDV_HEADER = struct.Struct(">IBB")  # item-length, context ID, control header (PS3.8 9.3.5.1)


# --------------------------------------------------------------------------
# What to do with an association (keyed by association number)


@dataclass(frozen=True)
class Accept:
    """Accept every proposed presentation context with its first transfer syntax.

    ``max_pdu`` is the Maximum Length we announce (PS3.8 D.1): the sender must
    cut data sets into P-DATA-TF PDUs no longer than this, which sets how
    finely a mid-data-set fault can be placed.
    """

    max_pdu: int = 4096
    # Asynchronous Operations Window to grant when one is proposed (PS3.7
    # D.3.3.3): requests are still answered one by one, in order.
    window: int | None = None


@dataclass(frozen=True)
class Reject:
    """A-ASSOCIATE-RJ (PS3.8 9.3.4).

    result: 1 rejected-permanent, 2 rejected-transient.
    source: 1 service-user, 2 service-provider (ACSE), 3 service-provider (presentation).
    reason: depends on the source; e.g. source 1 reason 7 called-AE-title-not-recognized,
    source 3 reason 1 temporary-congestion.
    """

    result: int = 1
    source: int = 1
    reason: int = 1


AssociationAction = Accept | Reject


# --------------------------------------------------------------------------
# What to do with a C-STORE (keyed by C-STORE number across the server)


@dataclass(frozen=True)
class Respond:
    """Read the whole data set, then answer C-STORE-RSP with ``status`` (PS3.7 9.3.1.2)."""

    status: int = 0x0000
    error_comment: str = ""


@dataclass(frozen=True)
class AbortMidDataset:
    """A-ABORT (source service-user, PS3.8 9.3.8) once ``after_bytes`` data set bytes arrived.

    The trigger is checked after each PDV, so it fires at the first PDV
    boundary at or past ``after_bytes``; the record says how many bytes had
    arrived and whether the data set was still incomplete.
    """

    after_bytes: int = 2000


@dataclass(frozen=True)
class ResetMidDataset:
    """Like AbortMidDataset, but close with SO_LINGER 0: the kernel sends a TCP RST."""

    after_bytes: int = 2000


@dataclass(frozen=True)
class NoResponse:
    """Read the whole data set and everything after it, but never send the C-STORE-RSP."""


MalformedKind = Literal[
    "unknown-pdu-type", "huge-length", "truncated", "garbage", "bad-pdv", "bad-command"
]


@dataclass(frozen=True)
class Malformed:
    """Instead of the C-STORE-RSP, send something that is not a valid PDU.

    - ``unknown-pdu-type``: a PDU of type 0x09, which PS3.8 9.3.1 does not define;
    - ``huge-length``: a P-DATA-TF header whose PDU-length is 0x7FFFFFFF, far
      beyond the Maximum Length the sender announced (PS3.8 D.1);
    - ``truncated``: the first half of the real C-STORE-RSP PDU, then close;
    - ``garbage``: an HTTP error page, as from a web server on the DICOM port;
    - ``bad-pdv``: a P-DATA-TF whose PDV item-length runs past the PDU (PS3.8 9.3.5.1);
    - ``bad-command``: a well-framed PDV whose command set is not Implicit VR
      LE elements (PS3.7 6.3.1).

    Except for ``truncated``, the connection stays open afterwards: the sender
    is expected to A-ABORT (PS3.8 Table 9-10, Evt19 -> AA-8) and close.
    """

    kind: MalformedKind


@dataclass(frozen=True)
class Trickle:
    """Instead of the C-STORE-RSP, start a P-DATA-TF PDU that announces ``length`` bytes
    (well within any Maximum Length) and send its body one byte every ``interval``
    seconds, never finishing it: bytes keep arriving, yet no response ever completes.
    """

    interval: float = 0.5
    length: int = 4000


StoreAction = Respond | AbortMidDataset | ResetMidDataset | NoResponse | Malformed | Trickle


@dataclass(frozen=True)
class Restart:
    """After the ``after_stores``-th C-STORE-RSP: close the listening socket and every
    connection, as if the SCP process died, and listen on the same port again
    ``down_for`` seconds later. With ``down_for=0`` the new listener is up
    before the connections are dropped, so the sender's next connection
    attempt finds it.
    """

    after_stores: int
    down_for: float


@dataclass
class Script:
    associations: Mapping[int, AssociationAction] = field(default_factory=dict)
    stores: Mapping[int, StoreAction] = field(default_factory=dict)
    default_association: AssociationAction = field(default_factory=Accept)
    default_store: StoreAction = field(default_factory=Respond)
    restart: Restart | None = None

    def association(self, number: int) -> AssociationAction:
        return self.associations.get(number, self.default_association)

    def store(self, number: int) -> StoreAction:
        return self.stores.get(number, self.default_store)


# --------------------------------------------------------------------------
# What happened


@dataclass
class AssociationRecord:
    number: int
    calling_ae_title: str = ""
    called_ae_title: str = ""
    accepted: bool = False
    rejected: tuple[int, int, int] | None = None  # (result, source, reason) we sent
    released: bool = False  # A-RELEASE-RQ received and A-RELEASE-RP sent
    aborted_by_peer: tuple[int, int] | None = None  # (source, reason) of the A-ABORT received
    aborted_by_us: bool = False
    reset_by_us: bool = False
    dropped_by_restart: bool = False
    closed_by_peer: bool = False  # the connection ended without A-RELEASE or A-ABORT
    problem: str = ""  # anything unexpected (bad PDU from the sender, idle timeout)
    stores: list[int] = field(default_factory=list)  # C-STORE numbers seen on it


@dataclass
class StoreRecord:
    number: int
    association: int
    sop_class_uid: str
    sop_instance_uid: str
    message_id: int
    action: str
    dataset_bytes: int = 0
    complete: bool = False  # the last data set fragment arrived
    status: int | None = None  # the status we answered, if we answered
    fault: str = ""  # what we did instead of answering
    mid_dataset: bool = False  # the fault hit before the last data set fragment


class _Stopped(Exception):
    """The server is stopping, or this connection was dropped by a restart."""


class _Closed(Exception):
    """The peer closed the connection (``partial`` bytes of a PDU had arrived)."""

    def __init__(self, partial: int) -> None:
        super().__init__(partial)
        self.partial = partial


class _Idle(Exception):
    """Nothing arrived for ``idle_timeout`` seconds."""


# --------------------------------------------------------------------------
# The server


class HostileSCP:
    """A scripted Storage SCP on 127.0.0.1; ``port`` stays the same across restarts."""

    def __init__(
        self,
        script: Script | None = None,
        *,
        ae_title: str = "HOSTILE",
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self.script = script or Script()
        self.ae_title = ae_title
        self.idle_timeout = idle_timeout
        self._lock = threading.Lock()  # records and counters
        self._listener_lock = threading.Lock()  # the listening socket
        self._stopping = threading.Event()
        self._listener: socket.socket | None = self._bind(0)
        self.port: int = self._listener.getsockname()[1]
        self._reopen_at: float | None = None
        self._accept_thread: threading.Thread | None = None
        # association number -> (socket, its thread, its record)
        self._connections: dict[int, tuple[socket.socket, threading.Thread, AssociationRecord]] = {}
        self._associations: list[AssociationRecord] = []
        self._stores: list[StoreRecord] = []
        self._answered = 0
        self.restarts: list[tuple[float, float]] = []  # (went down, came back) monotonic

    # ------------------------------------------------------------ lifecycle

    def _bind(self, port: int) -> socket.socket:
        # SO_REUSEADDR (create_server sets it on POSIX) lets the restarted
        # listener take the port despite connections in TIME_WAIT.
        deadline = time.monotonic() + 5.0
        while True:
            try:
                return socket.create_server((LOOPBACK, port), backlog=16)
            except OSError:
                if port == 0 or time.monotonic() > deadline:
                    raise
                time.sleep(POLL)

    def start(self) -> HostileSCP:
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"hostile-accept-{self.port}", daemon=True
        )
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every connection; join the threads (bounded)."""
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
        with self._listener_lock:
            if self._listener is not None:
                _shutdown(self._listener)
                self._listener.close()
                self._listener = None
        with self._lock:
            connections = list(self._connections.values())
        for sock, _, _ in connections:
            _shutdown(sock)
        for _, thread, _ in connections:
            thread.join(timeout=5)

    def __enter__(self) -> HostileSCP:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def restart(self, after_stores: int, down_for: float) -> None:
        """Schedule an SCP restart after the ``after_stores``-th C-STORE-RSP."""
        self.script.restart = Restart(after_stores, down_for)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no connection is being served (the records are then final)."""

        def idle() -> bool:
            with self._lock:
                return not self._connections

        wait_until(idle, timeout, "the hostile SCP's connections to close")

    # ------------------------------------------------------------ records

    def association_records(self) -> list[AssociationRecord]:
        with self._lock:
            return list(self._associations)

    def store_records(self) -> list[StoreRecord]:
        with self._lock:
            return list(self._stores)

    def stored_uids(self) -> list[str]:
        """SOP Instance UIDs of the C-STOREs answered with success or warning (PS3.7 C)."""
        return [
            r.sop_instance_uid
            for r in self.store_records()
            if r.status is not None and _stored_status(r.status)
        ]

    # ------------------------------------------------------------ accepting

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            with self._listener_lock:
                listener = self._listener
                if listener is None and self._reopen_at is not None:
                    if time.monotonic() >= self._reopen_at:
                        self._listener = self._bind(self.port)
                        self._reopen_at = None
                        self._mark_back_up()
            if listener is None:
                time.sleep(POLL)
                continue
            # Wait without the lock: a restart must never queue behind an
            # accept (a Python lock is not fair, so a loop that re-takes it
            # at once could keep _go_down waiting for seconds).
            try:
                ready, _, _ = select.select([listener], [], [], POLL)
            except (OSError, ValueError):  # closed by a restart meanwhile
                continue
            if not ready:
                continue
            with self._listener_lock:
                if self._listener is not listener:
                    continue  # its backlog went with the restart, as with a killed process
                listener.setblocking(False)
                try:
                    connection, _ = listener.accept()
                except OSError:
                    continue
                # Registered under the listener lock, so that a restart sees
                # every connection of the old listener and none of the new one.
                thread = self._register(connection)
            thread.start()

    def _register(self, connection: socket.socket) -> threading.Thread:
        with self._lock:
            number = len(self._associations)
            record = AssociationRecord(number)
            self._associations.append(record)
            thread = threading.Thread(
                target=self._serve,
                args=(connection, record),
                name=f"hostile-association-{number}",
                daemon=True,
            )
            self._connections[number] = (connection, thread, record)
        return thread

    def _mark_back_up(self) -> None:
        with self._lock:
            if self.restarts:
                self.restarts[-1] = (self.restarts[-1][0], time.monotonic())

    def _go_down(self, current: socket.socket) -> None:
        """The scripted restart: listener and connections go, as with a killed process."""
        restart = self.script.restart
        assert restart is not None
        with self._listener_lock:
            if self._listener is not None:
                # shutdown first: the accept loop may be in select() on it,
                # which keeps a closed socket listening (and completing
                # handshakes) until select returns; shutdown stops it at once.
                _shutdown(self._listener)
                self._listener.close()
                self._listener = None
            went_down = time.monotonic()
            with self._lock:
                self.restarts.append((went_down, went_down))
                # Taken before the new listener exists: these are exactly the
                # connections of the process that "died".
                others = [(s, r) for s, _, r in self._connections.values() if s is not current]
            if restart.down_for <= 0:
                self._listener = self._bind(self.port)
                self._mark_back_up()
            else:
                self._reopen_at = went_down + restart.down_for
        for sock, record in others:
            record.dropped_by_restart = True
            _shutdown(sock)  # their threads see EOF and close their own sockets

    # ------------------------------------------------------------ one connection

    def _serve(self, sock: socket.socket, record: AssociationRecord) -> None:
        connection = _Connection(self, sock)
        try:
            self._association(connection, record)
        except _Stopped:
            if not self._stopping.is_set():
                record.dropped_by_restart = True
        except _Closed as exc:
            record.closed_by_peer = not record.dropped_by_restart
            if exc.partial:
                record.problem = f"connection closed {exc.partial} bytes into a PDU"
        except _Idle:
            record.problem = f"nothing received for {self.idle_timeout} s"
        except OSError as exc:
            record.problem = f"socket error: {exc}"
        except Exception as exc:  # what the sender sent made no sense: say so, end quietly
            record.problem = f"{type(exc).__name__}: {exc}"
        finally:
            if not record.reset_by_us:
                _shutdown(sock)
                sock.close()
            with self._lock:
                self._connections.pop(record.number, None)

    def _association(self, connection: _Connection, record: AssociationRecord) -> None:
        pdu_type, body = connection.read_pdu()
        if pdu_type != A_ASSOCIATE_RQ:
            record.problem = f"first PDU is type 0x{pdu_type:02x}, not A-ASSOCIATE-RQ"
            return
        request = decode_pdu(pdu_type, memoryview(body))
        assert isinstance(request, AAssociateRQ)
        record.calling_ae_title = request.calling_ae_title
        record.called_ae_title = request.called_ae_title
        action = self.script.association(record.number)
        if isinstance(action, Reject):
            # PS3.8 9.3.4: reserved, result, source, reason/diag.
            connection.send(
                _pdu(A_ASSOCIATE_RJ, bytes((0, action.result, action.source, action.reason)))
            )
            record.rejected = (action.result, action.source, action.reason)
            # AE-8: the acceptor then waits (ARTIM) for the requestor to close.
            connection.drain()
            return
        connection.send(encode(self._accept(request, action)))
        record.accepted = True
        peer_maximum = request.user_information.maximum_length
        self._data_transfer(connection, record, peer_maximum)

    def _accept(self, request: AAssociateRQ, action: Accept) -> AAssociateAC:
        return AAssociateAC(
            called_ae_title=request.called_ae_title,
            calling_ae_title=request.calling_ae_title,
            presentation_contexts=tuple(
                PresentationContextAC(
                    context.presentation_context_id,
                    PresentationContextResult.ACCEPTANCE,
                    context.transfer_syntaxes[0],
                )
                for context in request.presentation_contexts
            ),
            user_information=UserInformation(
                maximum_length=action.max_pdu,
                implementation_class_uid="1.2.826.0.1.3680043.10.1083.999",
                implementation_version_name="HOSTILE_SCP",
                asynchronous_operations_window=(
                    (1, action.window)
                    if action.window and request.user_information.asynchronous_operations_window
                    else None
                ),
            ),
        )

    def _data_transfer(
        self, connection: _Connection, record: AssociationRecord, peer_maximum: int
    ) -> None:
        command_fragments: list[bytes] = []
        current: tuple[StoreRecord, StoreAction, Command, int] | None = None
        while True:
            pdu_type, body = connection.read_pdu()
            if pdu_type == A_RELEASE_RQ:
                connection.send(_pdu(A_RELEASE_RP, bytes(4)))  # PS3.8 9.3.7
                record.released = True
                connection.drain()
                return
            if pdu_type == A_ABORT:
                record.aborted_by_peer = (body[2], body[3]) if len(body) == 4 else (-1, -1)
                return
            if pdu_type != P_DATA_TF:
                record.problem = f"unexpected PDU type 0x{pdu_type:02x} during data transfer"
                return
            for context_id, control, data in _pdvs(body):
                is_command, is_last = bool(control & 1), bool(control & 2)
                if is_command:
                    command_fragments.append(data)
                    if not is_last:
                        continue
                    command = Command.decode(b"".join(command_fragments))
                    command_fragments.clear()
                    if command.command_field == CommandField.C_ECHO_RQ:
                        rsp = c_echo_rsp(command).encode()
                        connection.send(_pdata(context_id, rsp, peer_maximum))
                        continue
                    if command.command_field != CommandField.C_STORE_RQ:
                        record.problem = f"unsupported command 0x{command.command_field or 0:04x}"
                        return
                    store, action = self._new_store(record, command)
                    current = (store, action, command, context_id)
                    continue
                if current is None:
                    record.problem = "data set fragment before any C-STORE-RQ"
                    return
                store, action, command, context_id = current
                store.dataset_bytes += len(data)
                store.complete = is_last
                if isinstance(action, AbortMidDataset | ResetMidDataset):
                    if store.dataset_bytes >= action.after_bytes or is_last:
                        store.mid_dataset = not is_last
                        self._fault_mid_dataset(connection, record, store, action)
                        return
                    continue
                if not is_last:
                    continue
                current = None
                if not self._finish_store(
                    connection, record, store, action, command, context_id, peer_maximum
                ):
                    return

    def _new_store(
        self, record: AssociationRecord, command: Command
    ) -> tuple[StoreRecord, StoreAction]:
        with self._lock:
            number = len(self._stores)
            action = self.script.store(number)
            store = StoreRecord(
                number=number,
                association=record.number,
                sop_class_uid=command.get_str(TAG_AFFECTED_SOP_CLASS_UID),
                sop_instance_uid=command.get_str(TAG_AFFECTED_SOP_INSTANCE_UID),
                message_id=command.get_int(TAG_MESSAGE_ID, 0) or 0,
                action=type(action).__name__,
            )
            self._stores.append(store)
            record.stores.append(number)
        return store, action

    def _fault_mid_dataset(
        self,
        connection: _Connection,
        record: AssociationRecord,
        store: StoreRecord,
        action: AbortMidDataset | ResetMidDataset,
    ) -> None:
        if isinstance(action, AbortMidDataset):
            # A-ABORT, source 0 = DICOM UL service-user (PS3.8 9.3.8); then, as
            # AA-1 says, wait for the requestor to close, reading what it still
            # sends so that our close is a FIN and not a RST.
            connection.send(_pdu(A_ABORT, bytes((0, 0, 0, 0))))
            store.fault = "A-ABORT"
            record.aborted_by_us = True
            connection.drain()
            return
        # SO_LINGER on with a zero timeout: close() discards the send queue and
        # sends RST (tcp(7)), i.e. the connection is reset, not released.
        connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.sock.close()
        store.fault = "reset"
        record.reset_by_us = True

    def _finish_store(
        self,
        connection: _Connection,
        record: AssociationRecord,
        store: StoreRecord,
        action: StoreAction,
        command: Command,
        context_id: int,
        peer_maximum: int,
    ) -> bool:
        """Answer (or not) a complete C-STORE; False when the association is over."""
        response = _pdata(
            context_id,
            c_store_rsp(
                command,
                action.status if isinstance(action, Respond) else 0x0000,
                action.error_comment if isinstance(action, Respond) else "",
            ).encode(),
            peer_maximum,
        )
        if isinstance(action, Respond):
            connection.send(response)
            store.status = action.status
            with self._lock:
                self._answered += 1
                answered = self._answered
            restart = self.script.restart
            if restart is not None and answered == restart.after_stores:
                self._go_down(connection.sock)
                record.dropped_by_restart = True
                return False
            return True
        if isinstance(action, NoResponse):
            store.fault = "no response"
            return True  # keep reading: the sender's DIMSE timeout must end it
        if isinstance(action, Trickle):
            store.fault = "trickle"
            connection.trickle(_HEADER.pack(P_DATA_TF, 0, action.length), action.interval)
            return False
        assert isinstance(action, Malformed)
        store.fault = action.kind
        if action.kind == "truncated":
            connection.send(response[: len(response) // 2])
            return False  # _serve closes: a FIN in the middle of a PDU
        connection.send(_MALFORMED[action.kind])
        return True


# --------------------------------------------------------------------------
# Bytes


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return _HEADER.pack(pdu_type, 0, len(body)) + body


def _pdata(context_id: int, command: bytes, peer_maximum: int) -> bytes:
    """A command set as P-DATA-TF PDUs no longer than the peer's maximum (PS3.8 D.1)."""
    room = (peer_maximum - 6) if peer_maximum else len(command)
    room = max(room, 1)
    pdus = []
    for start in range(0, len(command), room):
        fragment = command[start : start + room]
        last = start + room >= len(command)
        control = 0x01 | (0x02 if last else 0x00)  # command, last fragment (PS3.8 E.2)
        pdus.append(
            _pdu(P_DATA_TF, _PDV_HEADER.pack(len(fragment) + 2, context_id, control) + fragment)
        )
    return b"".join(pdus)


def _pdvs(body: bytes) -> list[tuple[int, int, bytes]]:
    """(context ID, control header, fragment) of each PDV item (PS3.8 9.3.5.1)."""
    items = []
    position = 0
    while position < len(body):
        length, context_id, control = _PDV_HEADER.unpack_from(body, position)
        items.append((context_id, control, body[position + 6 : position + 4 + length]))
        position += 4 + length
    return items


_MALFORMED: dict[str, bytes] = {
    # PS3.8 9.3.1 defines PDU types 01H-07H only.
    "unknown-pdu-type": _pdu(0x09, bytes(4)),
    # A P-DATA-TF header announcing 2 GiB, and a few bytes of it.
    "huge-length": _HEADER.pack(P_DATA_TF, 0, 0x7FFFFFFF) + bytes(16),
    "garbage": b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    # One PDV item whose item-length (1000) runs past the 12-byte PDU.
    "bad-pdv": _pdu(P_DATA_TF, _PDV_HEADER.pack(1000, 1, 0x03) + b"\x00" * 6),
    # A command PDV holding bytes that are no Implicit VR LE element stream.
    "bad-command": _pdu(P_DATA_TF, _PDV_HEADER.pack(2 + 7, 1, 0x03) + b"\xff" * 7),
}


def _stored_status(status: int) -> bool:
    # Success, or a warning (PS3.7 C.4: 0001, Bxxx; 0107, 0116): the instance was stored.
    return status in (0x0000, 0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Connection:
    """Bounded reads and writes on one accepted socket."""

    def __init__(self, server: HostileSCP, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        sock.settimeout(POLL)

    def _recv(self, size: int) -> bytes:
        """Up to ``size`` bytes; b'' at EOF. Raises _Stopped / _Idle."""
        deadline = time.monotonic() + self.server.idle_timeout
        while True:
            if self.server._stopping.is_set():
                raise _Stopped()
            try:
                return self.sock.recv(size)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise _Idle() from None
            except OSError as exc:
                if self.sock.fileno() == -1:
                    raise _Stopped() from exc
                raise

    def _exactly(self, size: int, already: int = 0) -> bytes:
        chunks: list[bytes] = []
        got = 0
        while got < size:
            chunk = self._recv(min(size - got, 1 << 20))
            if not chunk:
                raise _Closed(already + got)
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def read_pdu(self) -> tuple[int, bytes]:
        """One PDU's (type, variable field). Raises _Closed at EOF."""
        header = self._exactly(_HEADER.size)
        pdu_type, _, length = _HEADER.unpack(header)
        if length > 64 << 20:
            raise _Closed(len(header))  # nothing the sender should ever send
        return pdu_type, self._exactly(length, already=len(header))

    def send(self, data: bytes) -> None:
        self.sock.settimeout(5.0)  # a peer that does not read cannot block us forever
        try:
            self.sock.sendall(data)
        finally:
            self.sock.settimeout(POLL)

    def trickle(self, header: bytes, interval: float) -> None:
        """Send ``header``, then a zero byte every ``interval`` s until the peer goes away."""
        self.send(header)
        deadline = time.monotonic() + self.server.idle_timeout
        while time.monotonic() < deadline and not self.server._stopping.is_set():
            time.sleep(interval)
            try:
                self.send(b"\x00")
            except OSError:
                return

    def drain(self, limit: float = 5.0) -> None:
        """Read and discard until the peer closes (or ``limit`` seconds pass)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                if not self._recv(1 << 16):
                    return
            except (_Idle, OSError):
                return
