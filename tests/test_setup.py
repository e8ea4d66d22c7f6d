"""scripts/setup: the npm step installs exactly the tracked lockfile and never rewrites it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup(*steps: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "scripts/setup"), *steps],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_node_step_leaves_the_lockfile_byte_for_byte(tmp_path: Path) -> None:
    """On a fresh copy (no node_modules, as on a fresh clone): npm ci installs anvil and the lock is untouched."""
    for name in ("package.json", "package-lock.json"):
        shutil.copy(ROOT / "contracts" / name, tmp_path / name)
    lock = (ROOT / "contracts/package-lock.json").read_bytes()

    done = _setup("node", env={"SETUP_CONTRACTS_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert "npm ci" in done.stderr
    assert (tmp_path / "package-lock.json").read_bytes() == lock
    (anvil,) = tmp_path.glob("node_modules/@foundry-rs/anvil-*/bin/anvil")
    assert subprocess.run([anvil, "--version"], capture_output=True, timeout=30).returncode == 0

    again = _setup("node", env={"SETUP_CONTRACTS_DIR": str(tmp_path)})
    assert again.returncode == 0 and "npm ci" not in again.stderr, "a second run has nothing to do"
    assert (tmp_path / "package-lock.json").read_bytes() == lock


def test_the_lockfile_names_anvil_for_every_platform() -> None:
    """Why npm ci accepts the lock everywhere: each platform's optional binary package is in it."""
    packages = json.loads((ROOT / "contracts/package-lock.json").read_text())["packages"]
    wanted = packages["node_modules/@foundry-rs/anvil"]["optionalDependencies"]
    assert wanted and all(f"node_modules/{name}" in packages for name in wanted)


def test_an_unknown_step_is_refused() -> None:
    done = _setup("nonsense")
    assert done.returncode == 2 and "unknown step nonsense" in done.stderr
