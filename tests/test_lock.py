"""The lock files agree with pyproject.toml, and set-up installed exactly them.

``requirements.lock`` (the image) must hold every package that payrouter's dependencies need, at
versions they accept, and nothing else; ``requirements-dev.lock`` (scripts/setup) the same for the
dependencies plus the dev extra. Requirements are followed through the metadata of the packages
installed in this venv, which scripts/setup installs at the locked versions (checked too), so the
check needs no network. When it fails: run ``scripts/lock``, then ``scripts/setup``.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
HINT = "pyproject.toml and the locks disagree: run scripts/lock, then scripts/setup"


def read_lock(name: str) -> dict[NormalizedName, str]:
    """``{package: version}`` of a lock file (``name==version`` lines, ``#`` comments)."""
    pins: dict[NormalizedName, str] = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
            assert match, f"{name}: not a pin: {line!r}"
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def closure(roots: list[str]) -> dict[NormalizedName, list[Requirement]]:
    """Every package the ``roots`` need on this interpreter, with the requirements naming it,
    followed through installed metadata (with extras, and markers evaluated here)."""
    needed: dict[NormalizedName, list[Requirement]] = {}
    seen: set[tuple[NormalizedName, str]] = set()
    todo = [(Requirement(r), "") for r in roots]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        needed.setdefault(name, []).append(req)
        for wanted in ["", *sorted(req.extras)]:
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            try:
                requires = metadata.distribution(name).requires or []
            except metadata.PackageNotFoundError:
                continue  # reported by the caller: it is needed but not installed
            todo += [(Requirement(r), wanted) for r in requires]
    return needed


@pytest.mark.parametrize(
    ("lock", "roots"),
    [
        ("requirements.lock", PYPROJECT["dependencies"]),
        ("requirements-dev.lock", PYPROJECT["dependencies"] + PYPROJECT["optional-dependencies"]["dev"]),
    ],
)
def test_lock_is_exactly_what_pyproject_needs(lock: str, roots: list[str]) -> None:
    pins = read_lock(lock)
    needed = closure(roots)
    assert sorted(set(needed) - set(pins)) == [], f"{lock} lacks packages that are needed; {HINT}"
    assert sorted(set(pins) - set(needed)) == [], f"{lock} pins packages nothing needs; {HINT}"
    refused = [
        f"{name}=={pins[name]} refused by {req}"
        for name, reqs in needed.items()
        for req in reqs
        if not req.specifier.contains(pins[name], prereleases=True)
    ]
    assert refused == [], f"{lock}: {refused}; {HINT}"


def test_the_venv_was_installed_from_the_dev_lock() -> None:
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    differ = {
        name: (version, installed.get(name))
        for name, version in read_lock("requirements-dev.lock").items()
        if installed.get(name) != version
    }
    assert differ == {}, f"(locked, installed) differ: run scripts/setup ({HINT} if it does not help)"


def test_the_runtime_lock_agrees_with_the_dev_lock() -> None:
    dev = read_lock("requirements-dev.lock")
    runtime = read_lock("requirements.lock")
    assert {name: dev.get(name) for name in runtime} == runtime


def test_setup_and_the_image_install_from_the_locks() -> None:
    setup = (ROOT / "scripts/setup").read_text()
    assert "-c requirements-dev.lock -e '.[dev]'" in setup
    assert "hash_of pyproject.toml requirements-dev.lock" in setup, "a new lock re-installs"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-cache-dir --no-deps -r requirements.lock" in dockerfile
    # scripts/lock is the one command that regenerates both
    out = subprocess.run(["bash", "-n", str(ROOT / "scripts/lock")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
