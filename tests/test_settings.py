"""Loading the service config: secrets from the environment, clear errors, nothing leaked."""

from __future__ import annotations

from pathlib import Path

import pytest

from payrouter.settings import ConfigError, ServerSettings, load_settings
from wallets import LocalSigner, save_keystore

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
GAS = "0x" + "42" * 32
ENV = {"PAYROUTER_GAS_KEY": GAS, "OPENAI_API_KEY": "sk-openai", "ANTHROPIC_API_KEY": "sk-ant", "TOGETHER_API_KEY": "t"}


def test_example_config_loads_with_secrets_from_env() -> None:
    settings = load_settings(EXAMPLES / "payrouter.toml", ENV)
    assert settings.facilitator == "local" and settings.rpc_url == "https://mainnet.base.org"
    assert settings.gas_key is not None and settings.gas_key.get_secret_value() == GAS
    assert settings.providers["openai"].api_key is not None
    assert settings.providers["openai"].api_key.get_secret_value() == "sk-openai"
    assert settings.server.port == 8402 and settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.server.model_dump() == ServerSettings(host="127.0.0.1", port=8402).model_dump()
    text = repr(settings) + str(settings) + settings.model_dump_json()
    for secret in ("42" * 32, "sk-openai", "sk-ant"):
        assert secret not in text


def test_missing_secret_names_the_variable() -> None:
    env = {k: v for k, v in ENV.items() if k != "OPENAI_API_KEY"}
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        load_settings(EXAMPLES / "payrouter.toml", env)


def _write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "prices.toml").write_text((EXAMPLES / "prices.toml").read_text())
    path = tmp_path / "payrouter.toml"
    path.write_text('price_table = "prices.toml"\n' + body)
    return path


