"""The service config's ``request_log`` key."""

from __future__ import annotations

from pathlib import Path

import pytest

from payrouter.settings import ConfigError, load_settings
from tests.service_config import GAS_KEY_ENV, example_table, write_config
from wallets import LocalSigner

ENV = {GAS_KEY_ENV: LocalSigner.generate().unsafe_export_private_key()}


def _config(tmp_path: Path, line: str) -> Path:
    table = example_table("eip155:31337", "0x" + "11" * 20, "0x" + "22" * 20)
    path = write_config(tmp_path, table, "redis://127.0.0.1:6379/0", "ns", "http://127.0.0.1:8545")
    path.write_text(line + "\n" + path.read_text())
    return path


def test_off_by_default(tmp_path: Path) -> None:
    assert load_settings(_config(tmp_path, ""), ENV).request_log is None


def test_relative_to_the_config_file(tmp_path: Path) -> None:
    settings = load_settings(_config(tmp_path, 'request_log = "logs/requests.jsonl"'), ENV)
    assert settings.request_log == str(tmp_path / "logs/requests.jsonl")
    absolute = tmp_path / "elsewhere.jsonl"
    assert load_settings(_config(tmp_path, f'request_log = "{absolute}"'), ENV).request_log == str(absolute)


def test_dash_is_standard_output(tmp_path: Path) -> None:
    assert load_settings(_config(tmp_path, 'request_log = "-"'), ENV).request_log == "-"


def test_not_a_string_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="request_log"):
        load_settings(_config(tmp_path, "request_log = 3"), ENV)
