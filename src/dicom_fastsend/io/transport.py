"""TCP transport: the only module that touches sockets.

Two socket options matter for DICOM throughput (see ../shared/DESIGN.md):
TCP_NODELAY, so our own small PDUs are not held back by Nagle's algorithm,
and TCP_QUICKACK before each read, so a receiver that still runs Nagle
(stock DCMTK, DCMTK FAQ #48) gets its ACK at once and can send the second
half of its C-STORE-RSP without a 40 ms delayed-ACK stall.
"""

from __future__ import annotations

import selectors
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..config import TLSConfig
from ..errors import FastsendError

if TYPE_CHECKING:
    # Imported where TLS is used: ssl costs every run about 10 ms to import.
    import ssl

# Linux allows 1024 iovecs per sendmsg (IOV_MAX); stay under it.
_MAX_IOVECS = 1024
_RECEIVE_SIZE = 256 * 1024
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
# A kernel timeout (SO_RCVTIMEO/SO_SNDTIMEO) within this fraction of the one
# asked for is kept, not set again: a DIMSE deadline shrinks by microseconds
# between two reads, and one setsockopt per read is what this saves.
_TIMEOUT_SLACK = 0.01
_TIMEVAL = struct.Struct("@ll")  # struct timeval (Linux: two longs)


class TransportError(FastsendError):
    """The connection could not be made, or broke."""


class ConnectError(TransportError):
    """No TCP connection to the peer (refused, unreachable, timed out)."""


class TransportTimeout(TransportError):
    """Nothing arrived from the peer within the allowed time."""


class TLSError(ConnectError):
    """The TLS handshake failed: the message says which check and what to do."""


def tls_context(tls: TLSConfig) -> ssl.SSLContext:
    """A client context for DICOM TLS (PS3.15 B.9): TLS 1.2+, verified unless told not to."""
    import ssl

    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None
        )
        # BCP 195 (PS3.15 B.9): nothing older than TLS 1.2.
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls.cert_file is not None:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise TLSError(f"cannot load the TLS certificates or keys: {exc}") from exc
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _tls_handshake(
    context: ssl.SSLContext, sock: socket.socket, host: str, peer: str
) -> ssl.SSLSocket:
    import ssl

    try:
        return context.wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise TLSError(
            f"TLS handshake with {peer} failed: the server certificate was not accepted "
            f"({exc.verify_message}). Check --tls-ca (the CA that signed the server's "
            "certificate) and that -H matches a name in the certificate."
        ) from exc
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        raise TLSError(
            f"TLS handshake with {peer} failed: {exc}. Check that the destination speaks "
            "TLS on this port and whether it requires a client certificate (--tls-cert)."
        ) from exc


def _is_ssl_error(exc: OSError) -> bool:
    import ssl

    return isinstance(exc, ssl.SSLError)


