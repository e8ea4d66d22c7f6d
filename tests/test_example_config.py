"""examples/payrouter.toml documents every key a service config accepts.

The keys are read off the code, so a new setting fails this test until it is documented: the
fields of the settings models (under the names the file uses) and every key `load_settings` takes
out of the file itself (``*_env``, ``*_file``, keystores). A key counts as documented when the
example names it in an assignment, commented out or not (``# gas_keystore = "gas.json"``).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from pydantic import BaseModel

from payrouter import settings

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "payrouter.toml"
# model fields the file spells otherwise (the loader turns secrets' sources into values)
FILE_NAMES = {
    "facilitator": "mode",
    "facilitator_url": "url",
    "facilitator_headers": "headers_env",
    "gas_key": "gas_key_env",
    "gas_keys": "gas_keys_env",
    "channel_authorizer_key": "authorizer_key_env",
    "channel_facilitator_authorizer": "facilitator_authorizer",
    "api_key": "api_key_env",
    "token": "token_env",
}
NOT_IN_FILES = {"price_table_path"}  # set by load_settings: the file the price table came from


def _model_keys() -> set[str]:
    keys: set[str] = set()
    for model in vars(settings).values():
        if inspect.isclass(model) and issubclass(model, BaseModel) and model.__module__ == settings.__name__:
            keys |= {FILE_NAMES.get(name, name) for name in model.model_fields} - NOT_IN_FILES
    return keys


def _loader_keys() -> set[str]:
    source = inspect.getsource(settings.load_settings)
    keys = set(re.findall(r'\.pop\(\s*"([a-z_]+)"', source))
    for group in re.findall(r"for name in \(([^)]*)\)", source):
        keys |= set(re.findall(r'"([a-z_]+)"', group))
    return keys


def _documented() -> set[str]:
    text = EXAMPLE.read_text()
    assigned = set(re.findall(r"^[#\s]*([a-z_]+)\s*=", text, re.M))
    sections = set(re.findall(r"^[#\s]*\[([a-z_]+)[\].]", text, re.M))
    return assigned | sections


def test_every_key_the_settings_accept_is_documented_in_the_example() -> None:
    expected = _model_keys() | _loader_keys()
    assert {"kind", "connect_timeout", "first_byte_timeout", "api_key_file", "reconcile_interval"} <= expected
    missing = sorted(expected - _documented())
    assert missing == [], f"examples/payrouter.toml does not document: {missing}"


def test_the_example_documents_no_key_the_settings_refuse() -> None:
    unknown = sorted(_documented() - _model_keys() - _loader_keys() - {"providers", "channels"})
    assert unknown == [], f"examples/payrouter.toml names keys no setting reads: {unknown}"
