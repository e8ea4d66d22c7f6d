"""A real headless Chromium, driven over the DevTools protocol (a websocket), for browser tests.

Debian's ``chromium`` (installed by scripts/setup). Each instance gets its own profile
directory and a debugging port the browser picks itself (read from ``DevToolsActivePort``), so
parallel runs never collide; `close` kills its process group.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

__all__ = ["Chromium", "chromium_binary"]


def chromium_binary() -> str:
    """The chromium executable (``$CHROMIUM`` or ``chromium`` on PATH).

    Raises:
        AssertionError: none installed (run scripts/setup).
    """
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "chromium is not installed: run scripts/setup (it installs Debian's chromium package)"
    return found


class Chromium:
    """One headless browser with one page.

    Args:
        profile: an empty directory for the browser's profile (cookies live there).
        width, height: the page's viewport in CSS pixels.
    """

    def __init__(self, profile: Path, width: int = 1400, height: int = 1000) -> None:
        self._profile = profile
        port_file = profile / "DevToolsActivePort"
        self._log = (profile / "chromium.log").open("wb")
        self._tmp = tempfile.mkdtemp(prefix="chromium-")
        self._proc = subprocess.Popen(
            [
                chromium_binary(),
                "--headless",
                "--no-sandbox",  # tests run as root in CI containers
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            start_new_session=True,
            # its own temporary folders (org.chromium.Chromium.*) go in one of ours, removed on
            # close (a short path: they hold Unix sockets)
            env={**os.environ, "TMPDIR": self._tmp},
        )
        self._ws: ClientConnection | None = None
        self._stack = contextlib.ExitStack()
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []  # DevTools events seen so far (console, exceptions, ...)
        try:
            deadline = time.monotonic() + 60
            while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
                assert self._proc.poll() is None, f"chromium exited: {self.log_tail()}"
                assert time.monotonic() < deadline, f"chromium did not open its debugging port: {self.log_tail()}"
                time.sleep(0.05)
            port = int(port_file.read_text().splitlines()[0])
            pages = [
                t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json() if t["type"] == "page"
            ]
            assert pages, "chromium has no page target"
            self._ws = self._stack.enter_context(
                connect(pages[0]["webSocketDebuggerUrl"], max_size=64 << 20, open_timeout=10)
            )
            for domain in ("Page", "Runtime", "Log"):
                self.send(f"{domain}.enable")
            self.send(
                "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
            )
        except BaseException:
            self.close()
            raise

    def log_tail(self) -> str:
        """The end of the browser's stderr."""
        self._log.flush()
        return (self._profile / "chromium.log").read_text(errors="replace")[-3000:]

    def send(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        """Call a DevTools method and return its result (events in between are skipped).

        Raises:
            AssertionError: the browser answered with an error.
        """
        assert self._ws is not None
        call_id = next(self._ids)
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self._ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == call_id:
                assert "error" not in message, f"{method}: {message['error']}"
                result: dict[str, Any] = message.get("result", {})
                return result
            if "method" in message:
                self.events.append(message)

    def page_errors(self) -> list[str]:
        """Uncaught exceptions and console errors of the pages so far (a refused Content-Security-
        Policy directive is one), except failed loads: a 401 page is an expected answer."""
        out = []
        for event in self.events:
            if event["method"] == "Runtime.exceptionThrown":
                out.append(str(event["params"]["exceptionDetails"]))
            elif event["method"] == "Log.entryAdded":
                entry = event["params"]["entry"]
                if entry["level"] == "error" and entry.get("source") != "network":
                    out.append(entry["text"])
            elif event["method"] == "Runtime.consoleAPICalled" and event["params"]["type"] == "error":
                out.append(str(event["params"]["args"]))
        return out

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if it is a promise).

        Raises:
            AssertionError: the expression threw.
        """
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, f"{expression!r} threw: {result['exceptionDetails']}"
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> Any:
        """Poll ``expression`` until it is truthy; return its value.

        An expression that throws (the page is still loading) counts as falsy.

        Raises:
            AssertionError: still falsy after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()"
        while True:
            try:
                value = self.evaluate(guarded)
            except AssertionError:  # a navigation destroyed the page's context mid-call
                value = None
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {expression!r}"
            time.sleep(0.1)

    def navigate(self, url: str) -> None:
        """Load ``url`` and wait until the document has loaded."""
        self.send("Page.navigate", url=url)
        self.wait_for(f"document.readyState === 'complete' && location.href.startsWith({json.dumps(url)})")

    def screenshot(self, path: Path) -> None:
        """Save the whole page (not only the viewport) as a PNG."""
        height = int(self.evaluate("Math.ceil(document.documentElement.scrollHeight)"))
        width = int(self.evaluate("document.documentElement.clientWidth"))
        shot = self.send(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        )
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        """Stop the browser and every process it started."""
        self._ws = None
        self._stack.close()
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(10)
        self._log.close()
        shutil.rmtree(self._tmp, ignore_errors=True)
