"""Dependencies point down: pricing and wallets never reach into payrouter, Starlette or Redis."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("payrouter", "starlette", "redis", "uvicorn", "fastapi")


@pytest.mark.parametrize("package", ["pricing", "wallets"])
def test_no_forbidden_imports_in_source(package: str) -> None:
    offenders = []
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


@pytest.mark.parametrize("package", ["pricing", "wallets"])
def test_importing_loads_none_of_them(package: str) -> None:
    code = f"import sys, {package}; print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


@pytest.mark.parametrize("package", ["payrouter", "pricing", "wallets"])
def test_packages_are_typed(package: str) -> None:
    assert (ROOT / package / "py.typed").is_file()


@pytest.mark.parametrize("package", ["pricing", "wallets"])
def test_public_api_is_exported_and_documented(package: str) -> None:
    module = __import__(package)
    assert sorted(module.__all__) == module.__all__
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert (obj.__doc__ or "").strip(), f"{package}.{name} has no docstring"


def test_agent_sdk_stays_light() -> None:
    # agents import payrouter.client without pulling in the server, Redis, web3 or numpy
    code = (
        "import sys, payrouter.client; "
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('starlette', 'redis', 'uvicorn', 'fastapi', 'web3', 'numpy'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_client_api_is_exported_and_documented() -> None:
    import payrouter.client as client

    assert sorted(client.__all__) == client.__all__
    for name in client.__all__:
        obj = getattr(client, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert (obj.__doc__ or "").strip(), f"payrouter.client.{name} has no docstring"
