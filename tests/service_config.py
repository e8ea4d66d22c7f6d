"""Write a payrouter service config (and its price table) for tests that run the CLI."""

from __future__ import annotations

from pathlib import Path

from pricing import PriceTable, load_price_table
from tests.price_toml import price_table_toml

ROOT = Path(__file__).resolve().parents[1]
GAS_KEY_ENV = "TEST_GAS_KEY"


def example_table(network: str, asset: str, pay_to: str) -> PriceTable:
    """``examples/prices.toml`` paid on ``network`` in ``asset`` to ``pay_to``."""
    return load_price_table(ROOT / "examples/prices.toml").on_chain(network, asset, pay_to)


def write_config(folder: Path, table: PriceTable, redis_url: str, namespace: str, rpc_url: str) -> Path:
    """``folder/payrouter.toml`` with a local facilitator whose gas key is read from $TEST_GAS_KEY,
    and a placeholder upstream per provider (nothing here calls one); returns its path."""
    (folder / "prices.toml").write_text(price_table_toml(table.model_dump(mode="json")))
    providers = "\n".join(
        f'[providers.{p}]\nbase_url = "http://127.0.0.1:9/v1"' for p in sorted({m.provider for m in table.models})
    )
    path = folder / "payrouter.toml"
    path.write_text(
        f'price_table = "prices.toml"\nredis_url = "{redis_url}"\nnamespace = "{namespace}"\n'
        f'[facilitator]\nmode = "local"\nrpc_url = "{rpc_url}"\ngas_key_env = "{GAS_KEY_ENV}"\n{providers}\n'
    )
    return path
