"""Sealed quotes: a token opens only for its own request, untouched, before it expires, under a
key every instance sharing the store reads (and across a key rotation)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import replace

import pytest

from payrouter.chat import parse_chat_request
from payrouter.quote_seal import EPOCH_SECONDS, QuoteSeal
from payrouter.quoting import PricedRoute, Quoter
from payrouter.routing import RoutingEngine
from payrouter.sandbox.dev import EXAMPLE_TABLE
from payrouter.store import MemoryStore
from pricing import load_price_table
from wallets import LocalSigner

DIGEST = "ab" * 32


@pytest.fixture(scope="module")
def quoter() -> Quoter:
    table = load_price_table(EXAMPLE_TABLE).on_chain(
        "eip155:31337", "0x5FbDB2315678afecb367f032d93F642f64180aa3", LocalSigner.generate().address
    )
    return Quoter(table, RoutingEngine())


def _priced(quoter: Quoter, max_tokens: int = 300) -> PricedRoute:
    body = {"model": "gpt-4o-mini", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]}
    request, _ = parse_chat_request(json.dumps(body).encode())
    return quoter.price(request)


def _token(priced: PricedRoute) -> str:
    return str(priced.requirements.extra["quote"])


def _run(coro):
    return asyncio.run(coro)


def test_a_sealed_quote_opens_to_the_same_route_and_offer(quoter: Quoter) -> None:
    seal = QuoteSeal(MemoryStore())
    priced = _priced(quoter)
    sealed = _run(seal.seal(DIGEST, priced))
    opened = _run(seal.open(_token(sealed), DIGEST, quoter))
    assert opened is not None
    assert opened.quote == priced.quote
    assert (opened.decision.model, opened.decision.output_tokens, opened.decision.fallbacks) == (
        priced.decision.model,
        priced.decision.output_tokens,
        priced.decision.fallbacks,
    )
    assert (opened.decision.rule, opened.decision.arm) == (priced.decision.rule, priced.decision.arm)
    assert opened.decision.candidates == priced.decision.candidates[:8] and opened.decision.candidates
    # the offer a payer echoes is the one rebuilt: same terms, same token
    assert opened.requirements.to_v2()["amount"] == sealed.requirements.to_v2()["amount"]
    assert opened.requirements.extra["quote"] == sealed.requirements.extra["quote"]


def test_another_instance_on_the_same_store_opens_it(quoter: Quoter) -> None:
    store = MemoryStore()

    async def go() -> PricedRoute | None:
        sealed = await QuoteSeal(store).seal(DIGEST, _priced(quoter))
        return await QuoteSeal(store).open(_token(sealed), DIGEST, quoter)

    assert _run(go()) is not None


def test_an_instance_on_another_store_does_not(quoter: Quoter) -> None:
    async def go() -> PricedRoute | None:
        sealed = await QuoteSeal(MemoryStore()).seal(DIGEST, _priced(quoter))
        other = QuoteSeal(MemoryStore())
        await other.seal(DIGEST, _priced(quoter))  # it has a key of its own for the epoch
        return await other.open(_token(sealed), DIGEST, quoter)

    assert _run(go()) is None


def test_it_is_bound_to_its_request(quoter: Quoter) -> None:
    seal = QuoteSeal(MemoryStore())
    sealed = _run(seal.seal(DIGEST, _priced(quoter)))
    assert _run(seal.open(_token(sealed), "cd" * 32, quoter)) is None


@pytest.mark.parametrize("field", ["a", "c", "m", "o", "e"])
def test_a_changed_field_breaks_the_seal(quoter: Quoter, field: str) -> None:
    seal = QuoteSeal(MemoryStore())
    token = _token(_run(seal.seal(DIGEST, _priced(quoter))))
    prefix, epoch, body, tag = token.split(".")
    fields = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    fields[field] = {"a": 1, "c": 0, "m": "gpt-4o", "o": 1, "e": fields["e"] + 3600}[field]
    changed = base64.urlsafe_b64encode(json.dumps(fields).encode()).rstrip(b"=").decode()
    assert _run(seal.open(".".join((prefix, epoch, changed, tag)), DIGEST, quoter)) is None


@pytest.mark.parametrize(
    "token", [None, 7, "", "q1", "q1.x.y.z", "q2.1.e30.AA", "q1.1.e30.AA", "q1.99999999.e30.AA", "x" * 5000]
)
def test_garbage_is_no_quote(quoter: Quoter, token: object) -> None:
    assert _run(QuoteSeal(MemoryStore()).open(token, DIGEST, quoter)) is None


def test_it_expires_with_the_quote(quoter: Quoter) -> None:
    seal = QuoteSeal(MemoryStore())
    priced = _priced(quoter)
    lifetime = priced.requirements.max_timeout_seconds
    now = time.time()
    sealed = _run(seal.seal(DIGEST, priced, now=now))
    assert _run(seal.open(_token(sealed), DIGEST, quoter, now=now + lifetime - 1)) is not None
    assert _run(seal.open(_token(sealed), DIGEST, quoter, now=now + lifetime + 1)) is None


def test_quotes_in_flight_survive_a_key_rotation(quoter: Quoter) -> None:
    store = MemoryStore()
    # issued in the last second of an epoch, paid in the next one (a new key signs by then)
    end_of_epoch = (int(time.time()) // EPOCH_SECONDS + 1) * EPOCH_SECONDS - 1

    async def go() -> tuple[PricedRoute | None, str, str]:
        old = await QuoteSeal(store).seal(DIGEST, _priced(quoter), now=end_of_epoch)
        later = QuoteSeal(store)
        new = await later.seal(DIGEST, _priced(quoter), now=end_of_epoch + 2)
        return await later.open(_token(old), DIGEST, quoter, now=end_of_epoch + 2), _token(old), _token(new)

    opened, old, new = _run(go())
    assert opened is not None
    assert old.split(".")[1] != new.split(".")[1]  # signed under another epoch's key


def test_a_token_two_epochs_old_is_refused_even_if_unexpired(quoter: Quoter) -> None:
    seal = QuoteSeal(MemoryStore())
    now = time.time()
    sealed = _run(seal.seal(DIGEST, _priced(quoter), now=now - 2 * EPOCH_SECONDS))
    assert _run(seal.open(_token(sealed), DIGEST, quoter, now=now)) is None


def test_a_model_gone_from_the_table_is_no_quote(quoter: Quoter) -> None:
    seal = QuoteSeal(MemoryStore())
    sealed = _run(seal.seal(DIGEST, _priced(quoter)))
    table = quoter.table
    kept = [m.model_dump(mode="json") for m in table.models if m.id != sealed.decision.model]
    smaller = type(table).model_validate(
        {**table.model_dump(mode="json"), "models": kept, "default_model": kept[0]["id"]}
    )
    assert _run(seal.open(_token(sealed), DIGEST, Quoter(smaller, RoutingEngine()))) is None


def test_keys_stay_out_of_the_repr(quoter: Quoter) -> None:
    store = MemoryStore()
    seal = QuoteSeal(store)
    _run(seal.seal(DIGEST, _priced(quoter)))
    key = _run(store.get(f"quote-key:{int(time.time()) // EPOCH_SECONDS}"))
    assert key is not None and key.decode() not in repr(seal)


def test_a_split_decision_keeps_its_rule_and_arm(quoter: Quoter) -> None:
    seal = QuoteSeal(MemoryStore())
    priced = _priced(quoter)
    split = replace(priced, decision=replace(priced.decision, rule="canary", arm="trial"))
    opened = _run(seal.open(_token(_run(seal.seal(DIGEST, split))), DIGEST, quoter))
    assert opened is not None and (opened.decision.rule, opened.decision.arm) == ("canary", "trial")
