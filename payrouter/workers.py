"""``payrouter serve --workers N``: N server processes on one listening socket.

The supervisor (the process the operator started) binds the socket once and starts N worker
processes (``spawn``: fresh interpreters, nothing inherited but the socket and the
environment). Each worker loads the config file itself, opens its own connections (Redis,
chain RPC, upstream pools) and runs one uvicorn server on the shared socket; the kernel hands
each new connection to one of them. Everything shared lives in Redis, so workers agree on
quotes, payments and locks exactly as separate instances do; background passes (reconciler,
channel claimer) take store locks and run in one worker at a time.

SIGTERM or SIGINT to the supervisor stops every worker gracefully: each stops accepting,
finishes the requests it has in flight, runs its lifespan shutdown and exits 0; the
supervisor then exits 0. A worker that dies on its own after it started serving is restarted;
one that fails during start-up stops the lot (exit 1): the config or a dependency is broken.

Metrics: unless ``PROMETHEUS_MULTIPROC_DIR`` is already set, the supervisor points it at a
fresh temporary directory for its workers (so ``/metrics`` in any worker adds up all of them)
and removes it on exit.

`app_from_env` is the same app as an import string for other process managers, e.g.
``PAYROUTER_CONFIG=payrouter.toml uvicorn --factory payrouter.workers:app_from_env --workers 4``
(without the service's header timeout, which needs a protocol class).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["CONFIG_ENV", "Supervisor", "app_from_env", "exit_zero_after_signal", "quiet_http_logs"]

log = logging.getLogger("payrouter.workers")

CONFIG_ENV = "PAYROUTER_CONFIG"
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# How long a stopping worker may take to finish its in-flight requests before it is killed
# (a stream of a slow model can take minutes; the orchestrator's own grace period is usually
# shorter and ends with SIGKILL anyway).
_STOP_GRACE = 120.0


def app_from_env() -> Any:
    """The payrouter ASGI app of the config file named by ``$PAYROUTER_CONFIG`` (a uvicorn
    ``--factory`` import string: ``payrouter.workers:app_from_env``).

    Raises:
        ConfigError: the variable is unset, or the config is invalid.
    """
    from payrouter.app import create_app
    from payrouter.settings import ConfigError, load_settings

    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise ConfigError(f"{CONFIG_ENV} must name the service config file")
    return create_app(load_settings(path))


def _ignore(_sig: int, _frame: FrameType | None) -> None:
    pass


def quiet_http_logs() -> None:
    """httpx and httpcore log every request at INFO: on the paid path (RPC, upstream) that is
    a log line per round trip; keep their warnings only."""
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def exit_zero_after_signal() -> None:
    """uvicorn re-raises the signal that stopped it once it has shut down gracefully; ignore it
    then, so a graceful stop ends in exit code 0 rather than death by SIGTERM. Call right
    before running the server (uvicorn installs its own handlers while it runs)."""
    signal.signal(signal.SIGTERM, _ignore)
    signal.signal(signal.SIGINT, _ignore)


def _worker_main(config_path: str, sock: socket.socket, log_level: str, ready: Any) -> None:
    """A worker process: load the config, serve on ``sock`` until SIGTERM/SIGINT, exit 0."""
    import uvicorn

    from payrouter.app import create_app
    from payrouter.devchain import die_with_parent
    from payrouter.serving_limits import uvicorn_options
    from payrouter.settings import load_settings

    die_with_parent()  # a supervisor killed by SIGKILL leaves no worker behind
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s %(name)s [{os.getpid()}]: %(message)s")
    quiet_http_logs()
    settings = load_settings(config_path)
    config = uvicorn.Config(
        create_app(settings),
        log_level=log_level.lower(),
        access_log=False,
        lifespan="on",
        **uvicorn_options(settings.server),
    )

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                ready.set()  # the supervisor restarts a worker that dies after this, not before

    server = _Server(config)
    exit_zero_after_signal()
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(3)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    """Runs ``workers`` server processes of the config at ``config_path`` on ``host:port``.

    Args:
        config_path: the service config file each worker loads (secrets come from the
            environment the workers inherit).
        host, port: where to listen (port 0 picks a free one; see `port` once running).
        workers: how many server processes.
        log_level: logging level name for the workers.
    """

    def __init__(self, config_path: str | Path, host: str, port: int, workers: int, log_level: str = "INFO") -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.config_path = str(config_path)
        self.host = host
        self.port = port
        self.workers = workers
        self.log_level = log_level
        self._stopping = False
        self._procs: list[BaseProcess] = []
        self._ready: dict[int, Any] = {}  # per worker pid: set once it serves

    def _stop_signal(self, sig: int, _frame: FrameType | None) -> None:
        if not self._stopping:
            log.info("received %s: stopping %d workers", signal.Signals(sig).name, len(self._procs))
        self._stopping = True

    def _reload_signal(self, _sig: int, _frame: FrameType | None) -> None:
        # SIGHUP asks for a reload (payrouter.reload): every worker reloads its own table
        log.info("received SIGHUP: asking %d workers to reload", len(self._procs))
        for proc in self._procs:
            # a worker still starting has no handler yet (SIGHUP would end it): its table is new
            ready = self._ready.get(proc.pid) if proc.pid is not None else None
            if proc.pid is not None and proc.is_alive() and ready is not None and ready.is_set():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGHUP)

    def _start(self, ctx: Any, sock: socket.socket, slot: int) -> BaseProcess:
        ready = ctx.Event()
        proc: BaseProcess = ctx.Process(
            target=_worker_main, args=(self.config_path, sock, self.log_level, ready), name=f"payrouter-worker-{slot}"
        )
        proc.start()
        assert proc.pid is not None
        self._ready[proc.pid] = ready
        return proc

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; returns the exit code (0 after a graceful stop, 1
        when a worker failed to start)."""
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        own_metrics_dir = METRICS_ENV not in os.environ
        if own_metrics_dir:
            os.environ[METRICS_ENV] = tempfile.mkdtemp(prefix="payrouter-metrics-")
        metrics_dir = os.environ[METRICS_ENV]
        previous = {sig: signal.signal(sig, self._stop_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._reload_signal)
        ctx = multiprocessing.get_context("spawn")
        code = 0
        try:
            log.info("payrouter supervisor %d: %d workers on %s:%d", os.getpid(), self.workers, self.host, self.port)
            self._procs = [self._start(ctx, sock, slot) for slot in range(self.workers)]
            code = self._watch(ctx, sock)
        finally:
            self._stop_all(metrics_dir)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            sock.close()
            if own_metrics_dir:
                shutil.rmtree(metrics_dir, ignore_errors=True)
                os.environ.pop(METRICS_ENV, None)
        return code

    def _watch(self, ctx: Any, sock: socket.socket) -> int:
        while not self._stopping:
            wait([p.sentinel for p in self._procs], timeout=0.5)
            for slot, proc in enumerate(self._procs):
                if proc.is_alive() or self._stopping:
                    continue
                assert proc.pid is not None
                _mark_dead(proc.pid)
                ready = self._ready.pop(proc.pid, None)
                if ready is None or not ready.is_set():
                    log.error("worker %d exited with %s during start-up: stopping", proc.pid, proc.exitcode)
                    return 1
                log.warning("worker %d exited with %s: restarting it", proc.pid, proc.exitcode)
                self._procs[slot] = self._start(ctx, sock, slot)
        return 0

    def _stop_all(self, metrics_dir: str) -> None:
        for proc in self._procs:
            if proc.pid is not None and proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE
        for proc in self._procs:
            proc.join(max(deadline - time.monotonic(), 0))
            if proc.is_alive():
                log.error("worker %s did not stop in %.0f s: killed", proc.pid, _STOP_GRACE)
                proc.kill()
                proc.join(5)
            if proc.pid is not None:
                _mark_dead(proc.pid, metrics_dir)


def _mark_dead(pid: int, metrics_dir: str | None = None) -> None:
    """Drop a dead worker's live gauges from the multi-process metrics (its counters stay)."""
    try:
        from prometheus_client import multiprocess
    except ImportError:
        return
    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid, metrics_dir or os.environ.get(METRICS_ENV))  # type: ignore[no-untyped-call]
