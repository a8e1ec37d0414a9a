"""Fault injection for integration tests: a TCP proxy that delays a server's replies.

The proxy sits between a client (an engine's pool, a broker connection) and a real server.
What the client sends passes at once; what the server answers is held back by `delay` seconds,
in order, so a test can cancel a task while it awaits a reply the server has already acted on —
exactly what aiormq does to consumer tasks when the broker connection closes. `sent(marker)`
tells when the client has sent bytes containing `marker` (a statement's text, `BEGIN`,
`COMMIT`). `cut()` and `refusing` make the server seem to go away (and come back) for this one
client only, where restarting the real server would disturb every other test.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit


class DelayingProxy:
    """Forwards TCP connections to `upstream` (host, port); server → client bytes arrive late."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.delay = 0.0
        self.refusing = False  # while set, new connections are closed at once
        self._markers: dict[bytes, asyncio.Event] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @classmethod
    def for_url(cls, url: str) -> DelayingProxy:
        parts = urlsplit(url)
        default_port = 5672 if parts.scheme == "amqp" else 5432
        return cls(parts.hostname or "127.0.0.1", parts.port or default_port)

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the proxy first"
        return int(self._server.sockets[0].getsockname()[1])

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

    async def start(self) -> DelayingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.refusing:
            client_w.close()
            return
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        self._writers.update((client_w, server_w))
        for coro in (self._forward(client_r, server_w), self._delayed(server_r, client_w)):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _forward(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while chunk := await src.read(65536):
                for marker, event in self._markers.items():
                    if marker in chunk:
                        event.set()
                dst.write(chunk)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()

    async def _delayed(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Each chunk is written `delay` after it arrived; order is kept."""
        loop = asyncio.get_running_loop()
        pending: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def release() -> None:
            while True:
                due, chunk = await pending.get()
                if not chunk:
                    return
                await asyncio.sleep(max(0.0, due - loop.time()))
                dst.write(chunk)
                await dst.drain()

        releaser = asyncio.create_task(release())
        try:
            while chunk := await src.read(65536):
                pending.put_nowait((loop.time() + self.delay, chunk))
            pending.put_nowait((loop.time() + self.delay, b""))
            await releaser
        except (ConnectionError, OSError):
            pass
        finally:
            releaser.cancel()
            dst.close()
