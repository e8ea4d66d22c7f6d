"""A local Redis Cluster on loopback ports, for tests, benches and ``payrouter dev --redis-cluster``.

Debian's ``redis-server`` in cluster mode (masters and their replicas, each in a temp directory),
joined with ``redis-cli --cluster create``. `LocalCluster.stop` kills every process it started and
removes the directories. The fault helpers (`kill`, `pause`, `wait_for_failover`) act on real
processes by PID.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import redis
from redis.crc import key_slot

__all__ = ["ClusterNodeProcess", "LocalCluster"]

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
# the cluster bus listens on port + 10000: both must be free, so ports come from below 55536
_PORTS = (20_000, 45_000)


class _NodeExited(RuntimeError):
    """A node's process ended while starting (its port was taken)."""


@dataclass
class ClusterNodeProcess:
    """One redis-server of the cluster."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, timeout: float = 1.0) -> redis.Redis:
        """A plain (non-cluster) client on this node alone."""
        return redis.Redis(
            port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True
        )


def _free(port: int) -> bool:
    for p in (port, port + 10_000):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", p))
            except OSError:
                return False
    return True


def _free_ports(n: int, taken: set[int]) -> list[int]:
    rng = random.SystemRandom()
    ports: list[int] = []
    while len(ports) < n:
        port = rng.randrange(*_PORTS)
        if port not in taken and port not in ports and _free(port):
            ports.append(port)
    return ports


@dataclass
class LocalCluster:
    """``masters`` masters with ``replicas`` replicas each, on free loopback ports.

    Args:
        masters: at least 3 (Redis Cluster needs a majority of masters to fail over).
        replicas: replicas per master.
        node_timeout_ms: ``cluster-node-timeout``: how long a silent master takes to be failed
            over (small in tests, so a failover takes a second or two).
        appendonly: AOF on every node (fsync every second).
    """

    masters: int = 3
    replicas: int = 1
    node_timeout_ms: int = 1000
    appendonly: bool = False
    nodes: list[ClusterNodeProcess] = field(default_factory=list)
    _root: Path | None = None
    _paused: list[ClusterNodeProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``redis+cluster://`` naming every node as a seed."""
        return "redis+cluster://" + ",".join(n.address for n in self.nodes)

    def start(self, timeout: float = 30.0) -> LocalCluster:
        """Start the nodes, create the cluster and wait until every node says ``cluster_state:ok``.

        A node that exits at start (another process took its port between the probe and the
        bind) makes a fresh attempt on other ports, twice at most.

        Raises:
            RuntimeError: a node did not start or the cluster did not form within ``timeout``.
        """
        if self.masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        for attempt in range(3):
            try:
                return self._start_once(timeout)
            except _NodeExited:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> LocalCluster:
        self._root = Path(tempfile.mkdtemp(prefix="payrouter-cluster-"))
        deadline = time.monotonic() + timeout
        try:
            ports = _free_ports(self.masters * (1 + self.replicas), set())
            for port in ports:
                node = ClusterNodeProcess(port, self._root / str(port))
                node.directory.mkdir()
                self.nodes.append(node)
                self._launch(node)
            for node in self.nodes:
                self._wait_ping(node, deadline)
            create = [REDIS_CLI, "--cluster", "create", *(n.address for n in self.nodes)]
            create += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
            done = subprocess.run(create, capture_output=True, timeout=max(deadline - time.monotonic(), 1))
            if done.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout.decode()[-500:]}")
            self.wait_ok(max(deadline - time.monotonic(), 0.1))
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, node: ClusterNodeProcess) -> None:
        args = [REDIS_SERVER, "--port", str(node.port), "--bind", "127.0.0.1", "--dir", str(node.directory)]
        args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        args += ["--cluster-node-timeout", str(self.node_timeout_ms), "--save", ""]
        # any replica may be promoted, however long it was cut off (tests kill masters at will)
        args += ["--cluster-replica-validity-factor", "0"]
        args += ["--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec"]
        node.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @staticmethod
    def _wait_ping(node: ClusterNodeProcess, deadline: float) -> None:
        with node.client(0.5) as client:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if node.process is not None and node.process.poll() is not None:
                        raise _NodeExited(f"redis-server on {node.address} exited at start") from None
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server on {node.address} did not start") from None
                    time.sleep(0.01)

    def running(self) -> list[ClusterNodeProcess]:
        """Nodes whose process is alive and not paused by `pause`."""
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None and n not in self._paused]

    def _info(self, node: ClusterNodeProcess) -> dict[str, str]:
        with node.client() as client:
            text = str(client.execute_command("CLUSTER", "INFO"))
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def wait_ok(self, timeout: float = 15.0) -> None:
        """Wait until every running node reports ``cluster_state:ok`` with all 16384 slots served
        and each master's slots held by a reachable master.

        Raises:
            RuntimeError: not within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            try:
                infos = [self._info(n) for n in self.running()]
                ok = all(i.get("cluster_state") == "ok" and i.get("cluster_slots_ok") == "16384" for i in infos)
                if ok and self._slots_on_running_masters():
                    return
                last = infos
            except redis.RedisError as exc:
                last = exc
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not become ok within {timeout} s: {last!r}")
            time.sleep(0.05)

    def _slots_on_running_masters(self) -> bool:
        alive = {n.port for n in self.running()}
        for node in self.running():
            with node.client() as client:
                for start_end_master in client.execute_command("CLUSTER", "SLOTS"):
                    if int(start_end_master[2][1]) not in alive:
                        return False
        return True

    def master_of(self, key: str) -> ClusterNodeProcess:
        """The running master now serving ``key``'s slot."""
        slot = key_slot(key.encode())
        for node in self.running():
            with node.client() as client:
                for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if int(start) <= slot <= int(end):
                        port = int(master[1])
                        return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"no running node knows who serves slot {slot}")

    def masters_now(self) -> list[ClusterNodeProcess]:
        """The running nodes that are masters now."""
        out = []
        for node in self.running():
            with node.client() as client:
                if str(client.execute_command("ROLE")[0]) == "master":
                    out.append(node)
        return out

    def kill(self, node: ClusterNodeProcess) -> None:
        """SIGKILL ``node``'s process (its replica is promoted after ``node_timeout_ms``)."""
        if node.process is not None:
            node.process.kill()
            node.process.wait(5)

    def pause(self, node: ClusterNodeProcess) -> None:
        """SIGSTOP ``node``: it holds its connections open and answers nothing."""
        if node.process is not None:
            os.kill(node.process.pid, signal.SIGSTOP)
            self._paused.append(node)

    def resume(self, node: ClusterNodeProcess) -> None:
        """SIGCONT a paused node (it rejoins as a replica once it learns it was failed over)."""
        if node.process is not None and node in self._paused:
            os.kill(node.process.pid, signal.SIGCONT)
            self._paused.remove(node)

    def wait_for_failover(self, old: ClusterNodeProcess, key: str, timeout: float = 15.0) -> ClusterNodeProcess:
        """Wait until ``key``'s slot is served by a running master other than ``old`` and the
        cluster is ok again; return that master.

        Raises:
            RuntimeError: not within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                master = self.master_of(key)
                if master is not old:
                    self.wait_ok(max(deadline - time.monotonic(), 0.1))
                    return master
            except (redis.RedisError, RuntimeError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"no replica took over {old.address} within {timeout} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Kill every node process (paused ones too) and remove the directories; `nodes` is
        emptied (the cluster may be started again)."""
        for node in self.nodes:
            if node.process is None:
                continue
            if node in self._paused:
                os.kill(node.process.pid, signal.SIGCONT)
            if node.process.poll() is None:
                node.process.kill()
            node.process.wait(5)
        self._paused.clear()
        self.nodes = []
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def __enter__(self) -> LocalCluster:
        return self.start() if not self.nodes else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
