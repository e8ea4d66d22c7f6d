"""``payrouter serve --workers N`` as a user runs it: N processes on one port, each serving, all
stopped cleanly (in-flight requests finished) by one SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from payrouter.devchain import DevChain, DevToken, free_port
from tests.polling import wait_until
from tests.private_redis import PrivateRedis
from tests.redis_keys import delete_namespace, run_token
from tests.service_config import GAS_KEY_ENV, example_table, write_config
from wallets import LocalSigner

CLI = Path(sys.executable).parent / "payrouter"
REDIS_URL = "redis://127.0.0.1:6379/0"
QUOTE_BODY = json.dumps({"model": "gpt-4o-mini", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})


def _ppid(pid: int) -> int:
    # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after ")"
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _holding(name: str, value: str) -> list[int]:
    """Live processes whose environment has ``name=value``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _alive(int(entry.name)):
            try:
                if _environ(int(entry.name)).get(name) == value:
                    found.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, PermissionError, UnicodeDecodeError):
                continue
    return found


@pytest.fixture
def config(tmp_path: Path, chain: DevChain, token: DevToken) -> Iterator[tuple[Path, dict[str, str]]]:
    namespace = f"payrouter-test-workers-{run_token()}"
    table = example_table(chain.network, token.address, LocalSigner.generate().address)
    path = write_config(tmp_path, table, REDIS_URL, namespace, chain.rpc_url)
    env = {**os.environ, GAS_KEY_ENV: chain.new_account().unsafe_export_private_key(), "PYTHONFAULTHANDLER": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    try:
        yield path, env
    finally:
        delete_namespace(REDIS_URL, namespace)


def _serve(config: Path, env: dict[str, str], port: int, workers: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(
            [str(CLI), "serve", "--config", str(config), "--port", str(port), "--workers", str(workers)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )


def _healthz_pid(url: str) -> int | None:
    try:
        # a new connection each time: the kernel hands it to whichever worker accepts first
        reply = httpx.get(f"{url}/healthz", timeout=2)
    except httpx.HTTPError:
        return None
    assert reply.status_code == 200, reply.text
    pid: int = reply.json()["worker"]
    return pid


def test_every_worker_serves_and_sigterm_stops_all_after_in_flight_requests(
    config: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    path, env = config
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    proc = _serve(path, env, port, 3, log)
    try:
        seen: set[int] = set()

        def all_three() -> bool:
            assert proc.poll() is None, log.read_text()[-4000:]
            pid = _healthz_pid(url)
            if pid is not None:
                seen.add(pid)
            return len(seen) == 3

        wait_until(all_three, "a /healthz answer from each of the 3 workers", timeout=60, interval=0.01)
        assert proc.pid not in seen
        assert all(_ppid(pid) == proc.pid for pid in seen)  # workers of this supervisor, not strays
        metrics_dirs = {_environ(pid)["PROMETHEUS_MULTIPROC_DIR"] for pid in seen}
        assert len(metrics_dirs) == 1
        metrics_dir = Path(metrics_dirs.pop())
        assert metrics_dir.is_dir()

        # A request in flight when SIGTERM arrives: its head and half its body are in.
        body = QUOTE_BODY.encode()
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(
            b"POST /v1/quote HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body[: len(body) // 2]
        )
        time.sleep(0.3)  # the worker has read the head and is waiting for the rest of the body
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None  # still waiting for the request in flight
        sock.sendall(body[len(body) // 2 :])
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        sock.close()
        assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
        # (uvicorn marks it "connection: close" only if the worker had seen the signal by then)
        assert b'"amount"' in reply

        assert proc.wait(30) == 0, log.read_text()[-4000:]
        wait_until(lambda: not any(_alive(pid) for pid in seen), "every worker gone", timeout=5)
        assert not metrics_dir.exists()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_worker_that_cannot_start_stops_the_supervisor(
    tmp_path: Path, chain: DevChain, token: DevToken, private_redis: PrivateRedis
) -> None:
    # The start-up checks see Redis answer; it is gone when the workers open it in their lifespan.
    table = example_table(chain.network, token.address, LocalSigner.generate().address)
    path = write_config(tmp_path, table, private_redis.url, "payrouter-test-workers-dead", chain.rpc_url)
    env = {**os.environ, GAS_KEY_ENV: chain.new_account().unsafe_export_private_key()}
    log = tmp_path / "serve.log"
    proc = _serve(path, env, free_port(), 2, log)
    try:
        wait_until(lambda: "payrouter supervisor" in log.read_text(), "the supervisor starts workers", timeout=60)
        private_redis.kill()
        assert proc.wait(60) == 1, log.read_text()[-4000:]
        assert "during start-up" in log.read_text()
        # every process started with this environment (supervisor and workers) is gone
        wait_until(lambda: not _holding(GAS_KEY_ENV, env[GAS_KEY_ENV]), "no worker left", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_several_workers_need_redis(tmp_path: Path, chain: DevChain, token: DevToken) -> None:
    table = example_table(chain.network, token.address, LocalSigner.generate().address)
    path = write_config(tmp_path, table, REDIS_URL, "unused", chain.rpc_url)
    path.write_text(path.read_text().replace(f'redis_url = "{REDIS_URL}"\n', ""))
    env = {**os.environ, GAS_KEY_ENV: chain.new_account().unsafe_export_private_key()}
    done = subprocess.run(
        [str(CLI), "serve", "--config", str(path), "--port", str(free_port()), "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "more than one worker needs redis_url" in done.stderr


def test_one_worker_serves_in_process_and_exits_0_on_sigterm(
    config: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    path, env = config
    port = free_port()
    log = tmp_path / "serve.log"
    proc = _serve(path, env, port, 1, log)
    try:
        pid = wait_until(lambda: _healthz_pid(f"http://127.0.0.1:{port}"), "the server answers", timeout=60)
        assert pid == proc.pid  # no supervisor: the command's own process serves
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-4000:]
        assert "HTTP Request:" not in log.read_text()  # httpx's per-request INFO lines stay out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
