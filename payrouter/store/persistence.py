"""Whether a Redis keeps its data across a restart: the journal is the only record of payments."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["persistence_warning", "warn_unless_persistent"]

log = logging.getLogger("payrouter.store")


def _where(url: str) -> str:
    # host:port only: a URL may carry a password
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def persistence_warning(url: str, timeout: float = 2.0) -> str | None:
    """Why the Redis at ``url`` may lose every record on a restart, or None when it persists.

    It persists with AOF (``appendonly yes``) or RDB snapshots (a non-empty ``save``). When
    ``CONFIG GET`` is refused (managed Redis often renames or disables it), the warning says
    persistence could not be checked. An unreachable Redis gives None: the service's startup
    fails on it with its own error.
    """
    where = _where(url)
    try:
        with redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout
        ) as client:
            appendonly = str(client.config_get("appendonly").get("appendonly", "")).lower()
            save = str(client.config_get("save").get("save", "")).strip()
    except (RedisConnectionError, RedisTimeoutError):
        return None
    except ResponseError as exc:
        return (
            f"could not check whether Redis at {where} persists its data (CONFIG GET refused: {exc}); "
            "without AOF or RDB persistence a Redis restart loses the payment journal"
        )
    except RedisError as exc:
        return f"could not check whether Redis at {where} persists its data ({exc.__class__.__name__}: {exc})"
    if appendonly == "yes" or save:
        return None
    return (
        f"Redis at {where} has neither AOF (appendonly no) nor RDB snapshots (save ''): a Redis restart "
        "loses the payment journal; enable appendonly yes (appendfsync everysec)"
    )


def warn_unless_persistent(url: str) -> bool:
    """Log `persistence_warning` at WARNING on ``payrouter.store`` if there is one; returns whether it did."""
    warning = persistence_warning(url)
    if warning is not None:
        log.warning("%s", warning)
    return warning is not None
