"""A JSON-RPC fault proxy: sits between payrouter and an EVM node and breaks things on demand.

It forwards JSON-RPC over HTTP (single calls and batches) to the node over keep-alive
connections, unchanged in mode ``pass`` (~0.2 ms added per request). The other modes are the
failures settlement must survive:

- ``down``: every JSON-RPC request fails at the transport level (the connection is reset
  without an HTTP answer), as if the node were unreachable.
- ``lose_send``: a request carrying ``eth_sendRawTransaction`` (alone or in a batch) reaches
  the node, so the transaction is really taken and mined, but the client gets an HTTP 503
  with no JSON-RPC answer. Other requests pass.
- ``hide_receipt``: everything is forwarded, but every ``eth_getTransactionReceipt`` result
  comes back ``null``, as if the transaction were not mined yet.

``delay_ms`` delays every forwarded request. The mode is switched in-process with
`RpcFaultProxy.set_mode` or over HTTP on the proxy itself: ``POST /_faults`` with
``{"mode": ..., "delay_ms": ..., "reset": true}``; ``GET /_faults`` returns the mode and
the counters. The control endpoint keeps answering in every mode.

As its own process (benchmarks)::

    python -m payrouter.sandbox.rpc_faults --upstream http://127.0.0.1:8545 --port 0

prints one JSON ready line (``{"url": ..., "pid": ...}``) and runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from payrouter.sandbox._http1 import HttpError, KeepAliveClient, encode_response, read_message

__all__ = ["MODES", "RpcFaultProxy", "fault_proxy_in_thread", "main"]

MODES = ("pass", "down", "lose_send", "hide_receipt")
CONTROL_PATH = "/_faults"


@dataclass(slots=True)
class _Answer:
    status: int
    body: bytes
    content_type: str = "application/json"


def _json(status: int, obj: Any) -> _Answer:
    return _Answer(status, json.dumps(obj).encode())


def _calls(body: bytes) -> list[dict[str, Any]]:
    """The JSON-RPC call objects of a request body (empty when it is not JSON-RPC)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return []
    items = parsed if isinstance(parsed, list) else [parsed]
    return [item for item in items if isinstance(item, dict)]


