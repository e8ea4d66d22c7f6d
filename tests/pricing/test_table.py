"""Price tables: the example loads, and every kind of bad table is refused naming its field."""

from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pricing import PriceTableError, UnknownModelError, load_price_table, parse_price_table

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "prices.toml"

VALID: dict[str, Any] = {
    "network": "eip155:31337",
    "pay_to": "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
    "default_model": "small",
    "asset": {"address": "0x5FbDB2315678afecb367f032d93F642f64180aa3", "decimals": 6},
    "models": [
        {
            "id": "small",
            "provider": "local",
            "upstream_model": "tiny-1",
            "input_per_mtok": "0.10",
            "output_per_mtok": "0.40",
            "context_window": 8192,
            "max_output_tokens": 2048,
            "quality": {"general": 40},
        }
    ],
}


def _with(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(VALID)
    node: Any = data
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    for key in keys[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return data


_DELETE = object()


def test_example_table_loads() -> None:
    table = load_price_table(EXAMPLE)
    assert table.network == "eip155:8453" and table.chain_id == 8453
    assert table.asset.decimals == 6 and table.asset.name == "USD Coin" and table.asset.version == "2"
    assert table.model("gpt-4o").input_per_mtok == Decimal("2.50")
    assert {m.id for m in table.models} >= {table.default_model}
    assert all("general" in m.quality for m in table.models)


def test_defaults() -> None:
    table = parse_price_table(VALID)
    model = table.model("small")
    assert (model.markup, model.request_fee, model.min_charge) == (Decimal(0), Decimal(0), Decimal(0))
    assert table.max_timeout_seconds == 300
    assert (table.asset.name, table.asset.version) == ("USD Coin", "2")
    with pytest.raises(UnknownModelError, match="'large'"):
        table.model("large")


@pytest.mark.parametrize(
    ("path", "value", "field", "message"),
    [
        ("network", "base", "network", "CAIP-2"),
        ("network", "eip155:0", "network", "CAIP-2"),
        ("network", 8453, "network", "string"),
        ("pay_to", "0x1234", "pay_to", "20-byte hex address"),
        ("pay_to", "0x90F79bf6EB2c4f870365E785982E1f101E93b907", "pay_to", None),
        ("pay_to", "0x90f79bf6EB2c4f870365E785982E1f101E93b906", "pay_to", "checksum"),
        ("pay_to", _DELETE, "pay_to", "required field is missing"),
        ("asset.decimals", "6", "asset.decimals", "integer"),
        ("asset.decimals", 6.0, "asset.decimals", "integer"),
        ("asset.decimals", 99, "asset.decimals", "less than or equal"),
        ("asset.address", "USDC", "asset.address", "address"),
        ("default_model", "large", "<table>", "default_model 'large' is not one of the models"),
        ("models", [], "models", "at least 1"),
        ("models.0.input_per_mtok", 0.1, "models[0].input_per_mtok", "floats lose cents"),
        ("models.0.input_per_mtok", "-0.1", "models[0].input_per_mtok", "non-negative decimal"),
        ("models.0.output_per_mtok", "1e-3", "models[0].output_per_mtok", "decimal string"),
        ("models.0.output_per_mtok", "NaN", "models[0].output_per_mtok", "decimal string"),
        ("models.0.markup", "101", "models[0].markup", "less than or equal"),
        ("models.0.request_fee", 1, "models[0].request_fee", "got int"),
        ("models.0.min_charge", "0.0000000000000000001", "models[0].min_charge", "decimal string"),
        ("models.0.id", "auto", "models[0].id", "reserved"),
        ("models.0.id", "has space", "models[0].id", "letters, digits"),
        ("models.0.context_window", 0, "models[0].context_window", "greater than 0"),
        ("models.0.max_output_tokens", 9000, "models[0]", "max_output_tokens cannot exceed context_window"),
        ("models.0.quality", {"code": 50}, "models[0]", '"general" score'),
        ("models.0.quality", {"general": 101}, "models[0].quality.general", "less than or equal"),
        ("models.0.capabilities", ["telepathy"], "models[0].capabilities[0]", "'tools'"),
        ("models.0.inptu_per_mtok", "0.1", "models[0].inptu_per_mtok", "unknown field"),
        ("max_timeout_seconds", 5, "max_timeout_seconds", "greater than or equal to 30"),
    ],
)
def test_bad_tables_name_the_field(path: str, value: Any, field: str, message: str | None) -> None:
    with pytest.raises(PriceTableError) as info:
        parse_price_table(_with(path, value), source="t.toml")
    fields = {f for f, _ in info.value.problems}
    assert field in fields, info.value.problems
    if message:
        assert any(message in m for f, m in info.value.problems if f == field), info.value.problems
    assert "t.toml" in str(info.value)


def test_duplicate_model_ids() -> None:
    data = copy.deepcopy(VALID)
    data["models"].append(copy.deepcopy(data["models"][0]))
    with pytest.raises(PriceTableError, match="'small' appears more than once"):
        parse_price_table(data)


def test_every_problem_is_reported_at_once() -> None:
    data = _with("network", "base")
    data["models"][0]["markup"] = 0.5
    data["asset"]["decimals"] = -1
    with pytest.raises(PriceTableError) as info:
        parse_price_table(data)
    assert {f for f, _ in info.value.problems} == {"network", "models[0].markup", "asset.decimals"}


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(PriceTableError, match="cannot read"):
        load_price_table(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("network = \n")
    with pytest.raises(PriceTableError, match="<toml>"):
        load_price_table(bad)


def test_table_is_immutable() -> None:
    table = parse_price_table(VALID)
    with pytest.raises(ValueError, match="frozen"):
        table.models[0].markup = Decimal(5)


def test_streaming_policy_limits_in_atomic_units() -> None:
    data = {
        **copy.deepcopy(VALID),
        "streaming": {
            "settlement": "before_first_byte",
            "max_unconfirmed_per_payer": "0.25",
            "max_unconfirmed_total": "3",
        },
    }
    table = parse_price_table(data)
    assert table.streaming.settlement == "before_first_byte"
    assert table.unconfirmed_limits() == (250_000, 3_000_000)
    assert parse_price_table(copy.deepcopy(VALID)).streaming.settlement == "during_stream"
    with pytest.raises(PriceTableError, match="floats lose cents"):
        parse_price_table({**copy.deepcopy(VALID), "streaming": {"max_unconfirmed_total": 3.0}})


def test_removed_after_stream_setting_is_explained() -> None:
    with pytest.raises(PriceTableError, match="let a payer take a whole stream for free"):
        parse_price_table({**copy.deepcopy(VALID), "streaming_settlement": "after_stream"})
