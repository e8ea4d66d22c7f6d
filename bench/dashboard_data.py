"""Cost of one dashboard refresh's history: reading the journal window and summing it.

Usage: .venv/bin/python bench/dashboard_data.py [--records 20000] [--redis-url URL] [--repeat 5]

Seeds ``--records`` settled call records spread over the last 24 hours into a fresh namespace of
the Redis (written as the gate writes them: open, then advance), then per window: a cold read
(`HistoryCache.calls` with nothing cached, then `history` in a thread, as the route runs it) and the longest pause of the event loop
during it, and a warm refresh (the cache re-reads the last minutes only); and the Prometheus
registry read.
The namespace is deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
from dataclasses import replace

import anyio.to_thread

from bench.hygiene import exit_on_sigterm
from bench.timing import percentile
from payrouter.dashboard.current import current_state, read_registry
from payrouter.dashboard.history import WINDOWS, HistoryCache, history
from payrouter.journal import PaymentRecord, RedisJournal, State
from payrouter.store.redis import connect
from tests.redis_keys import delete_namespace

MODELS = ["gpt-4o-mini", "gpt-4o", "claude-3-5-haiku", "claude-sonnet-4", "llama-3.1-8b"]
ROUTE = '{"requirements":{},"decision":{"model":"m","output_tokens":64,"strategy":"balanced","reason":"strategy"}}'


def _record(i: int, at: int) -> PaymentRecord:
    payer = f"0x{(i % 97):040x}"
    return PaymentRecord(
        id=f"exact:{payer}:0x{secrets.token_hex(32)}",
        scheme="exact",
        state=State.CLAIMED,
        owner="bench",
        payer=payer,
        pay_to="0x" + "b" * 40,
        asset="0x" + "c" * 40,
        network="eip155:31337",
        amount=1000 + i % 500,
        nonce="0x" + secrets.token_hex(32),
        valid_before=0,
        x402_version=2,
        payment="{}",
        fingerprint=secrets.token_hex(16),
        request=secrets.token_hex(16),
        path="/v1/chat/completions",
        stream=False,
        route=ROUTE,
        model=MODELS[i % len(MODELS)],
        created_at=at,
        updated_at=at,
    )


async def _seed(journal: RedisJournal, count: int, now_ms: int) -> None:
    span = 24 * 3600 * 1000

    async def one(i: int) -> None:
        record = _record(i, now_ms - span + (span * i) // count)
        await journal.open(record)
        settled = replace(record, state=State.SETTLED, charged=record.amount, upstream_cost=record.amount // 3)
        settled.settled_at = record.created_at
        await journal.advance(settled, [State.CLAIMED])

    for start in range(0, count, 50):  # the journal's pool holds a few dozen connections
        await asyncio.gather(*(one(i) for i in range(start, min(count, start + 50))))


async def _longest_pause(stop: asyncio.Event) -> float:
    """The longest the event loop went without running this task (ms): what a paid request
    arriving during the read would wait."""
    longest = 0.0
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        longest = max(longest, (now - last) * 1000 - 1)
        last = now
    return longest


async def main() -> None:
    parser = argparse.ArgumentParser(description="Cost of one dashboard refresh's history.")
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--cap", type=int, default=20_000, help="max_records of [dashboard]")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    namespace = f"payrouter-bench-dash-{secrets.token_hex(4)}"
    journal = RedisJournal(connect(args.redis_url), namespace)
    try:
        now_ms = int(time.time() * 1000)
        began = time.perf_counter()
        await _seed(journal, args.records, now_ms)
        print(f"seeded {args.records} records over 24 h in {time.perf_counter() - began:.1f} s")
        print("| window | records | cold read + sum p50 ms | longest loop pause ms | warm refresh p50 ms |")
        print("|---|---|---|---|---|")
        for window in WINDOWS.values():
            colds, pauses, warms, read = [], [], [], 0
            for i in range(args.repeat):
                cache = HistoryCache(args.cap)
                start, bucket = window.bounds(now_ms)
                stop = asyncio.Event()
                ticker = asyncio.create_task(_longest_pause(stop))
                t0 = time.perf_counter()
                calls, read, _complete = await cache.calls(journal, window, now_ms)
                await anyio.to_thread.run_sync(history, calls, start, now_ms, bucket)
                colds.append((time.perf_counter() - t0) * 1000)
                stop.set()
                pauses.append(await ticker)
                t0 = time.perf_counter()
                calls, _, _ = await cache.calls(journal, window, now_ms + 1000 * (i + 1))
                await anyio.to_thread.run_sync(history, calls, start, now_ms, bucket)
                warms.append((time.perf_counter() - t0) * 1000)
            print(
                f"| {window.name} | {read} | {statistics.median(colds):.0f} | {max(pauses):.0f} "
                f"| {statistics.median(warms):.1f} |"
            )
        samples = []
        for _ in range(50):
            t0 = time.perf_counter()
            current_state(read_registry())
            samples.append((time.perf_counter() - t0) * 1000)
        print(f"registry read + current state: p50 {percentile(samples, 0.5):.2f} ms")
    finally:
        await journal.close()
        delete_namespace(args.redis_url, namespace)


if __name__ == "__main__":
    exit_on_sigterm()  # a stopped run still deletes its namespace
    asyncio.run(main())
