"""Microbenchmarks of pricing on the paid path: token estimate and quote arithmetic.

Usage: .venv/bin/python bench/quote.py [--n 20000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.timing import per_op_us
from pricing import charge_for_usage, estimate_chat_input_tokens, load_price_table, quote_route

TABLE = Path(__file__).resolve().parent.parent / "examples" / "prices.toml"
MESSAGES = [
    {"role": "system", "content": "You are a careful assistant that answers briefly."},
    {"role": "user", "content": "Compare optimistic and zk rollups in terms of withdrawal latency and cost. " * 8},
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    n = parser.parse_args().n
    table = load_price_table(TABLE)
    rows = [
        ("estimate_chat_input_tokens (2 messages)", lambda: estimate_chat_input_tokens(MESSAGES)),
        ("quote_route", lambda: quote_route(table, "gpt-4o", 1200, 800)),
        ("charge_for_usage (capped)", lambda: charge_for_usage(table, "gpt-4o", 1200, 650, cap=10_000)),
    ]
    print(f"n={n}, best of 3")
    for label, fn in rows:
        print(f"{label:<42} {per_op_us(fn, n):8.2f} µs")


if __name__ == "__main__":
    main()
