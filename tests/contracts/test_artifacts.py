"""The committed artifact is exactly what the pinned compiler makes of the committed source."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from payrouter.artifacts import load_artifact

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"


def test_committed_artifact_matches_source() -> None:
    node = shutil.which("node")
    assert node, "node is required to rebuild the contracts (scripts/setup installs it)"
    result = subprocess.run([node, "build.mjs", "--check"], cwd=CONTRACTS, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_artifact_exposes_the_eip3009_surface() -> None:
    abi = load_artifact("DevUSDC")["abi"]
    signatures = {f"{e['name']}({','.join(i['type'] for i in e['inputs'])})" for e in abi if e["type"] == "function"}
    for expected in [
        "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)",
        "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)",
        "receiveWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)",
        "receiveWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)",
        "cancelAuthorization(address,bytes32,uint8,bytes32,bytes32)",
        "cancelAuthorization(address,bytes32,bytes)",
        "authorizationState(address,bytes32)",
        "DOMAIN_SEPARATOR()",
        "version()",
        "mint(address,uint256)",
    ]:
        assert expected in signatures
