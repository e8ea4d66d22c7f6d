"""Compiled contract artifacts (ABI + bytecode) committed under ``contracts/artifacts``."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["ArtifactNotFoundError", "load_artifact"]

# Wheels carry the artifacts inside the package (see pyproject force-include); a source
# checkout or editable install reads them from the repository.
_SEARCH = (
    Path(__file__).resolve().parent / "_artifacts",
    Path(__file__).resolve().parent.parent / "contracts" / "artifacts",
)


class ArtifactNotFoundError(FileNotFoundError):
    """No compiled artifact of that name is installed."""


@cache
def load_artifact(name: str) -> dict[str, Any]:
    """Return the artifact ``{"contractName", "abi", "bytecode", ...}`` of contract ``name``.

    Raises:
        ArtifactNotFoundError: no ``<name>.json`` in the installed or repository artifacts.
    """
    for folder in _SEARCH:
        path = folder / f"{name}.json"
        if path.is_file():
            data: dict[str, Any] = json.loads(path.read_text())
            return data
    raise ArtifactNotFoundError(f"no compiled artifact {name}.json (run: node contracts/build.mjs)")
