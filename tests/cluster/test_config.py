"""Configuring a Redis Cluster: ``redis+cluster://`` seed URLs, ``redis_cluster = true``, and the
persistence check on every node."""

from __future__ import annotations

from pathlib import Path

import pytest

from payrouter.sandbox.cluster import LocalCluster
from payrouter.settings import ConfigError, load_settings
from payrouter.store.persistence import persistence_warning
from payrouter.store.redis import cluster_seeds, is_cluster_url

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PROVIDERS = "\n".join(
    f'[providers.{p}]\nbase_url = "http://127.0.0.1:1/v1"' for p in ("openai", "anthropic", "together")
)
FACILITATOR = '[facilitator]\nmode = "remote"\nurl = "http://127.0.0.1:1"\nrpc_url = "http://127.0.0.1:1"\n'


def _config(tmp_path: Path, top: str) -> Path:
    (tmp_path / "prices.toml").write_text((EXAMPLES / "prices.toml").read_text())
    path = tmp_path / "payrouter.toml"
    path.write_text(f'price_table = "prices.toml"\n{top}\n{FACILITATOR}{PROVIDERS}\n')
    return path


def test_seed_urls_are_parsed() -> None:
    assert cluster_seeds("redis+cluster://10.0.0.1:7000,10.0.0.2:7001") == (
        [("10.0.0.1", 7000), ("10.0.0.2", 7001)],
        None,
        None,
        False,
    )
    assert cluster_seeds("rediss+cluster://app:p%40ss@[::1]:7000/0") == ([("::1", 7000)], "app", "p@ss", True)
    assert is_cluster_url("REDIS+CLUSTER://h:1") and not is_cluster_url("redis://h:1/0")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("redis+cluster://h:1/2", "only database 0"),
        ("redis+cluster://h:one", "host:port"),
        ("redis+cluster://h", "host:port"),
        ("redis://h:1", r"redis\+cluster://"),
    ],
)
def test_bad_seed_urls_say_what_is_wrong(url: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        cluster_seeds(url)


def test_a_cluster_url_turns_the_cluster_on(tmp_path: Path) -> None:
    settings = load_settings(_config(tmp_path, 'redis_url = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001"'), {})
    assert settings.redis_cluster and settings.redis_url == "redis+cluster://127.0.0.1:7000,127.0.0.1:7001"


def test_redis_cluster_true_makes_the_url_a_seed(tmp_path: Path) -> None:
    path = _config(tmp_path, 'redis_url = "redis://:secret@127.0.0.1:7000/0"\nredis_cluster = true')
    settings = load_settings(path, {})
    assert settings.redis_url == "redis+cluster://:secret@127.0.0.1:7000/0"
    assert cluster_seeds(settings.redis_url) == ([("127.0.0.1", 7000)], None, "secret", False)
    plain = load_settings(_config(tmp_path, 'redis_url = "redis://127.0.0.1:6379/0"'), {})
    assert not plain.redis_cluster and plain.redis_url == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("top", "fragment"),
    [
        ("redis_cluster = true", "needs redis_url"),
        ('redis_url = "redis://127.0.0.1:7000/3"\nredis_cluster = true', "only database 0"),
        ('redis_url = "unix:///tmp/r.sock"\nredis_cluster = true', r"or redis\+cluster://"),
    ],
)
def test_cluster_config_errors(tmp_path: Path, top: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings(_config(tmp_path, top), {})


def test_persistence_is_checked_on_every_node(redis_cluster: LocalCluster) -> None:
    # the test cluster keeps nothing on disk: the operator is told, naming the seeds, no password
    warning = persistence_warning(redis_cluster.url)
    assert warning is not None and "a node of Redis at the cluster of 127.0.0.1:" in warning
    assert "appendonly yes" in warning
    assert persistence_warning("redis+cluster://127.0.0.1:1,127.0.0.1:2") is None  # unreachable: startup says so
