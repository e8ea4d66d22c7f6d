"""``payrouter serve`` start-up, run as an operator runs it: every problem in one message, exit 2,
no traceback; a gas wallet that cannot pay for settlements is refused, a low one is warned about,
and ``/healthz`` reports the gas wallet."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from payrouter.devchain import DevChain, DevToken, free_port
from payrouter.facilitator.local import SETTLE_GAS_LIMIT
from payrouter.gas_funds import LOW_SETTLEMENTS
from tests.redis_keys import delete_namespace, run_token
from tests.service_config import GAS_KEY_ENV, example_table, write_config
from wallets import LocalSigner

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "payrouter"
REDIS_URL = "redis://127.0.0.1:6379/0"
EXAMPLE_ENV = ("PAYROUTER_GAS_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "TOGETHER_API_KEY")


def serve(config: Path, env: dict[str, str], *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in EXAMPLE_ENV and k != GAS_KEY_ENV}
    return subprocess.run(
        [str(CLI), "serve", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**clean, **env},
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def chain() -> Iterator[tuple[DevChain, DevToken]]:
    with DevChain.start() as dev:
        yield dev, dev.deploy_token()


@pytest.fixture
def namespace() -> Iterator[str]:
    ns = f"payrouter-test-{run_token()}"
    yield ns
    delete_namespace(REDIS_URL, ns)


def _dead_port_redis() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def test_every_config_problem_in_one_message(tmp_path: Path) -> None:
    """Four unset variables, Redis down and a node that does not answer: one run names all six."""
    (tmp_path / "prices.toml").write_text((ROOT / "examples/prices.toml").read_text())
    config = (ROOT / "examples/payrouter.toml").read_text()
    config = config.replace("redis://127.0.0.1:6379/0", _dead_port_redis())
    config = config.replace("https://mainnet.base.org", f"http://127.0.0.1:{free_port()}")
    (tmp_path / "payrouter.toml").write_text(config)
    result = serve(tmp_path / "payrouter.toml", {})
    assert result.returncode == 2, result.stderr
    err = result.stderr
    assert "Traceback" not in err
    assert err.startswith("payrouter serve: cannot start, 6 problems:"), err
    for variable in EXAMPLE_ENV:
        assert variable in err
    assert "Redis at redis://127.0.0.1:" in err and "does not answer" in err
    assert "the node at rpc_url http://127.0.0.1:" in err
    assert err.count("\n  - ") == 6  # one bullet line per problem


def test_wrong_chain_missing_router_file_and_redis_down_together(
    tmp_path: Path, chain: tuple[DevChain, DevToken]
) -> None:
    """A config whose gas key, chain, router file and Redis are all wrong: all four in one message."""
    dev, _token = chain
    text = (ROOT / "examples/prices.toml").read_text()
    assert '# predictor = "router.npz"' in text
    (tmp_path / "prices.toml").write_text(text.replace('# predictor = "router.npz"', 'predictor = "missing.npz"'))
    config = (ROOT / "examples/payrouter.toml").read_text()
    config = config.replace("redis://127.0.0.1:6379/0", _dead_port_redis())
    config = config.replace("https://mainnet.base.org", dev.rpc_url)  # chain 31337, the table wants 8453
    (tmp_path / "payrouter.toml").write_text(config)
    env = {name: "0xnot-a-key-11" if name.endswith("GAS_KEY") else "sk-test" for name in EXAMPLE_ENV}
    result = serve(tmp_path / "payrouter.toml", env)
    assert result.returncode == 2, result.stderr
    err = result.stderr
    assert "Traceback" not in err and "cannot start, 4 problems" in err, err
    assert "the gas key (facilitator.gas_key_env or gas_keystore) is not a private key" in err
    assert "missing.npz does not exist" in err and "payrouter router train" in err
    assert "does not answer" in err
    assert "serves chain 31337, the price table wants eip155:8453" in err
    assert "sk-test" not in err and "not-a-key" not in err


def test_prices_check_fails_on_a_missing_router_file(tmp_path: Path) -> None:
    text = (ROOT / "examples/prices.toml").read_text()
    (tmp_path / "prices.toml").write_text(text.replace('# predictor = "router.npz"', 'predictor = "missing.npz"'))
    result = subprocess.run(
        [str(CLI), "prices", "check", str(tmp_path / "prices.toml")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "missing.npz does not exist" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def _config(folder: Path, dev: DevChain, token: DevToken, namespace: str) -> Path:
    table = example_table(dev.network, token.address, LocalSigner.generate().address)
    return write_config(folder, table, REDIS_URL, namespace, dev.rpc_url)


def test_unfunded_gas_wallet_is_refused(tmp_path: Path, chain: tuple[DevChain, DevToken], namespace: str) -> None:
    dev, token = chain
    gas = LocalSigner.generate()  # never funded: 0 ETH
    result = serve(_config(tmp_path, dev, token, namespace), {GAS_KEY_ENV: gas.unsafe_export_private_key()})
    assert result.returncode == 2, result.stderr
    err = result.stderr
    assert "Traceback" not in err and "cannot start, 1 problem:" in err, err
    assert f"gas wallet {gas.address} holds 0 ETH (0 wei): enough for 0 settlements" in err
    assert f"send the chain's native coin (ETH) to {gas.address}" in err
    assert gas.unsafe_export_private_key()[2:] not in err


def test_every_gas_wallet_is_checked(tmp_path: Path, chain: tuple[DevChain, DevToken], namespace: str) -> None:
    """With several gas wallets (gas_keys_env), an unfunded second one is refused by name."""
    dev, token = chain
    funded, broke = dev.new_account(), LocalSigner.generate()
    config = _config(tmp_path, dev, token, namespace)
    text = config.read_text()
    config.write_text(
        text.replace(
            f'gas_key_env = "{GAS_KEY_ENV}"\n', f'gas_key_env = "{GAS_KEY_ENV}"\ngas_keys_env = ["TEST_GAS_KEY_2"]\n'
        )
    )
    env = {GAS_KEY_ENV: funded.unsafe_export_private_key(), "TEST_GAS_KEY_2": broke.unsafe_export_private_key()}
    result = serve(config, env)
    assert result.returncode == 2 and "cannot start, 1 problem:" in result.stderr, result.stderr
    assert f"gas wallet {broke.address} holds 0 ETH" in result.stderr and funded.address not in result.stderr


def _wait_healthz(url: str, proc: subprocess.Popen[bytes], log: Path) -> httpx.Response:
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(f"{url}/healthz", timeout=2)
        except httpx.HTTPError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)


def test_low_gas_wallet_warns_and_healthz_reports_it(
    tmp_path: Path, chain: tuple[DevChain, DevToken], namespace: str
) -> None:
    """A wallet good for a few settlements starts with a WARNING; /healthz says "low" (200), and
    "empty" (503) once the wallet is drained."""
    dev, token = chain
    gas = LocalSigner.generate()
    max_fee = 2 * int(dev.rpc("eth_getBlockByNumber", ["latest", False])["baseFeePerGas"], 16) + 10**9
    dev.set_eth_balance(gas.address, 5 * SETTLE_GAS_LIMIT * max_fee)  # ~5 settlements
    config = _config(tmp_path, dev, token, namespace)
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, GAS_KEY_ENV: gas.unsafe_export_private_key()}
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [str(CLI), "serve", "--config", str(config), "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        health = _wait_healthz(url, proc, log)
        assert health.status_code == 200, health.text
        body = health.json()
        assert body["checks"]["gas_wallet"] == "low"
        [wallet] = body["gas"]
        assert wallet["address"] == gas.address and wallet["state"] == "low"
        assert 0 < wallet["settlements"] < LOW_SETTLEMENTS
        text = log.read_text()
        assert "WARNING" in text and f"gas wallet low: gas wallet {gas.address} holds" in text
        dev.set_eth_balance(gas.address, 0)
        drained = httpx.get(f"{url}/healthz", timeout=5)
        assert drained.status_code == 503
        assert drained.json()["checks"]["gas_wallet"] == "empty" and drained.json()["gas"][0]["balance_wei"] == "0"
    finally:
        proc.terminate()
        proc.wait(15)


def test_a_facilitator_without_the_authorizer_it_should_hold_is_refused(tmp_path: Path) -> None:
    """Channels signed by the facilitator (opt-in), but its /supported names no authorizer."""
    from payrouter.sandbox.serving import serve_in_thread
    from tests.integration.official_facilitator import facilitator_app

    prices = (ROOT / "examples/prices.toml").read_text()
    (tmp_path / "prices.toml").write_text(
        prices.replace('schemes = ["exact"]', 'schemes = ["batch-settlement", "exact"]')
    )
    app, calls = facilitator_app(
        LocalSigner.generate().unsafe_export_private_key(), "http://127.0.0.1:9", "eip155:8453", "t", channels=True
    )
    with serve_in_thread(app) as url:
        config = (ROOT / "examples/payrouter.toml").read_text()
        config = config.replace('\nmode = "local"', f'\nmode = "remote"\nurl = "{url}"')
        config = config.replace(
            'authorizer_key_env = "PAYROUTER_CHANNEL_AUTHORIZER_KEY"', "facilitator_authorizer = true"
        )
        (tmp_path / "payrouter.toml").write_text(config)
        env = dict.fromkeys(EXAMPLE_ENV, "sk-test")
        result = serve(tmp_path / "payrouter.toml", env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "the facilitator holds no receiver authorizer key for batch-settlement" in result.stderr, result.stderr
    assert calls["supported"] >= 1