def _reset(writer: asyncio.StreamWriter) -> None:
    """Drop the connection with a TCP reset: the client sees no HTTP answer at all."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class RpcFaultProxy:
    """The fault proxy as an in-process server.

    Use as an async context manager (or `start`/`stop`); from synchronous code, run it with
    `fault_proxy_in_thread`. `set_mode` may be called from any thread.

    Args:
        upstream: the node's JSON-RPC URL.
        host, port: where to listen; ``port=0`` picks a free port.
        mode: the initial mode (one of `MODES`).
        delay_ms: delay added to every forwarded request.
        timeout: seconds to wait for the node.
    """

    def __init__(
        self,
        upstream: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        mode: str = "pass",
        delay_ms: float = 0.0,
        timeout: float = 30.0,
    ) -> None:
        self.upstream = upstream
        self._host = host
        self._port = port
        self._timeout = timeout
        self._mode = "pass"
        self._delay_ms = 0.0
        self.set_mode(mode, delay_ms)
        self._counters = dict.fromkeys(
            ("requests", "calls", "send_raw_forwarded", "dropped", "lost", "receipts_hidden"), 0
        )
        self._server: asyncio.Server | None = None
        self._node: KeepAliveClient | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self.url = ""

    @property
    def mode(self) -> str:
        """The current mode."""
        return self._mode

    @property
    def delay_ms(self) -> float:
        """The delay added to every forwarded request."""
        return self._delay_ms

    def set_mode(self, mode: str, delay_ms: float | None = None) -> None:
        """Switch the mode (and the delay, when given); takes effect for the next request.

        Raises:
            ValueError: ``mode`` is not one of `MODES`, or ``delay_ms`` is negative.
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        if delay_ms is not None:
            if delay_ms < 0:
                raise ValueError("delay_ms must not be negative")
            self._delay_ms = float(delay_ms)
        self._mode = mode

    def stats(self) -> dict[str, Any]:
        """The mode, the delay and the counters: ``requests`` (JSON-RPC HTTP requests seen),
        ``calls`` (JSON-RPC calls in them), ``send_raw_forwarded`` (eth_sendRawTransaction
        calls forwarded to the node), ``dropped`` (requests reset in mode down), ``lost``
        (answers replaced by a 503) and ``receipts_hidden``."""
        return {"mode": self._mode, "delay_ms": self._delay_ms, **self._counters}

    def reset_counters(self) -> None:
        """Set every counter back to zero."""
        for key in self._counters:
            self._counters[key] = 0

    async def start(self) -> str:
        """Listen and connect to the node; returns the proxy's URL."""
        self._node = KeepAliveClient(self.upstream, self._timeout)
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://{self._host}:{port}"
        return self.url

    async def stop(self) -> None:
        """Stop listening, drop open connections and close the node client. Safe to call twice."""
        if self._server is not None:
            self._server.close()
            open_connections = list(self._connections.items())
            for task, writer in open_connections:
                writer.transport.abort()
                task.cancel()
            await asyncio.gather(*(task for task, _ in open_connections), return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        if self._node is not None:
            await self._node.aclose()
            self._node = None

    async def __aenter__(self) -> RpcFaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            while (request := await read_message(reader)) is not None:
                method, path = request.start[0], request.start[1].split("?", 1)[0]
                if path != CONTROL_PATH and self._mode == "down":
                    self._counters["requests"] += 1
                    self._counters["dropped"] += 1
                    _reset(writer)
                    return
                if path == CONTROL_PATH:
                    answer = self._control(method, request.body)
                elif method == "POST":
                    answer = await self._forward(request.body)
                else:
                    answer = _json(405, {"error": "JSON-RPC takes POST"})
                writer.write(encode_response(answer.status, answer.body, answer.content_type, request.keep_alive))
                await writer.drain()
                if not request.keep_alive:
                    break
        except HttpError as exc:
            writer.write(encode_response(400, str(exc).encode(), "text/plain", keep_alive=False))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        except asyncio.CancelledError:
            # only stop() cancels these tasks; ending normally keeps asyncio's stream callback
            # (which calls task.exception()) from logging a spurious error on Python 3.11
            pass
        finally:
            self._connections.pop(task, None)
            writer.close()

    def _control(self, method: str, raw: bytes) -> _Answer:
        if method == "GET":
            return _json(200, self.stats())
        if method != "POST":
            return _json(405, {"error": "GET or POST"})
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            delay = body.get("delay_ms")
            self.set_mode(str(body.get("mode", self._mode)), None if delay is None else float(delay))
        except (ValueError, TypeError) as exc:
            return _json(400, {"error": str(exc)})
        if body.get("reset"):
            self.reset_counters()
        return _json(200, self.stats())

    async def _forward(self, body: bytes) -> _Answer:
        mode = self._mode
        calls = _calls(body)
        methods = [call.get("method") for call in calls]
        self._counters["requests"] += 1
        self._counters["calls"] += len(calls)
        if self._delay_ms:
            await asyncio.sleep(self._delay_ms / 1000)
        if self._node is None:
            return _json(503, {"error": "the proxy is stopping"})
        self._counters["send_raw_forwarded"] += methods.count("eth_sendRawTransaction")
        try:
            reply = await self._node.post(body)
        except TimeoutError:
            return _json(504, {"error": "the node did not answer in time"})
        except (OSError, asyncio.IncompleteReadError, HttpError) as exc:
            return _json(502, {"error": f"node unreachable: {exc.__class__.__name__}: {exc}"})
        if mode == "lose_send" and "eth_sendRawTransaction" in methods:
            self._counters["lost"] += 1
            return _Answer(503, b"injected fault: the node's answer was lost\n", "text/plain")
        content = reply.body
        if mode == "hide_receipt" and "eth_getTransactionReceipt" in methods:
            content = self._hide_receipts(calls, content)
        return _Answer(int(reply.start[1]), content, reply.headers.get("content-type", "application/json"))

    def _hide_receipts(self, calls: list[dict[str, Any]], content: bytes) -> bytes:
        ids = {json.dumps(c.get("id")) for c in calls if c.get("method") == "eth_getTransactionReceipt"}
        try:
            parsed = json.loads(content)
        except ValueError:
            return content
        replies = parsed if isinstance(parsed, list) else [parsed]
        for reply in replies:
            if isinstance(reply, dict) and json.dumps(reply.get("id")) in ids and reply.get("result") is not None:
                reply["result"] = None
                self._counters["receipts_hidden"] += 1
        return json.dumps(parsed).encode()


@contextlib.contextmanager
def fault_proxy_in_thread(upstream: str, **kwargs: Any) -> Iterator[RpcFaultProxy]:
    """Run a started `RpcFaultProxy` on its own event loop in a daemon thread for the block.

    Keyword arguments go to `RpcFaultProxy`; the yielded proxy's ``url`` is set.
    """
    proxy = RpcFaultProxy(upstream, **kwargs)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True, name="rpc-fault-proxy")
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(proxy.start(), loop).result(15)
        yield proxy
    finally:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(proxy.stop(), loop).result(15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@contextlib.asynccontextmanager
async def _until_signalled() -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _run(args: argparse.Namespace) -> None:
    async with _until_signalled() as stop:
        proxy = RpcFaultProxy(args.upstream, host=args.host, port=args.port, mode=args.mode, delay_ms=args.delay_ms)
        async with proxy:
            ready = {"url": proxy.url, "upstream": args.upstream, "mode": proxy.mode, "pid": os.getpid()}
            sys.stdout.write(json.dumps(ready) + "\n")
            sys.stdout.flush()
            await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """``python -m payrouter.sandbox.rpc_faults``: serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m payrouter.sandbox.rpc_faults", description="A JSON-RPC fault proxy."
    )
    parser.add_argument("--upstream", required=True, help="the node's JSON-RPC URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--mode", choices=MODES, default="pass")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        asyncio.run(_run(args))
    else:
        uvloop.run(_run(args))


if __name__ == "__main__":
    main()
