"""Write price tables as TOML for tests that start payrouter from files."""

from __future__ import annotations

from typing import Any


def toml_value(value: Any) -> str:
    """A TOML literal for a JSON-like value (None entries of inline tables are left out)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items() if v is not None) + " }"
    raise TypeError(type(value))


def price_table_toml(data: dict[str, Any]) -> str:
    """A price table (as plain data, e.g. ``PriceTable.model_dump(mode="json")``) as a TOML file."""
    lines = [f"{k} = {toml_value(v)}" for k, v in data.items() if k not in ("asset", "models") and v is not None]
    lines += ["[asset]", *(f"{k} = {toml_value(v)}" for k, v in data["asset"].items())]
    for model in data["models"]:
        lines += ["[[models]]", *(f"{k} = {toml_value(v)}" for k, v in model.items() if v is not None)]
    return "\n".join(lines) + "\n"
