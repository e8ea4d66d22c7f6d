"""A TCP proxy that holds back what a server sends (fault tests: a slow Redis, as the wire sees it).

Bytes from the client go through at once; bytes back from the server are delivered
``reply_delay`` seconds after they arrived, in order, or, with ``drop_replies``, never: the
client's connection is closed when the server's reply arrives (the server did the work, the
reply is lost on the way). It runs its own event loop in a thread.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time


class DelayProxy:
    """Listens on a free loopback port (``port``) and forwards every connection to ``target``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.reply_delay = 0.0
        self.drop_replies = False
        # drop only the replies to requests that begin with these bytes (e.g. b"POST /settle")
        self.drop_replies_to = b""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self.port), self._loop
        )
        self._server = future.result(5)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self.target)
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        dropping = False

        async def upstream() -> None:
            nonlocal dropping
            while data := await client_r.read(65536):
                if self.drop_replies_to and data.startswith(self.drop_replies_to):
                    dropping = True
                server_w.write(data)
                await server_w.drain()
            server_w.close()

        async def downstream() -> None:
            while data := await server_r.read(65536):
                held.put_nowait((time.monotonic() + self.reply_delay, data))
            held.put_nowait((0.0, b""))

        async def deliver() -> None:
            while True:
                due, data = await held.get()
                if not data or self.drop_replies or dropping:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                client_w.write(data)
                await client_w.drain()
            client_w.close()

        tasks = [asyncio.create_task(job()) for job in (upstream, downstream, deliver)]
        self._tasks.update(tasks)
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._tasks.difference_update(tasks)
            server_w.close()
            client_w.close()
