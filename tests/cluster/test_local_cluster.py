"""`LocalCluster` itself: it forms, serves, and leaves no process or directory behind."""

from __future__ import annotations

import redis

from payrouter.sandbox.cluster import LocalCluster
from payrouter.store.redis import cluster_seeds


def test_a_cluster_forms_serves_and_is_gone_after_stop() -> None:
    cluster = LocalCluster(masters=3, replicas=0).start()
    try:
        nodes, root = list(cluster.nodes), cluster._root
        assert len(nodes) == 3 and len(cluster.masters_now()) == 3 and root is not None and root.is_dir()
        seeds = cluster_seeds(cluster.url)[0]
        assert [f"{h}:{p}" for h, p in seeds] == [n.address for n in nodes]
        with redis.RedisCluster(host=seeds[0][0], port=seeds[0][1]) as client:
            for i in range(30):  # keys on every master
                client.set(f"k{i}", i)
            assert [int(client.get(f"k{i}") or -1) for i in range(30)] == list(range(30))
        owner = cluster.master_of("k1")
        cluster.pause(owner)
        assert owner not in cluster.running()
        cluster.resume(owner)
        assert owner in cluster.running()
    finally:
        cluster.stop()
    assert all(n.process is not None and n.process.poll() is not None for n in nodes)
    assert not root.exists() and cluster.nodes == []
