"""transport.py on real loopback sockets: partial writes, many iovecs, timeouts."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest

from dicom_fastsend.io.transport import ConnectError, Transport, TransportTimeout


@pytest.fixture
def server() -> Iterator[socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    yield listener
    listener.close()


def slow_reader(listener: socket.socket, received: bytearray, done: threading.Event) -> None:
    connection, _ = listener.accept()
    with connection:
        while chunk := connection.recv(1000):  # small reads keep the sender's buffer full
            received += chunk
    done.set()


@pytest.mark.parametrize("pieces", [3, 5000])  # 5000 > IOV_MAX: several sendmsg calls
def test_every_byte_arrives_in_order_despite_partial_writes(
    server: socket.socket, pieces: int
) -> None:
    received, done = bytearray(), threading.Event()
    threading.Thread(target=slow_reader, args=(server, received, done), daemon=True).start()
    transport = Transport.connect("127.0.0.1", server.getsockname()[1], timeout=5)
    # A tiny send buffer forces the kernel to take a little at a time.
    transport._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    payload = os.urandom(3_000_000)
    step = len(payload) // pieces
    buffers = [memoryview(payload)[i : i + step] for i in range(0, len(payload), step)]
    transport.set_send_timeout(10)
    transport.send_buffers([b"head", *buffers, b"tail"])
    transport.close()
    assert done.wait(10)
    assert bytes(received) == b"head" + payload + b"tail"


def test_refused_connection_names_the_peer() -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(ConnectError, match=f"cannot connect to 127.0.0.1:{port}"):
        Transport.connect("127.0.0.1", port, timeout=2)


def test_receive_timeout_names_the_peer(server: socket.socket) -> None:
    transport = Transport.connect("127.0.0.1", server.getsockname()[1], timeout=2)
    with pytest.raises(TransportTimeout, match="no answer from 127.0.0.1"):
        transport.receive(0.2)
    transport.close()
