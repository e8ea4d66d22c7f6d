"""``[dashboard]`` in the service config: off by default, a token from the environment, refused when weak."""

from __future__ import annotations

from pathlib import Path

import pytest

from payrouter.settings import ConfigError, load_settings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ENV = {"PAYROUTER_GAS_KEY": "0x" + "42" * 32, "OPENAI_API_KEY": "o", "ANTHROPIC_API_KEY": "a", "TOGETHER_API_KEY": "t"}
TOKEN = "d" * 40
PROVIDERS = "\n".join(
    f'[providers.{p}]\nbase_url = "http://127.0.0.1:1/v1"' for p in ("openai", "anthropic", "together")
)


def _config(tmp_path: Path, dashboard: str) -> Path:
    (tmp_path / "prices.toml").write_text((EXAMPLES / "prices.toml").read_text())
    path = tmp_path / "payrouter.toml"
    path.write_text(
        'price_table = "prices.toml"\n[facilitator]\nrpc_url = "http://127.0.0.1:1"\n'
        f'gas_key_env = "PAYROUTER_GAS_KEY"\n{PROVIDERS}\n{dashboard}'
    )
    return path


def test_off_without_the_section(tmp_path: Path) -> None:
    assert load_settings(_config(tmp_path, ""), ENV).dashboard.token is None


def test_example_configs_dashboard_block(tmp_path: Path) -> None:
    # the example documents the section commented out (the dashboard is off by default): uncommented, it loads
    lines = (EXAMPLES / "payrouter.toml").read_text().splitlines()
    start = lines.index("# [dashboard]")
    block = [line.removeprefix("# ") for line in lines[start : start + 4]]
    assert block[1] == 'token_env = "PAYROUTER_DASHBOARD_TOKEN"'
    path = _config(tmp_path, "\n".join(block) + "\n")
    settings = load_settings(path, {**ENV, "PAYROUTER_DASHBOARD_TOKEN": TOKEN})
    assert settings.dashboard.max_records == 20_000 and settings.dashboard.refresh_seconds == 5
    assert settings.dashboard.token is not None and settings.dashboard.token.get_secret_value() == TOKEN
    assert TOKEN not in repr(settings) + settings.model_dump_json()


def test_token_and_options_from_the_section(tmp_path: Path) -> None:
    path = _config(tmp_path, '[dashboard]\ntoken_env = "DASH"\nmax_records = 500\nrefresh_seconds = 2\n')
    dashboard = load_settings(path, {**ENV, "DASH": TOKEN}).dashboard
    assert dashboard.token is not None and dashboard.token.get_secret_value() == TOKEN
    assert (dashboard.max_records, dashboard.refresh_seconds) == (500, 2)


@pytest.mark.parametrize(
    ("section", "env", "fragment"),
    [
        ('token_env = "DASH"', {}, "DASH"),  # named but unset: an error, not a dashboard turned off
        ('token_env = "DASH"', {"DASH": "short"}, "at least 24 characters"),
        ('token_env = "DASH"\nbogus = 1', {"DASH": TOKEN}, "bogus"),
        ('token_env = "DASH"\nmax_records = 10', {"DASH": TOKEN}, "max_records"),
    ],
)
def test_refused(tmp_path: Path, section: str, env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as caught:
        load_settings(_config(tmp_path, f"[dashboard]\n{section}\n"), {**ENV, **env})
    for secret in env.values():
        assert secret not in str(caught.value)
