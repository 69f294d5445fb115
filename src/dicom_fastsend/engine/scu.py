"""One association as the requestor: open, C-ECHO, C-STORE from mapped files, release.

This is the thin driver between the sans-IO protocol objects
(``ul.association``, ``dimse``) and the socket (``transport``). It keeps one
operation in flight at a time.
"""

from __future__ import annotations

import mmap
import os
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING

import msgspec

from .. import __version__
from ..config import PeerConfig, UserCredentials
from ..errors import FastsendError
from ..io.header import FileInfo
from ..io.transport import Transport, TransportError, TransportTimeout
from ..protocol.association import (
    Aborted,
    Association,
    AssociationAccepted,
    AssociationRejected,
    DataReceived,
    Event,
    ReleaseConfirmed,
    ReleaseRequested,
    Role,
    State,
)
from ..protocol.contexts import AcceptedContexts, Selection
from ..protocol.dimse import (
    TAG_ERROR_COMMENT,
    TAG_MESSAGE_ID_BEING_RESPONDED_TO,
    TAG_OFFENDING_ELEMENT,
    TAG_STATUS,
    Command,
    CommandField,
    DIMSEError,
    Message,
    MessageAssembler,
    Priority,
    c_echo_rq,
    c_store_rq,
)
from ..protocol.hotpath import c_store_rq_pdus, fragment_pdata, fragment_pdata_prefixed
from ..protocol.pdu import (
    AAssociateRJ,
    AAssociateRQ,
    PresentationContextRQ,
    UserIdentity,
    UserIdentityType,
    UserInformation,
)
from ..protocol.uids import (
    CONVERTS_ON_THE_FLY,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLEMENTATION_CLASS_UID_ROOT,
    VERIFICATION_SOP_CLASS,
)

if TYPE_CHECKING:
    from .._pdu_py import CommandSummary
    from ..io.coerce import Change, Coerced, Coercion

IMPLEMENTATION_CLASS_UID = f"{IMPLEMENTATION_CLASS_UID_ROOT}.{__version__}"
IMPLEMENTATION_VERSION_NAME = f"FASTSEND_{__version__}"[:16]


class AssociationError(FastsendError):
    """The association could not be made or was lost; ``peer`` names it."""


class AssociationRejectedError(AssociationError):
    def __init__(self, message: str, reject: AAssociateRJ) -> None:
        super().__init__(message)
        self.reject = reject


class AssociationAbortedError(AssociationError):
    """The association ended abnormally (A-ABORT, A-P-ABORT, broken connection)."""


class DimseTimeoutError(AssociationAbortedError):
    """No DIMSE response in time; the association was aborted."""


class Response(msgspec.Struct, frozen=True):
    """The parts of a DIMSE response the sender reports."""

    status: int
    error_comment: str = ""
    offending_element: tuple[int, ...] = ()


def negotiated_window(proposed: int, answer: tuple[int, int] | None) -> int:
    """C-STOREs we may keep outstanding after Asynchronous Operations Window negotiation.

    PS3.7 D.3.3.3: the acceptor answers from its side, so its Maximum Number
    Operations Performed bounds what we invoke; 0 means unlimited (we keep our
    own bound); no answer means the default, one at a time.
    """
    if proposed <= 1 or answer is None:
        return 1
    performed = answer[1]
    return proposed if performed == 0 else max(1, min(proposed, performed))


def _user_identity(user: UserCredentials | None) -> UserIdentity | None:
    """The User Identity sub-item for our credentials (PS3.7 D.3.3.7.1).

    A positive response is requested but not required: an acceptor may
    verify silently, and PS3.7 lets it answer without the sub-item.
    """
    if user is None:
        return None
    if user.password is None:
        return UserIdentity(UserIdentityType.USERNAME, user.username.encode("utf-8"), b"", True)
    return UserIdentity(
        UserIdentityType.USERNAME_AND_PASSCODE,
        user.username.encode("utf-8"),
        user.password.encode("utf-8"),
        True,
    )


