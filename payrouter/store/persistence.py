"""Whether a Redis keeps its data across a restart: the journal is the only record of payments."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from payrouter.store.redis import cluster_seeds, is_cluster_url

__all__ = ["persistence_warning", "warn_unless_persistent"]

log = logging.getLogger("payrouter.store")


def _where(url: str) -> str:
    # host:port only: a URL may carry a password
    if is_cluster_url(url):
        return "the cluster of " + ",".join(f"{host}:{port}" for host, port in cluster_seeds(url)[0])
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def _config(url: str, timeout: float) -> list[tuple[str, str]]:
    """``(appendonly, save)`` of the Redis at ``url``, or of every node of a Cluster."""
    if not is_cluster_url(url):
        with redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout
        ) as client:
            appendonly = str(client.config_get("appendonly").get("appendonly", ""))
            return [(appendonly, str(client.config_get("save").get("save", "")))]
    seeds, username, password, tls = cluster_seeds(url)
    nodes = [ClusterNode(host, port) for host, port in seeds]  # type: ignore[no-untyped-call]
    with RedisCluster(
        startup_nodes=nodes,
        username=username,
        password=password,
        ssl=tls,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    ) as cluster:
        out = []
        for node in cluster.get_nodes():  # replicas too: a promoted one must keep what it has
            appendonly = cluster.config_get("appendonly", target_nodes=node).get("appendonly", "")
            save = cluster.config_get("save", target_nodes=node).get("save", "")
            out.append((str(appendonly), str(save)))
        return out


def persistence_warning(url: str, timeout: float = 2.0) -> str | None:
    """Why the Redis at ``url`` may lose every record on a restart, or None when it persists.

    It persists with AOF (``appendonly yes``) or RDB snapshots (a non-empty ``save``); a Cluster
    persists when every node (replicas included) does. When
    ``CONFIG GET`` is refused (managed Redis often renames or disables it), the warning says
    persistence could not be checked. An unreachable Redis gives None: the service's startup
    fails on it with its own error.
    """
    where = _where(url)
    try:
        nodes = _config(url, timeout)
    except (RedisConnectionError, RedisTimeoutError):
        return None
    except RedisClusterException:  # no seed answered: unreachable too
        return None
    except ResponseError as exc:
        return (
            f"could not check whether Redis at {where} persists its data (CONFIG GET refused: {exc}); "
            "without AOF or RDB persistence a Redis restart loses the payment journal"
        )
    except RedisError as exc:
        return f"could not check whether Redis at {where} persists its data ({exc.__class__.__name__}: {exc})"
    if all(appendonly.lower() == "yes" or save.strip() for appendonly, save in nodes):
        return None
    some = "a node of " if len(nodes) > 1 else ""
    return (
        f"{some}Redis at {where} has neither AOF (appendonly no) nor RDB snapshots (save ''): a Redis restart "
        "loses the payment journal; enable appendonly yes (appendfsync everysec)"
    )


def warn_unless_persistent(url: str) -> bool:
    """Log `persistence_warning` at WARNING on ``payrouter.store`` if there is one; returns whether it did."""
    warning = persistence_warning(url)
    if warning is not None:
        log.warning("%s", warning)
    return warning is not None
