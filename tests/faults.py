"""Fault injection for tests: a TCP proxy that makes one client's connections slow or half-dead.

The proxy sits between a client (an engine's pool, a broker connection, a service process) and
a real server, so that the fault touches that one client only, where restarting the real
server would disturb every other test. What it can do:

- `delay`: what the server answers is held back by `delay` seconds, in order, so a test can
  cancel a task while it awaits a reply the server has already acted on — exactly what aiormq
  does to consumer tasks when the broker connection closes.
- `latency`: both directions are held back by that much (a slow network, not a slow server).
- `cut()`: every open connection is closed (FIN), as a server that went away closes it;
  `refusing`: new connections are closed at once while it is set.
- `reset()`: every open connection is aborted with a TCP RST, as a crashed peer or a firewall
  that forgot the connection does.
- `black_hole`: while set, nothing passes in either direction on any connection, open or new,
  and nothing is closed either: the connection is half-dead, and only a heartbeat or a timeout
  can tell. New connections are accepted and then swallowed. Connections that were swallowed
  stay broken when it is cleared (their bytes are gone); new ones work again.
- `black_hole_open()`: the same, for the connections open now only: they go half-dead for
  good, while new ones pass — a NAT or firewall that dropped its state for one path.
- `sent(marker)` tells when the client has sent bytes containing `marker` (a statement's
  text, `BEGIN`, `COMMIT`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit, urlunsplit


class FaultProxy:
    """Forwards TCP connections to `upstream` (host, port), with the faults described above."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.delay = 0.0  # server → client only
        self.latency = 0.0  # both directions
        self.refusing = False  # while set, new connections are closed at once
        self.black_hole = False  # while set, nothing passes and nothing is closed
        self.accepted = 0  # connections accepted so far (a reconnect shows here)
        self._markers: dict[bytes, asyncio.Event] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._swallowed: set[asyncio.StreamWriter] = set()  # broken for good by a black hole
        self._peer: dict[asyncio.StreamWriter, asyncio.StreamWriter] = {}

    @classmethod
    def for_url(cls, url: str) -> FaultProxy:
        parts = urlsplit(url)
        default_port = 5672 if parts.scheme == "amqp" else 5432
        return cls(parts.hostname or "127.0.0.1", parts.port or default_port)

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the proxy first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        """Client-side connections still open (each has a server-side twin)."""
        return len(self._writers) // 2

    def url(self, url: str) -> str:
        """`url` with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)
        userinfo = f"{netloc[0]}@" if len(netloc) == 2 else ""
        return urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{self.port}"))

    def sent(self, marker: bytes) -> asyncio.Event:
        """Set once the client has sent bytes containing `marker` (armed from now on)."""
        event = asyncio.Event()
        self._markers[marker] = event
        return event

    def cut(self) -> None:
        """Drop every open connection, as a server that went away does."""
        for writer in list(self._writers):
            writer.close()

    def reset(self) -> None:
        """Abort every open connection with a RST: the peer sees ECONNRESET, not an orderly end."""
        for writer in list(self._writers):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

    def black_hole_open(self) -> None:
        """Every connection open now passes nothing from here on, and is never closed by us."""
        self._swallowed |= self._writers
        self._writers.clear()

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers | self._swallowed):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.refusing:
            client_w.close()
            return
        if self.black_hole:
            # Accepted, then nothing: the client's handshake waits for an answer that never comes.
            self._swallowed.add(client_w)
            self._spawn(self._swallow(client_r))
            return
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        self._writers.update((client_w, server_w))
        self._peer.update({client_w: server_w, server_w: client_w})
        self._spawn(self._pipe(client_r, server_w, upstream=True))
        self._spawn(self._pipe(server_r, client_w, upstream=False))

    async def _swallow(self, src: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while await src.read(65536):
                pass

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *,
                    upstream: bool) -> None:
        """Copy src to dst, each chunk released after its delay (order kept); black hole drops."""
        loop = asyncio.get_running_loop()
        pending: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        def delay() -> float:
            return self.latency + (0.0 if upstream else self.delay)

        async def release() -> None:
            while True:
                due, chunk = await pending.get()
                if not chunk:
                    return
                await asyncio.sleep(max(0.0, due - loop.time()))
                if self.black_hole or dst in self._swallowed:
                    self._swallowed.update((dst, self._peer.get(dst, dst)))
                    self._writers.difference_update((dst, self._peer.get(dst, dst)))
                    continue
                dst.write(chunk)
                await dst.drain()

        releaser = asyncio.create_task(release())
        try:
            while chunk := await src.read(65536):
                if upstream:
                    for marker, event in self._markers.items():
                        if marker in chunk:
                            event.set()
                pending.put_nowait((loop.time() + delay(), chunk))
            pending.put_nowait((loop.time() + delay(), b""))
            await releaser
        except (ConnectionError, OSError):
            pass
        finally:
            releaser.cancel()
            self._writers.discard(dst)
            # A half-dead connection tells its peer nothing, not even that the other side left.
            if dst not in self._swallowed:
                with contextlib.suppress(Exception):
                    dst.close()


# The name the older tests use; it was only ever a delaying proxy.
DelayingProxy = FaultProxy