class StoreClient:
    """A requestor-side association to one peer."""

    def __init__(
        self,
        peer: PeerConfig,
        transcode: bool = False,
        max_ops: int = 1,
        coercion: Coercion | None = None,
    ) -> None:
        self.peer = peer
        # --coerce: the rules, and what they changed in each C-STORE sent, by
        # Message ID, until the caller takes it (take_changes).
        self.coercion = coercion
        self.changes: dict[int, tuple[Change, ...]] = {}
        # Compressed, deflated and big endian files may fall back to
        # uncompressed Little Endian (contexts.transfer_syntaxes_for).
        self.transcode = transcode
        self.max_ops = max_ops  # the Asynchronous Operations Window we propose
        self.window = 1  # C-STOREs we may have outstanding, as negotiated
        self._assembler = MessageAssembler()
        self._responses: dict[int, Response] = {}  # by Message ID Being Responded To
        self._inbox: deque[Message] = deque()  # complete messages not taken (next_message)
        self.contexts: AcceptedContexts | None = None
        self.peer_maximum_length = 0
        self._association: Association | None = None
        self._transport: Transport | None = None
        self._message_id = 0
        self._read_buffer = bytearray()  # data sets read to be sent (_read_dataset)
        # The next file's data set, read during a wait (prefetch), and which
        # file and version it is: (path, size, mtime, data-set offset).
        self._spare_buffer = bytearray()
        self._prefetched: tuple[str, int, float, int] | None = None

    @property
    def name(self) -> str:
        return f"{self.peer.called_ae_title}@{self.peer.host}:{self.peer.port}"

    @property
    def is_open(self) -> bool:
        return self._association is not None and self._association.established

    # ------------------------------------------------------------ association

    def open(self, contexts: Sequence[PresentationContextRQ]) -> AcceptedContexts:
        """Connect and negotiate; raises AssociationError subclasses or TransportError."""
        association = Association(Role.REQUESTOR, self.peer.max_pdu_length)
        request = AAssociateRQ(
            called_ae_title=self.peer.called_ae_title,
            calling_ae_title=self.peer.calling_ae_title,
            presentation_contexts=tuple(contexts),
            user_information=UserInformation(
                maximum_length=self.peer.max_pdu_length,
                implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version_name=IMPLEMENTATION_VERSION_NAME,
                user_identity=_user_identity(self.peer.user),
                # PS3.7 D.3.3.3: operations we may invoke, and perform (1: we
                # perform nothing asynchronously). Absent: one at a time.
                asynchronous_operations_window=(self.max_ops, 1) if self.max_ops > 1 else None,
            ),
        )
        association.request(request)
        self._transport = Transport.connect(
            self.peer.host, self.peer.port, self.peer.connect_timeout, self.peer.tls
        )
        self._association = association
        association.connection_established()
        self._flush()
        deadline = time.monotonic() + self.peer.acse_timeout
        while True:
            for event in self._read_events(deadline, self.peer.acse_timeout, "A-ASSOCIATE-AC"):
                if isinstance(event, AssociationAccepted):
                    self.peer_maximum_length = event.accept.user_information.maximum_length
                    self.window = negotiated_window(
                        self.max_ops, event.accept.user_information.asynchronous_operations_window
                    )
                    self._assembler = MessageAssembler()
                    self._responses.clear()
                    self._inbox.clear()
                    self.contexts = AcceptedContexts(
                        contexts, event.accept.presentation_contexts, self.transcode
                    )
                    return self.contexts
                if isinstance(event, AssociationRejected):
                    self._close()
                    raise AssociationRejectedError(
                        f"association rejected by {self.name}: {event.reject.describe()}",
                        event.reject,
                    )
                if isinstance(event, Aborted):
                    self._close()
                    raise AssociationAbortedError(
                        f"association with {self.name} failed during negotiation: {event.reason}"
                    )

    def release(self) -> None:
        """A-RELEASE; falls back to A-ABORT if the peer does not answer in time."""
        association = self._association
        if association is None or not association.established:
            self._close()
            return
        try:
            association.release()
            self._flush()
            deadline = time.monotonic() + self.peer.acse_timeout
            while association.state is not State.STA1:
                for event in self._read_events(deadline, self.peer.acse_timeout, "A-RELEASE-RP"):
                    if isinstance(event, ReleaseRequested):
                        # Release collision (PS3.8 9.2.2): answer, then await the RP.
                        association.release_response()
                        self._flush()
                    if isinstance(event, ReleaseConfirmed | Aborted):
                        break
                if association.transport_should_close:
                    break
        except (AssociationError, TransportError):
            self.abort()
        finally:
            self._close()

    def abort(self) -> None:
        """A-ABORT at once (PS3.8 9.3.8), then close."""
        if self._association is not None and self._transport is not None:
            try:
                self._association.abort()
                self._flush()
            except (TransportError, FastsendError):
                pass
        self._close()

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._transport = None
        self._association = None

    # ------------------------------------------------------------ I/O plumbing

    def _flush(self) -> None:
        assert self._association is not None and self._transport is not None
        data = self._association.data_to_send()
        if data:
            self._transport.send(data)

    def _read_events(
        self, deadline: float, limit: float, waiting_for: str, abort_on_timeout: bool = True
    ) -> list[Event]:
        """One read from the socket before ``deadline`` (see _receive), turned into events;
        none when it timed out without ``abort_on_timeout``."""
        data = self._receive(deadline, limit, waiting_for, abort_on_timeout=abort_on_timeout)
        return [] if data is None else self._events(data)

    def _receive(
        self,
        deadline: float,
        limit: float,
        waiting_for: str,
        patience: float | None = None,
        abort_on_timeout: bool = True,
    ) -> bytes | None:
        """One read from the socket before ``deadline``: bytes, b'' when the peer closed.

        ``limit`` is the configured timeout the deadline came from, for the
        message; the read itself gets whatever time is left, or ``patience``
        if shorter: _Impatient then says that it passed with nothing read.
        Without ``abort_on_timeout`` a timeout returns None and leaves the
        association as it is (a caller polling several sources).
        """
        association, transport = self._association, self._transport
        if association is None or transport is None:
            raise AssociationAbortedError(f"association with {self.name} is closed")
        remaining = deadline - time.monotonic()
        wait = remaining if patience is None else min(remaining, patience)
        try:
            if remaining <= 0:
                # A zero socket timeout would mean non-blocking, not "expired".
                raise TransportTimeout(f"{limit:g} s passed")
            data = transport.receive(wait)
        except TransportTimeout as exc:
            if wait < remaining:
                raise _Impatient from None
            if not abort_on_timeout:
                return None
            self.abort()
            raise DimseTimeoutError(
                f"no {waiting_for} from {self.name} within {limit:g} s; association aborted"
            ) from exc
        except TransportError as exc:
            self._close()
            raise AssociationAbortedError(str(exc)) from exc
        return data

    def _events(self, data: bytes) -> list[Event]:
        """Received bytes (b'': the peer closed) through the state machine, as events."""
        association, transport = self._association, self._transport
        assert association is not None and transport is not None
        events = association.receive_data(data) if data else association.connection_closed()
        try:
            self._flush()
        except TransportError:
            pass  # an A-ABORT we could not deliver; the connection is going anyway
        if association.transport_should_close or association.state is State.STA1:
            transport.close()
        return events

    def _send_message(
        self,
        presentation_context_id: int,
        command: Command | bytes,
        dataset: bytes | memoryview | None,
        mapped: tuple[mmap.mmap, int] | None = None,
        prefix: bytes | None = None,
    ) -> None:
        """Send a DIMSE message; ``mapped`` is (the map, the data set's offset in it).

        ``command``: the command set, or its P-DATA-TF PDU(s) already encoded
        by the hot path (c_store_rq_pdus). A command set is encoded here,
        after the data set is ready, so an encoding error comes after any
        error of the file's. A large data set from a mapped file goes in
        windows of STREAM_WINDOW bytes, and each window's pages leave this
        process once the kernel has copied them, so a worker's memory does
        not grow with the file. ``prefix`` (--coerce) goes before
        ``dataset``, the two as one data set; ``mapped`` then gives where the
        prefix would start in the map, so that the window arithmetic still
        lands on the mapped bytes sent.
        """
        assert self._association is not None and self._transport is not None
        maximum = self.peer_maximum_length
        buffers: list[object] = (
            list(fragment_pdata(command.encode(), presentation_context_id, True, maximum))
            if isinstance(command, Command)
            else [command]
        )
        command_buffers = len(buffers)
        size = 0
        if dataset is not None:
            if prefix is None:
                buffers.extend(fragment_pdata(dataset, presentation_context_id, False, maximum))
            else:
                buffers.extend(
                    fragment_pdata_prefixed(
                        prefix, dataset, presentation_context_id, False, maximum
                    )
                )
            size = len(dataset) + (len(prefix) if prefix is not None else 0)
        try:
            if mapped is None or dataset is None or size <= STREAM_WINDOW:
                self._transport.send_buffers(self._association.send_pdata(buffers))
            else:
                self._send_windows(buffers, command_buffers, *mapped)
        except TransportError as exc:
            self._close()
            raise AssociationAbortedError(str(exc)) from exc
        finally:
            buffers.clear()  # drop views into the mapped file before it is unmapped

    def _send_windows(
        self, buffers: list[object], first: int, mapped: mmap.mmap, offset: int
    ) -> None:
        """Send the PDU buffers a window at a time, dropping each window's pages.

        ``buffers[:first]`` are the command's PDUs; from ``first`` on come
        (header, fragment) pairs whose fragments are consecutive slices of
        the data set, which starts at ``offset`` in ``mapped``. MADV_DONTNEED
        on a read-only file mapping only unmaps: the page cache keeps the
        data, and nothing here reads those pages again.
        """
        assert self._association is not None and self._transport is not None
        sent = offset  # the mapped bytes the kernel has taken
        # (max: a coerced head longer than the bytes it replaced puts offset below 0.)
        dropped = max(0, offset - offset % mmap.PAGESIZE)  # the first page still mapped
        start, window = 0, 0
        for index in range(first + 1, len(buffers), 2):
            window += len(buffers[index])  # type: ignore[arg-type]
            last = index == len(buffers) - 1
            if window < STREAM_WINDOW and not last:
                continue
            self._transport.send_buffers(self._association.send_pdata(buffers[start : index + 1]))
            sent += window
            start, window = index + 1, 0
            whole_pages = sent - sent % mmap.PAGESIZE
            if whole_pages > dropped and hasattr(mapped, "madvise"):
                mapped.madvise(mmap.MADV_DONTNEED, dropped, whole_pages - dropped)
                dropped = whole_pages

    def _await_response(
        self,
        outstanding: Collection[int],
        expected: CommandField,
        what: str,
        idle: Callable[[], None] | None = None,
    ) -> tuple[int, Response]:
        """The next response to any of the ``outstanding`` Message IDs.

        Responses are kept by Message ID: one read can complete several when
        operations are pipelined, and none may be lost (PS3.7 D.3.3.3).
        ``idle`` is called once if nothing has come after IDLE_AFTER seconds
        (the worker then journals what it has queued, rather than hold it
        through a slow store).
        """
        # One deadline for the whole response: a peer that trickles bytes
        # must not restart the timeout with every read.
        deadline = time.monotonic() + self.peer.dimse_timeout
        while True:
            for message_id in self._responses:
                if message_id in outstanding:
                    return message_id, self._responses.pop(message_id)
            try:
                data = self._receive(
                    deadline, self.peer.dimse_timeout, what, None if idle is None else IDLE_AFTER
                )
            except _Impatient:
                assert idle is not None
                idle()
                idle = None
                continue
            assert data is not None  # (a timeout aborts)
            if data and self._assembler.idle:
                # The usual answer: whole PDUs of whole command sets, read by
                # the compiled hot path with no PDU, PDV or Command object.
                assert self._association is not None
                commands = self._association.receive_commands(data)
                if commands is not None:
                    self._take_responses(commands, outstanding, expected)
                    continue
            for event in self._events(data):
                if isinstance(event, DataReceived):
                    try:
                        messages = self._assembler.feed(event.pdata.pdvs)
                    except DIMSEError as exc:
                        self.abort()
                        raise AssociationAbortedError(
                            f"{self.name} sent an invalid DIMSE message: {exc}"
                        ) from exc
                    for message in messages:
                        command = message.command
                        offending = command.elements.get(TAG_OFFENDING_ELEMENT)
                        self._take_response(
                            command.command_field,
                            command.get_int(TAG_MESSAGE_ID_BEING_RESPONDED_TO),
                            command.get_int(TAG_STATUS),
                            command.get_str(TAG_ERROR_COMMENT),
                            offending if isinstance(offending, tuple) else None,
                            outstanding,
                            expected,
                        )
                elif isinstance(event, Aborted):
                    self._close()
                    raise AssociationAbortedError(f"{self.name}: {event.reason}")
                elif isinstance(event, ReleaseRequested):
                    self.abort()
                    raise AssociationAbortedError(
                        f"{self.name} asked to release while {what} was outstanding"
                    )

    def _take_responses(
        self, commands: list[CommandSummary], outstanding: Collection[int], expected: int
    ) -> None:
        """The responses among command sets decoded by the hot path (parse_command_pdus)."""
        for _, command_field, responded_to, status, _, error_comment, offending in commands:
            self._take_response(
                command_field,
                responded_to,
                status,
                error_comment or "",
                offending,
                outstanding,
                expected,
            )

    def _take_response(
        self,
        command_field: int | None,
        responded_to: int | None,
        status: int | None,
        error_comment: str,
        offending: tuple[int, ...] | None,
        outstanding: Collection[int],
        expected: int,
    ) -> None:
        """Keep a response to one of ours outstanding; abort on anything else."""
        if command_field != expected or responded_to is None or responded_to not in outstanding:
            self.abort()
            raise AssociationAbortedError(
                f"{self.name} answered with command "
                f"0x{command_field or 0:04x} for message {responded_to}, "
                f"which is not one of ours outstanding ({sorted(outstanding)})"
            )
        self._responses[responded_to] = Response(
            # A response without Status (0000,0900) reads as 0xFFFF, not success.
            status=0xFFFF if status is None else status,
            error_comment=error_comment,
            offending_element=offending or (),
        )

    def send_message(
        self, presentation_context_id: int, command: Command, dataset: bytes | None = None
    ) -> None:
        """Send any DIMSE message (a request or a response) with an in-memory data set."""
        if not self.is_open:
            raise AssociationAbortedError(f"association with {self.name} is closed")
        self._send_message(presentation_context_id, command, dataset)

    def next_message(self, timeout: float, what: str, poll: bool = False) -> Message | None:
        """The next complete DIMSE message from the peer, of any kind.

        For services where the peer sends more than one message per request
        (C-FIND's pending responses, PS3.7 9.1.2) or sends requests of its
        own (N-EVENT-REPORT, PS3.4 J.3.3). With ``poll``, None when
        ``timeout`` passes with nothing complete, the association kept;
        otherwise the association is aborted and DimseTimeoutError raised.
        """
        deadline = time.monotonic() + timeout
        while not self._inbox:
            if poll and time.monotonic() >= deadline:
                return None
            for event in self._read_events(deadline, timeout, what, abort_on_timeout=not poll):
                if isinstance(event, DataReceived):
                    try:
                        self._inbox.extend(self._assembler.feed(event.pdata.pdvs))
                    except DIMSEError as exc:
                        self.abort()
                        raise AssociationAbortedError(
                            f"{self.name} sent an invalid DIMSE message: {exc}"
                        ) from exc
                elif isinstance(event, Aborted):
                    self._close()
                    raise AssociationAbortedError(f"{self.name}: {event.reason}")
                elif isinstance(event, ReleaseRequested):
                    # PS3.8 7.2: the peer may release; answer it, the association is over.
                    assert self._association is not None
                    self._association.release_response()
                    self._flush()
                    self._close()
                    raise AssociationAbortedError(
                        f"{self.name} released the association while {what} was awaited"
                    )
        return self._inbox.popleft()

    def _next_message_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1  # (0000,0110) is US
        return self._message_id

    # ------------------------------------------------------------ DIMSE services

    def next_message_id(self) -> int:
        """A Message ID (0000,0110) for a request sent with send_message."""
        return self._next_message_id()

    def echo(self) -> Response:
        """C-ECHO (PS3.7 9.1.5) on the Verification context."""
        assert self.contexts is not None
        selection = self.contexts.select(VERIFICATION_SOP_CLASS, "1.2.840.10008.1.2")
        message_id = self._next_message_id()
        self._send_message(selection.presentation_context_id, c_echo_rq(message_id), None)
        return self._await_response({message_id}, CommandField.C_ECHO_RSP, "C-ECHO-RSP")[1]

    def store(self, info: FileInfo, selection: Selection) -> Response:
        """C-STORE one file and wait for its response."""
        message_id = self.begin_store(info, selection)
        return self.finish_store({message_id})[1]

    def finish_store(
        self, outstanding: Collection[int], idle: Callable[[], None] | None = None
    ) -> tuple[int, Response]:
        """The next C-STORE-RSP for one of the ``outstanding`` Message IDs (``idle``: see
        _await_response)."""
        return self._await_response(outstanding, CommandField.C_STORE_RSP, "C-STORE-RSP", idle)

    def begin_store(
        self, info: FileInfo, selection: Selection, content: bytes | None = None
    ) -> int:
        """Send one C-STORE-RQ (PS3.7 9.1.1), the data set streamed from the mapped file.

        ``content``: the whole file, when it was read whole with its header
        (a small file); it is then sent from those bytes, with no open and
        no mapping. Returns the Message ID; the response is collected with
        finish_store.
        """
        message_id = self._next_message_id()
        self.changes.pop(message_id, None)  # a Message ID used before (they wrap at 65535)
        context_id = selection.presentation_context_id
        # The command set in its P-DATA-TF PDU(s), from the compiled hot path;
        # the general encoder for what it leaves (a UID outside ASCII raises there).
        pdus = c_store_rq_pdus(
            context_id,
            message_id,
            info.sop_class_uid,
            info.sop_instance_uid,
            Priority.MEDIUM,
            self.peer_maximum_length,
        )
        command: Command | bytes = (
            pdus
            if pdus is not None
            else c_store_rq(message_id, info.sop_class_uid, info.sop_instance_uid)
        )
        if content is not None and self.coercion is None:
            # (Coerced files take the path below, which builds their new head.)
            with memoryview(content) as whole, whole[info.dataset_offset :] as view:
                dataset: bytes | memoryview | None = _dataset_to_send(info, selection, view)
                try:
                    self._send_message(context_id, command, dataset)
                finally:
                    dataset = None
            return message_id
        mapped: mmap.mmap | None = None
        # Read during the wait for the previous response (prefetch), with the
        # same checks: its bytes are the version whose header was read.
        prefetched = self._take_prefetched(info)
        if prefetched is not None:
            view = prefetched
        else:
            # os.open, not open(): a buffered file object costs an ioctl, an
            # lseek and an fstat more per file; mmap checks the size below.
            descriptor = os.open(info.path, os.O_RDONLY)
            try:
                read = self._read_checked(descriptor, info)
                if read is not None:
                    view = read
                else:
                    mapped = mmap.mmap(descriptor, 0, access=mmap.ACCESS_READ)
            except ValueError:  # "cannot mmap an empty file"
                raise FileChangedError(
                    f"size changed from {info.size} to 0 bytes since it was read"
                ) from None
            finally:
                os.close(descriptor)
        try:
            if mapped is not None:
                if len(mapped) != info.size:
                    raise FileChangedError(
                        f"size changed from {info.size} to {len(mapped)} bytes since it was read"
                    )
                if len(mapped) > STREAM_WINDOW and hasattr(mapped, "madvise"):
                    mapped.madvise(mmap.MADV_SEQUENTIAL)
                view = memoryview(mapped)[info.dataset_offset :]
            rest: memoryview | None = None
            try:
                dataset = _dataset_to_send(info, selection, view)
                # Windows apply only when the data set is the mapped file itself.
                streamed = (
                    (mapped, info.dataset_offset)
                    if mapped is not None and dataset is view
                    else None
                )
                prefix = None
                changes: tuple[Change, ...] = ()
                if self.coercion is not None:
                    assert dataset is not None
                    coerced = _coerce(info, selection, dataset, self.coercion)
                    if coerced is not None:
                        prefix = coerced.prefix
                        rest = memoryview(dataset)[coerced.resume_at :]
                        if streamed is not None:
                            # Where the head would start if it replaced the
                            # mapped bytes in place: see _send_windows.
                            start = info.dataset_offset + coerced.resume_at - len(prefix)
                            streamed = (streamed[0], start)
                        dataset = rest
                        changes = coerced.changes
                self._send_message(context_id, command, dataset, streamed, prefix)
                if changes:
                    self.changes[message_id] = changes
            finally:
                dataset = None
                if rest is not None:
                    rest.release()
                view.release()
        finally:
            if mapped is not None:
                try:
                    mapped.close()
                except BufferError:  # pragma: no cover - a view still alive; GC unmaps it
                    pass
        return message_id

    def prefetch(self, info: FileInfo) -> None:
        """Read the data set of the file to be sent next, while a response is awaited.

        The worker calls this after a C-STORE-RQ has gone: the read (an open,
        an fstat, a copy of up to READ_UP_TO bytes from the page cache) then
        happens while the peer stores the previous file, not between its
        response and the next request. The checks are begin_store's: the
        file must still have the size and mtime its header was read with;
        if anything differs or fails, nothing is kept and begin_store reads
        the file again, checks it and says why it cannot be sent.
        """
        self._prefetched = None
        if info.size - info.dataset_offset > READ_UP_TO:
            return
        try:
            descriptor = os.open(info.path, os.O_RDONLY)
        except OSError:
            return
        try:
            read = self._read_checked(descriptor, info, spare=True)
            if read is None:
                return  # its size changed: begin_store says by how much
            read.release()
        except (OSError, FileChangedError):
            return
        finally:
            os.close(descriptor)
        self._prefetched = (info.path, info.size, info.mtime, info.dataset_offset)

    def _read_checked(
        self, descriptor: int, info: FileInfo, spare: bool = False
    ) -> memoryview | None:
        """The open file's data set read into a buffer (_read_dataset), if it is still
        the version whose header was read; None when it is to be mapped instead
        (larger than READ_UP_TO, or of another size, which the mapping reports).

        What is sent must be the version whose header was read and claimed
        (its SOP Instance UID, transfer syntax, data-set offset), up to a batch
        earlier (the worker's look-ahead): a rewrite of the same size shows in
        the mtime, and fails here (FileChangedError).
        """
        status = os.fstat(descriptor)
        if status.st_mtime != info.mtime and status.st_size == info.size:
            raise FileChangedError(
                "modified since its header was read (mtime changed, same size); "
                "not sent: a rerun sends the new version"
            )
        if status.st_size == info.size and info.size - info.dataset_offset <= READ_UP_TO:
            # Read into this client's buffer, then sent from it: cheaper than
            # mapping the file (see READ_UP_TO).
            return self._read_dataset(descriptor, info, spare)
        return None

    def _take_prefetched(self, info: FileInfo) -> memoryview | None:
        """The data set prefetch read for this file (a view to release), or None."""
        prefetched, self._prefetched = self._prefetched, None
        if prefetched != (info.path, info.size, info.mtime, info.dataset_offset):
            return None
        # The spare buffer holds it: it becomes the one being sent from.
        self._read_buffer, self._spare_buffer = self._spare_buffer, self._read_buffer
        return memoryview(self._read_buffer)[: info.size - info.dataset_offset]

    def _read_dataset(self, descriptor: int, info: FileInfo, spare: bool = False) -> memoryview:
        """The file's data set read into this client's buffer (a view to release);
        ``spare``: into the other one, for prefetch.

        The buffer is reused from file to file: its pages stay in this process,
        so a read costs one copy from the page cache and no page faults, where
        a fresh mapping faults its pages in and unmapping them flushes the TLB.
        It grows to the largest data set read (at most READ_UP_TO); the
        kernel has copied a data set before the send returns (sendmsg, or
        TLS's sendall), so the next file can overwrite it.
        """
        length = info.size - info.dataset_offset
        buffer = self._spare_buffer if spare else self._read_buffer
        if len(buffer) < length:
            # A new one rather than a resize: a view of the old one that
            # something still holds must keep its bytes.
            buffer = bytearray(length)
            if spare:
                self._spare_buffer = buffer
            else:
                self._read_buffer = buffer
        view = memoryview(buffer)[:length]
        done = 0
        try:
            while done < length:
                got = os.preadv(descriptor, [view[done:]], info.dataset_offset + done)
                if got == 0:
                    # fstat found the size the header was read at: the file was
                    # cut short since, and nothing of it has been sent.
                    raise FileChangedError(
                        f"size changed from {info.size} to {info.dataset_offset + done} "
                        "bytes since it was read (it ended while being read)"
                    )
                done += got
        except BaseException:
            view.release()
            raise
        return view

    def take_changes(self, message_id: int) -> tuple[Change, ...]:
        """What --coerce changed in the C-STORE with this Message ID (nothing: ())."""
        return self.changes.pop(message_id, ())


