"""A TCP proxy on 127.0.0.1 for fault tests: clients connect to it instead of a server
(a PostgreSQL store, say), and a test cuts them all off as a failed network would,
then heals it. While cut, every connection it carried is closed and new ones are
refused."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from kappaflow.up import free_port

CHUNK = 1 << 16


class TcpProxy:
    """Forwards connections to its ``port`` to ``target_port`` of 127.0.0.1, from an
    event loop in a thread of its own (see `tcp_proxy`)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kappaflow-proxy",
                                        daemon=True)  # fmt: skip
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.cuts = 0

    @property
    def is_cut(self) -> bool:
        return self._server is None

    def start(self) -> None:
        self._thread.start()
        self.heal()

    def cut(self) -> None:
        """Close every connection (each end sees it reset) and refuse new ones."""
        self._call(self._cut())
        self.cuts += 1

    def heal(self) -> None:
        """Accept and forward connections again, on the same port."""
        self._call(self._listen())

    def close(self) -> None:
        self._call(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _call(self, work: object) -> None:
        asyncio.run_coroutine_threadsafe(work, self._loop).result()  # type: ignore[arg-type]

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._carry, "127.0.0.1", self.port,
                                                      reuse_address=True)  # fmt: skip

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for pipe in list(self._pipes):
            pipe.cancel()
        if self._pipes:
            await asyncio.wait(self._pipes)

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        ends = [writer]
        try:
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target_port)
            ends.append(upstream)
            pumps = {asyncio.create_task(_pump(reader, upstream)),
                     asyncio.create_task(_pump(up_reader, writer))}  # fmt: skip
            try:  # until either side ends: then the connection ends as a whole
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.wait(pumps)
        except OSError:
            pass
        finally:
            self._pipes.discard(task)
            for end in ends:
                _reset(end)


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(CHUNK):
            sink.write(data)
            await sink.drain()
    except OSError:
        pass  # that side is gone: the connection ends


def _reset(end: asyncio.StreamWriter) -> None:
    """Close at once with a reset, as a broken network path ends a connection."""
    sock = end.get_extra_info("socket")
    if sock is not None:
        with suppress(OSError):  # already closed
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    end.transport.abort()


@contextmanager
def tcp_proxy(target_port: int) -> Iterator[TcpProxy]:
    """A running `TcpProxy` to ``target_port`` of 127.0.0.1, closed after the block."""
    proxy = TcpProxy(target_port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()