class Transport:
    """A connected TCP (or TLS) socket with scatter-gather writes."""

    def __init__(self, sock: socket.socket, peer: str, tls: bool = False) -> None:
        self._sock = sock
        self.peer = peer
        self._tls = tls
        self.closed = False
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Reads land in one buffer, allocated once: a fresh 256 KB bytes per
        # recv() is an mmap, an mremap and a munmap per C-STORE-RSP.
        self._buffer = bytearray(_RECEIVE_SIZE)
        self._view = memoryview(self._buffer)
        # Plain TCP runs the socket in blocking mode with kernel timeouts:
        # a Python socket timeout costs a poll() before every send and read,
        # and settimeout() an ioctl each time it is called. TLS keeps Python's
        # timeouts (an SSL socket must not see EAGAIN mid-record).
        self._kernel_timeout: float | None = None  # what SO_RCVTIMEO/SO_SNDTIMEO hold
        if not tls:
            timeout = sock.gettimeout()
            sock.settimeout(None)
            self._set_kernel_timeout(timeout)

    def _set_kernel_timeout(self, timeout: float | None) -> None:
        """SO_RCVTIMEO and SO_SNDTIMEO (None: wait for ever), unless nearly what they hold."""
        current = self._kernel_timeout
        if timeout is not None and timeout <= 0:
            timeout = 1e-6  # zero would mean "no timeout" to the kernel: expire at once
        if timeout == current or (
            timeout is not None
            and current is not None
            and abs(current - timeout) <= _TIMEOUT_SLACK * timeout
        ):
            return
        seconds = 0.0 if timeout is None else timeout
        value = _TIMEVAL.pack(int(seconds), int((seconds % 1) * 1_000_000))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
        self._kernel_timeout = timeout

    @classmethod
    def connect(
        cls, host: str, port: int, timeout: float, tls: TLSConfig | None = None
    ) -> Transport:
        """Open a TCP connection to ``host:port`` within ``timeout`` seconds, with TLS if asked."""
        peer = f"{host}:{port}"
        context = tls_context(tls) if tls is not None else None
        try:
            # An ASCII name goes to getaddrinfo as bytes: a str is encoded with
            # the "idna" codec, whose first use imports encodings.idna,
            # stringprep and unicodedata (1.5 ms of a one-file send's start-up);
            # IDNA leaves an ASCII name as it is (RFC 3490 4.1). CPython's
            # getaddrinfo takes bytes; typeshed lists str only.
            address = host.encode("ascii") if host.isascii() else host
            sock = socket.create_connection((address, port), timeout=timeout)  # type: ignore[arg-type]
        except TimeoutError as exc:
            raise ConnectError(f"connection to {peer} timed out after {timeout:g} s") from exc
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConnectError(f"cannot connect to {peer}: {reason}") from exc
        # Large socket buffers let one sendmsg hand a whole PDU to the kernel.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        if context is not None:
            return cls(_tls_handshake(context, sock, host, peer), peer, tls=True)
        return cls(sock, peer)

    @classmethod
    def accepted(cls, sock: socket.socket, address: Any) -> Transport:
        host, port = address[0], address[1]
        return cls(sock, f"{host}:{port}")

    def send(self, data: bytes) -> None:
        self.send_buffers([data])

    def send_buffers(self, buffers: Sequence[Any]) -> None:
        """Write all buffers in order with as few ``sendmsg`` calls as possible.

        Each PDU's header and payload go in the same call (never a header
        write then a body write, which would trip the peer's delayed ACK).
        The usual case is one call that takes everything; only a partial
        write pays for re-slicing, and that without copying.
        """
        try:
            if self._tls:
                # No sendmsg under TLS: each buffer is encrypted straight from
                # its memory, header and fragment as they are, no Python copy.
                for buffer in buffers:
                    self._sock.sendall(buffer)
                return
            if len(buffers) <= _MAX_IOVECS:
                sent = self._sock.sendmsg(buffers)
                if sent == sum(map(len, buffers)):
                    return
            else:
                sent = 0
            self._send_rest(buffers, sent)
        except (TimeoutError, BlockingIOError) as exc:  # BlockingIOError: SO_SNDTIMEO
            raise TransportTimeout(f"{self.peer} stopped taking data (send timed out)") from exc
        except OSError as exc:
            raise TransportError(self._broken("while sending", exc)) from exc

    def _send_rest(self, buffers: Sequence[Any], already_sent: int) -> None:
        """Continue after ``already_sent`` bytes, re-slicing the first unsent buffer."""
        pending = [memoryview(b).cast("B") for b in buffers]
        sent = already_sent
        while True:
            # Drop the buffers fully sent, slice the first partly sent one.
            index = 0
            while index < len(pending) and sent >= len(pending[index]):
                sent -= len(pending[index])
                index += 1
            del pending[:index]
            if sent:
                pending[0] = pending[0][sent:]
            if not pending:
                return
            sent = self._sock.sendmsg(pending[:_MAX_IOVECS])

    def receive(self, timeout: float | None) -> bytes:
        """Bytes from the peer; b'' when the peer closed the connection."""
        if self._tls:
            self._sock.settimeout(timeout)
        else:
            self._set_kernel_timeout(timeout)
        if _TCP_QUICKACK is not None:
            # Quick ACK mode lapses after a few segments, so it is re-armed
            # before every read (tcp(7)).
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
            except OSError:  # pragma: no cover - not all kernels allow it
                pass
        try:
            received = self._sock.recv_into(self._buffer)
        except (TimeoutError, BlockingIOError) as exc:  # BlockingIOError: SO_RCVTIMEO
            raise TransportTimeout(f"no answer from {self.peer} within {timeout:g} s") from exc
        except OSError as exc:
            raise TransportError(self._broken("while receiving", exc)) from exc
        return bytes(self._view[:received])

    def _broken(self, when: str, exc: OSError) -> str:
        message = f"connection to {self.peer} broke {when}: {exc}"
        if self._tls and _is_ssl_error(exc):
            # With TLS 1.3 a server that refuses our certificate (or the lack
            # of one) says so only after the handshake, at the first exchange.
            message += (
                ". The destination ended the TLS session; if it requires a client "
                "certificate, give one it trusts with --tls-cert"
            )
        return message

    def set_send_timeout(self, timeout: float | None) -> None:
        if self._tls:
            self._sock.settimeout(timeout)
        else:
            self._set_kernel_timeout(timeout)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()