PROVIDERS = "\n".join(
    f'[providers.{p}]\nbase_url = "http://127.0.0.1:1/v1"' for p in ("openai", "anthropic", "together")
)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (f'[facilitator]\nmode = "local"\n{PROVIDERS}', "needs rpc_url and a gas key"),
        (f'[facilitator]\nmode = "remote"\n{PROVIDERS}', "needs facilitator_url"),
        (f'[facilitator]\nmode = "remote"\nurl = "http://f"\n{PROVIDERS}', "needs rpc_url too"),
        (f'[facilitator]\nmode = "carrier-pigeon"\n{PROVIDERS}', "facilitator"),
        (
            f'[facilitator]\nmode = "remote"\nurl = "http://f"\nrpc_url = "http://r"\nbogus = 1\n{PROVIDERS}',
            "unknown keys in [facilitator]",
        ),
        (
            '[facilitator]\nmode = "remote"\nurl = "http://f"\nrpc_url = "http://r"\n[providers.openai]\nbase_url = "http://x"\n',
            "together",
        ),
        (
            f'max_body_bytes = 10\n[facilitator]\nmode = "remote"\nurl = "http://f"\nrpc_url = "http://r"\n{PROVIDERS}',
            "max_body_bytes",
        ),
        (
            f'colour = "blue"\n[facilitator]\nmode = "remote"\nurl = "http://f"\nrpc_url = "http://r"\n{PROVIDERS}',
            "colour",
        ),
        (
            f'[server]\nheader_timeout = 0\n[facilitator]\nmode = "remote"\nurl = "http://f"\nrpc_url = "http://r"\n{PROVIDERS}',
            "server.header_timeout",
        ),
        (
            f'[server]\nmax_concurrency = 0\n[facilitator]\nmode = "remote"\nurl = "http://f"\nrpc_url = "http://r"\n{PROVIDERS}',
            "server.max_concurrency",
        ),
        (
            f'[server]\nread_timeout = 5\n[facilitator]\nmode = "remote"\nurl = "http://f"\nrpc_url = "http://r"\n{PROVIDERS}',
            "server.read_timeout",
        ),
    ],
)
def test_invalid_configs_are_clear(tmp_path: Path, body: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        load_settings(_write(tmp_path, body), {})


def test_gas_key_from_keystore(tmp_path: Path) -> None:
    signer = LocalSigner.generate()
    save_keystore(signer, tmp_path / "gas.json", "pw", scrypt_n=2**10)
    path = _write(
        tmp_path,
        f'[facilitator]\nrpc_url = "http://127.0.0.1:8545"\ngas_keystore = "gas.json"\n'
        f'gas_keystore_password_env = "GAS_PW"\n{PROVIDERS}',
    )
    settings = load_settings(path, {"GAS_PW": "pw"})
    assert settings.gas_key is not None
    assert LocalSigner(settings.gas_key.get_secret_value()).address == signer.address
    with pytest.raises(Exception, match="wrong password"):
        load_settings(path, {"GAS_PW": "nope"})


def test_more_gas_wallets_from_env_and_keystores(tmp_path: Path) -> None:
    stored = [LocalSigner.generate() for _ in range(2)]
    for i, signer in enumerate(stored):
        save_keystore(signer, tmp_path / f"gas{i}.json", "pw", scrypt_n=2**10)
    from_env = LocalSigner.generate()
    path = _write(
        tmp_path,
        f'[facilitator]\nrpc_url = "http://127.0.0.1:8545"\ngas_key_env = "GAS"\ngas_keys_env = ["GAS_2"]\n'
        f'gas_keystores = ["gas0.json", "gas1.json"]\ngas_keystores_password_env = "GAS_PW"\n{PROVIDERS}',
    )
    env = {"GAS": GAS, "GAS_2": from_env.unsafe_export_private_key(), "GAS_PW": "pw"}
    settings = load_settings(path, env)
    addresses = [LocalSigner(k.get_secret_value()).address for k in settings.gas_keys]
    assert addresses == [from_env.address, stored[0].address, stored[1].address]
    assert from_env.unsafe_export_private_key()[2:] not in repr(settings) + settings.model_dump_json()
    with pytest.raises(ConfigError, match=r"GAS_2 \(facilitator.gas_keys_env\[0\]\)"):
        load_settings(path, {"GAS": GAS, "GAS_PW": "pw"})
    path.write_text(path.read_text().replace('["GAS_2"]', '"GAS_2"'))
    with pytest.raises(ConfigError, match="gas_keys_env must be a list"):
        load_settings(path, env)


def test_unreadable_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "nope.toml", {})
    (tmp_path / "bad.toml").write_text("price_table = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(tmp_path / "bad.toml", {})


def test_api_key_from_a_secrets_file(tmp_path: Path) -> None:
    (tmp_path / "openai.key").write_text("sk-from-file\n")
    providers = PROVIDERS.replace(
        '[providers.openai]\nbase_url = "http://127.0.0.1:1/v1"',
        '[providers.openai]\nbase_url = "http://127.0.0.1:1/v1"\napi_key_file = "openai.key"',
    )
    settings = load_settings(
        _write(tmp_path, f'[facilitator]\nmode = "remote"\nurl = "http://f"\nrpc_url = "http://r"\n{providers}'), {}
    )
    key = settings.providers["openai"].api_key
    assert key is not None and key.get_secret_value() == "sk-from-file"
    assert "sk-from-file" not in repr(settings)
    (tmp_path / "openai.key").unlink()
    with pytest.raises(ConfigError, match="api_key_file"):
        load_settings(tmp_path / "payrouter.toml", {})


def test_server_limits_load_from_the_config(tmp_path: Path) -> None:
    limits = (
        "header_timeout = 2.5\nbody_timeout = 20\nkeep_alive_timeout = 75\nmax_concurrency = 100\nworkers = 3\n"
        "unpaid_rate = 0.5\nunpaid_burst = 7\n"
    )
    path = _write(
        tmp_path,
        f'[server]\n{limits}[facilitator]\nmode = "remote"\nurl = "http://f"\nrpc_url = "http://r"\n{PROVIDERS}',
    )
    server = load_settings(path, {}).server
    assert server.model_dump() == {
        "host": "127.0.0.1",
        "port": 8402,
        "header_timeout": 2.5,
        "body_timeout": 20,
        "keep_alive_timeout": 75,
        "max_concurrency": 100,
        "workers": 3,
        "unpaid_rate": 0.5,
        "unpaid_burst": 7,
    }


def _channel_prices(tmp_path: Path) -> None:
    text = (
        (EXAMPLES / "prices.toml").read_text().replace('schemes = ["exact"]', 'schemes = ["batch-settlement", "exact"]')
    )
    (tmp_path / "prices.toml").write_text(text)


def test_channels_need_an_authorizer_key_unless_a_remote_facilitator_holds_one(tmp_path: Path) -> None:
    local = f'[facilitator]\nrpc_url = "http://127.0.0.1:8545"\ngas_key_env = "GAS"\n{PROVIDERS}'
    path = _write(tmp_path, local)
    _channel_prices(tmp_path)
    with pytest.raises(ConfigError, match="authorizer_key_env or authorizer_keystore"):
        load_settings(path, {"GAS": GAS})
    path.write_text(
        'price_table = "prices.toml"\n[channels]\nauthorizer_key_env = "AUTH"\nclaim_threshold = "2.50"\n' + local
    )
    with pytest.raises(ConfigError, match="AUTH"):
        load_settings(path, {"GAS": GAS})
    settings = load_settings(path, {"GAS": GAS, "AUTH": "0x" + "24" * 32})
    assert settings.channel_authorizer_key is not None and "24" * 32 not in repr(settings)
    assert str(settings.claim_threshold) == "2.50" and settings.claim_interval == 3600
    remote = f'[facilitator]\nmode = "remote"\nurl = "http://f"\nrpc_url = "http://r"\n{PROVIDERS}'
    # a remote facilitator settles channels too: with our authorizer key, or holding its own
    path.write_text('price_table = "prices.toml"\n[channels]\nauthorizer_key_env = "AUTH"\n' + remote)
    assert load_settings(path, {"AUTH": "0x" + "24" * 32}).channel_authorizer_key is not None
    path.write_text('price_table = "prices.toml"\n' + remote)
    with pytest.raises(ConfigError, match="facilitator_authorizer = true"):  # an opt-in: see its risk
        load_settings(path, {})
    path.write_text('price_table = "prices.toml"\n[channels]\nfacilitator_authorizer = true\n' + remote)
    settings = load_settings(path, {})
    assert settings.channel_authorizer_key is None and settings.channel_facilitator_authorizer
    path.write_text('price_table = "prices.toml"\n[channels]\nfacilitator_authorizer = true\n' + local)
    with pytest.raises(ConfigError, match="needs a remote facilitator"):
        load_settings(path, {"GAS": GAS})
    path.write_text('price_table = "prices.toml"\n[channels]\nauthorizer_key_env = "AUTH"\nbogus = 1\n' + local)
    with pytest.raises(ConfigError, match=r"unknown keys in \[channels\]"):
        load_settings(path, {"GAS": GAS, "AUTH": "0x" + "24" * 32})


def test_a_table_without_channels_reads_no_authorizer_secret() -> None:
    settings = load_settings(EXAMPLES / "payrouter.toml", ENV)  # [channels] names an unset variable
    assert settings.channel_authorizer_key is None
