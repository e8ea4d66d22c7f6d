"""A real local Redis Cluster for the tests (3 masters, 3 replicas on loopback ports), and the
URLs of the Redis backends the store suites run on.

The start/stop code is `payrouter.sandbox.cluster.LocalCluster` (benches and ``payrouter dev
--redis-cluster`` use it too); this module adds the pytest fixture and the clean-up.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from redis.cluster import ClusterNode

from payrouter.sandbox.cluster import LocalCluster
from payrouter.store.redis import cluster_seeds, is_cluster_url
from tests.redis_keys import delete_namespace

__all__ = ["REDIS_BACKENDS", "SINGLE_REDIS_URL", "delete_keys", "redis_cluster", "redis_url_for"]

SINGLE_REDIS_URL = "redis://127.0.0.1:6379/0"
# the store suites run on each: one Redis node, and a Redis Cluster
REDIS_BACKENDS = ["redis", "cluster"]


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """One cluster for the session (started on first use, every process killed at the end).

    Tests that kill nodes start a cluster of their own instead."""
    with LocalCluster(node_timeout_ms=1000) as cluster:
        yield cluster


def redis_url_for(backend: str, request: pytest.FixtureRequest) -> str:
    """The URL of ``backend`` (``redis`` or ``cluster``); the cluster is started on first use."""
    if backend == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    assert backend == "redis", backend
    return SINGLE_REDIS_URL


def delete_keys(url: str, namespace: str) -> int:
    """Delete every key under ``namespace:`` on the Redis or Cluster at ``url`` (SCAN on each
    master, never KEYS); return how many.

    Raises:
        AssertionError: keys of the namespace are still there afterwards.
    """
    if not is_cluster_url(url):
        return delete_namespace(url, namespace)
    deleted = 0
    seeds = [ClusterNode(host, port) for host, port in cluster_seeds(url)[0]]
    with redis.RedisCluster(startup_nodes=seeds) as cluster:  # any seed still up will do
        for node in cluster.get_primaries():
            client = cluster.get_redis_connection(node)
            for key in client.scan_iter(match=f"{namespace}:*", count=500):
                deleted += int(client.delete(key))
        left = [
            key
            for node in cluster.get_primaries()
            for key in cluster.get_redis_connection(node).scan_iter(match=f"{namespace}:*", count=500)
        ]
    assert not left, f"{namespace}: {left[:3]!r} still in the cluster after the clean-up"
    return deleted