class _Impatient(Exception):
    """A read's patience (shorter than its deadline) passed with nothing read."""


# How long a response may take before the waiting worker does its bookkeeping.
IDLE_AFTER = 0.25

# Data sets larger than this are sent in windows of about this many bytes,
# each dropped from the worker's memory once sent (see _send_windows).
STREAM_WINDOW = 16 * 1024 * 1024

# Data sets of at most this many bytes (and more than the 16 KB read with
# the header) are read into a buffer of the client's and sent from it (two
# buffers: the next file's is read during the wait, StoreClient.prefetch);
# larger ones are mapped and streamed in windows, so a worker's memory stays
# bounded. Measured on 0.5 MB CT data sets to a local peer (sender CPU per
# file): the buffer 75-90 us, a fresh mapping 120-155 us, os.sendfile in
# 128 KB PDUs 135-210 us; from 24 KB to 2 MB the buffer was never worse.
READ_UP_TO = 4 * 1024 * 1024


def _coerce(
    info: FileInfo, selection: Selection, dataset: bytes | memoryview, coercion: Coercion
) -> Coerced | None:
    """--coerce on the data set about to go, in the syntax it goes in."""
    from ..errors import ElementScanError
    from ..io.coerce import CoercionError, coerce_dataset

    syntax = info.transfer_syntax_uid
    if selection.needs_conversion(syntax):
        syntax = selection.transfer_syntax  # converted above: the accepted syntax
    try:
        return coerce_dataset(dataset, syntax, coercion)
    except (CoercionError, ElementScanError) as exc:
        raise CoercionError(f"cannot coerce ({coercion.source}): {exc}") from exc


