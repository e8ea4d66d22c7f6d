"""Run ASGI apps on real loopback sockets: in a thread (tests, benchmarks) or a task (sandbox)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

__all__ = ["bound_port", "serve_in_thread", "uvicorn_server"]


class _Server(uvicorn.Server):
    # The caller owns signal handling: several servers share one process in the sandbox.
    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def uvicorn_server(app: Any, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> uvicorn.Server:
    """A uvicorn server for ``app`` with quiet logs and no signal handlers of its own;
    ``port=0`` picks a free port. ``kwargs`` go to ``uvicorn.Config``: pass
    ``**payrouter.serving_limits.uvicorn_options(settings.server)`` for the service's
    header timeout, keep-alive timeout and concurrency limit."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", **kwargs)
    return _Server(config)


def bound_port(server: uvicorn.Server) -> int:
    """The port a started server listens on."""
    for srv in server.servers:
        for sock in srv.sockets:
            port: int = sock.getsockname()[1]
            return port
    raise RuntimeError("server is not listening")


@contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> Iterator[str]:
    """Serve ``app`` in a background thread for the duration of the block; yields its base URL.

    Raises:
        RuntimeError: the server did not start within 15 s (e.g. its lifespan failed).
    """
    server = uvicorn_server(app, host, port, **kwargs)
    thread = threading.Thread(target=asyncio.run, args=(server.serve(),), daemon=True)
    thread.start()
    for _ in range(1500):
        if server.started or not thread.is_alive():
            break
        threading.Event().wait(0.01)
    if not server.started:
        server.should_exit = True
        thread.join(5)
        raise RuntimeError("server did not start (see its log above)")
    try:
        yield f"http://{host}:{bound_port(server)}"
    finally:
        server.should_exit = True
        thread.join(10)
