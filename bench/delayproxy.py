"""A TCP proxy on 127.0.0.1 that adds a fixed one-way delay in each direction.

Stands in for a wide-area link (this kernel has no netem): every chunk read
from one side is written to the other ``delay`` seconds later, in order, so a
request/response round trip costs 2 x delay more. Throughput is not limited.

    python bench/delayproxy.py --listen 11113 --to 127.0.0.1:11112 --delay 0.01

The benchmark (bench/compare.py) runs it in a thread for its 20 ms RTT rows.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    delivering = asyncio.create_task(deliver())
    try:
        while data := await reader.read(1 << 20):
            queue.put_nowait((time.monotonic() + delay, data))
    except ConnectionError:
        pass
    queue.put_nowait((time.monotonic() + delay, b""))
    await delivering


async def _serve(listen_port: int, target: tuple[str, int], delay: float,
                 ready: threading.Event | None = None) -> None:  # fmt: skip
    async def handle(
        client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        server_reader, server_writer = await asyncio.open_connection(*target)
        await asyncio.gather(
            _pump(client_reader, server_writer, delay),
            _pump(server_reader, client_writer, delay),
            return_exceptions=True,
        )

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    if ready is not None:
        ready.set()
    async with server:
        await server.serve_forever()


def start_in_thread(listen_port: int, target: tuple[str, int], delay: float) -> None:
    """Run the proxy in a daemon thread of this process (for the benchmark)."""
    ready = threading.Event()
    thread = threading.Thread(
        target=lambda: asyncio.run(_serve(listen_port, target, delay, ready)), daemon=True
    )
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the delay proxy did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--to", required=True, help="host:port")
    parser.add_argument("--delay", type=float, default=0.01, help="one-way seconds")
    args = parser.parse_args()
    host, port = args.to.rsplit(":", 1)
    asyncio.run(_serve(args.listen, (host, int(port)), args.delay))


if __name__ == "__main__":
    main()