def _dataset_to_send(info: FileInfo, selection: Selection, view: memoryview) -> bytes | memoryview:
    """The data set bytes for the accepted context: the mapped file itself when possible."""
    file_syntax = info.transfer_syntax_uid
    if selection.needs_conversion(file_syntax):
        # Imported here: pydicom costs a worker a quarter second to import,
        # and most runs never convert anything.
        from ..io.convert import convert_dataset, transcode_file

        if file_syntax in CONVERTS_ON_THE_FLY:
            # The other LE syntax, or (with --transcode if-needed) big endian
            # byte-swapped to LE: re-encoded from the mapped bytes.
            return convert_dataset(view, file_syntax, selection.transfer_syntax)
        # --transcode if-needed chose a fallback for a compressed or deflated
        # file: decoded by pydicom, then written in the accepted LE syntax.
        return transcode_file(info.path, selection.transfer_syntax)
    if file_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN and len(view) % 2:
        # A deflate stream can end on an odd byte; DICOM values and fragments
        # are even (PS3.5 7.1, A.5), and DCMTK refuses an odd fragment. One
        # trailing NUL is what pydicom and DCMTK write too: an inflater stops
        # at the end of the stream.
        return bytes(view) + b"\x00"
    return view


class FileChangedError(FastsendError):
    """The file changed between indexing and sending."""
