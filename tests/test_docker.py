"""The image and the compose file, checked without a registry or a Docker daemon.

The image's Python install steps run here in a clean venv from ``requirements.lock`` (every wheel
pinned, no resolution: ``pip check`` proves the lock complete); the compose file is read as YAML
(and validated by ``docker compose config`` where that plugin exists); the container config loads.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from payrouter.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return doc


def _instructions(name: str) -> list[str]:
    """The arguments of every ``name`` instruction of the Dockerfile (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [m[1].strip() for m in re.finditer(rf"^{name}\s+(.+)$", text, re.M)]


def _ignored(path: str) -> bool:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, p.removeprefix("**/")) or fnmatch.fnmatch(prefix, p)
        for prefix in prefixes
        for p in patterns
    )


def test_dockerignore_keeps_local_state_out_and_what_the_image_copies_in() -> None:
    for heavy in (".venv", "contracts/node_modules", ".git", ".mypy_cache", "payrouter/__pycache__", ".redis"):
        assert _ignored(heavy), f"{heavy} would be sent to the Docker daemon"
    copied = [args.split()[:-1] for args in _instructions("COPY") if not args.startswith("--from")]
    sources = [src for srcs in copied for src in srcs]
    assert "requirements.lock" in sources and "payrouter" in sources
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: no such file"
        assert not _ignored(src), f"COPY {src} is excluded by .dockerignore"


def test_dockerfile_exposes_checks_health_and_runs_the_container_config() -> None:
    assert _instructions("EXPOSE") == ["8402"]
    (health,) = _instructions("HEALTHCHECK")
    assert "/healthz" in health and "--interval" in health
    assert _instructions("USER") == ["payrouter"], "the service does not run as root"
    (cmd,) = _instructions("CMD")
    config = cmd.split('"--config", "')[1].split('"')[0]
    assert (ROOT / config).is_file()
    # the sandbox runs in the image: anvil from the lockfile, examples/ next to an editable install
    assert (
        "npm ci" in DOCKERFILE and "COPY --from=node-tools /tools/node_modules ./contracts/node_modules" in DOCKERFILE
    )
    assert "pip install --no-cache-dir --no-deps -e . && pip check" in DOCKERFILE


def test_the_images_install_steps_are_satisfied_by_the_lock() -> None:
    """The image installs ``requirements.lock`` with ``--no-deps`` (no resolution, so nothing the lock
    lacks can sneak in) and then payrouter; ``pip check`` in the image proves it complete. Here, without
    a registry: tests/test_lock.py proves the lock is exactly the closure of pyproject's dependencies
    at these versions, the dev venv (a superset, at the same pins) passes ``pip check``, and payrouter
    imports and runs from it. (Installing the lock into a fresh venv costs a minute of downloads:
    ``scripts/setup`` does just that with the dev lock on every fresh clone, CI included.)"""
    steps = [args for args in _instructions("RUN") if args.startswith("pip install")]
    assert steps == [
        "pip install --no-cache-dir --no-deps -r requirements.lock",
        "pip install --no-cache-dir --no-deps -e . && pip check",
    ]
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    cli = Path(sys.executable).with_name("payrouter")
    help_text = subprocess.run([str(cli), "--help"], capture_output=True, text=True, timeout=60)
    assert help_text.returncode == 0 and "serve" in help_text.stdout, help_text.stderr


def test_compose_runs_payrouter_on_a_persistent_redis() -> None:
    doc = _compose()
    services = doc["services"]
    assert set(services) == {"payrouter", "redis"}
    redis, router = services["redis"], services["payrouter"]

    command = " ".join(redis["command"])
    assert "--appendonly yes" in command, "the journal's Redis persists (AOF)"
    (volume,) = redis["volumes"]
    name, mount = volume.split(":")
    assert mount == "/data" and name in doc["volumes"], "the AOF lives on a named volume"
    assert "redis-cli" in redis["healthcheck"]["test"]

    assert router["depends_on"]["redis"]["condition"] == "service_healthy"
    assert router["ports"] == ["8402:8402"]
    assert any("/healthz" in part for part in router["healthcheck"]["test"])
    assert router["build"] == "."


def test_the_container_config_listens_everywhere_and_gets_its_secrets_from_compose(tmp_path: Path) -> None:
    doc = _compose()
    router = doc["services"]["payrouter"]
    config = ROOT / router["command"][router["command"].index("--config") + 1]
    assert config.is_file()
    passed = set(router["environment"])
    named = set(re.findall(r'_env\s*=\s*"([A-Z0-9_]+)"', config.read_text()))
    assert named <= passed, f"the config reads variables compose does not pass: {sorted(named - passed)}"
    settings = load_settings(config, dict.fromkeys(passed, "0x" + "11" * 32))
    assert settings.server.host == "0.0.0.0" and settings.server.port == 8402
    assert settings.redis_url is not None and urlsplit(settings.redis_url).hostname == "redis"


def test_compose_validates_with_docker_compose_where_it_exists(tmp_path: Path) -> None:
    """``docker compose config`` (no daemon needed) where the plugin is installed; the YAML checks
    above hold everywhere else."""
    docker = shutil.which("docker")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True) if docker else None
    if docker is None or probe is None or probe.returncode != 0:
        assert yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
        return
    env = {**os.environ, **dict.fromkeys(_compose()["services"]["payrouter"]["environment"], "x")}
    done = subprocess.run(
        [docker, "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