class Listener:
    """A listening TCP socket, for the receiving side (``fastsend sink``)."""

    def __init__(self, host: str, port: int) -> None:
        self._sock = socket.create_server((host, port), reuse_port=False, backlog=64)
        self.port: int = self._sock.getsockname()[1]

    def accept(self, timeout: float | None = None) -> Transport | None:
        """The next connection, or None when ``timeout`` passes first."""
        self._sock.settimeout(timeout)
        try:
            sock, address = self._sock.accept()
        except TimeoutError:
            return None
        sock.settimeout(None)
        return Transport.accepted(sock, address)

    def close(self) -> None:
        self._sock.close()


class _Client:
    """One connection to a RequestServer: its request so far, then its answer."""

    __slots__ = ("opened", "request", "response", "sock")

    def __init__(self, sock: socket.socket, opened: float) -> None:
        self.sock = sock
        self.opened = opened
        self.request = b""
        self.response: memoryview | None = None


class RequestServer:
    """A non-blocking, single-threaded listener for short request/answer exchanges
    (the metrics endpoint's HTTP): ``serve()`` does what is ready and never waits
    longer than asked, so the coordinator's own loop can drive it (it forks its
    workers, so it runs no thread). A request ends at an empty line (CRLF CRLF);
    the connection closes after the answer.
    """

    def __init__(self, address: str, port: int, max_request: int, request_timeout: float) -> None:
        self._max_request = max_request
        self._request_timeout = request_timeout
        try:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            self._listener = socket.socket(family, socket.SOCK_STREAM)
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((address, port))
            self._listener.listen(16)
            self._listener.setblocking(False)
        except OSError as exc:
            raise TransportError(str(exc.strerror or exc)) from None
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._clients: dict[int, _Client] = {}

    def serve(self, timeout: float, answer: Callable[[bytes], bytes]) -> None:
        """Accept, read requests and write answers that are ready; wait at most ``timeout``."""
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                self._accept()
            else:
                self._step(key.data, answer)
        if self._clients:
            now = time.monotonic()
            for client in list(self._clients.values()):
                if now - client.opened > self._request_timeout:
                    self._drop(client)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:  # BlockingIOError included: nothing more to accept
                return
            sock.setblocking(False)
            client = _Client(sock, time.monotonic())
            self._clients[sock.fileno()] = client
            self._selector.register(sock, selectors.EVENT_READ, client)

    def _step(self, client: _Client, answer: Callable[[bytes], bytes]) -> None:
        try:
            if client.response is None:
                data = client.sock.recv(4096)
                if not data:
                    self._drop(client)
                    return
                client.request += data
                if b"\r\n\r\n" not in client.request:
                    if len(client.request) > self._max_request:
                        self._drop(client)
                    return
                client.response = memoryview(answer(client.request))
                self._selector.modify(client.sock, selectors.EVENT_WRITE, client)
            sent = client.sock.send(client.response)
            client.response = client.response[sent:]
            if not client.response:
                self._drop(client)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)

    def _drop(self, client: _Client) -> None:
        self._clients.pop(client.sock.fileno(), None)
        try:
            self._selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()

    def close(self) -> None:
        for client in list(self._clients.values()):
            self._drop(client)
        self._selector.close()
        self._listener.close()
