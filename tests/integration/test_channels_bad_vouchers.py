"""Bad batch-settlement vouchers are refused with the x402 reasons, before any model call.

Every voucher here is really signed (`wallets.channels`); each is wrong in one way. A refusal
must leave the model uncalled, the channel's charge unchanged and the payer's tokens where
they were.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from web3 import Web3

from payrouter.artifacts import load_artifact
from payrouter.sandbox.dev import Sandbox
from payrouter.store import keys
from tests.redis_keys import REDIS_URL
from wallets import LocalSigner
from wallets.channels import BATCH_SETTLEMENT_ADDRESS, ChannelConfig

from .channel_payloads import batch_offer, config_for, opening_payment, refund_payment, voucher_payment
from .claims import claim_pass
from .conftest import Observer
from .payments import header, offer, rejection, sse_events


@dataclass
class Channel:
    payer: LocalSigner
    config: ChannelConfig
    charged: int


def _body() -> dict[str, Any]:
    return {"model": "gpt-4o", "max_tokens": 60, "messages": [{"role": "user", "content": secrets.token_hex(4)}]}


def _url(box: Sandbox) -> str:
    return f"{box.router_url}/v1/chat/completions"


def _pay(box: Sandbox, http: httpx.Client, channel: Channel, body: dict[str, Any], **kw: Any) -> httpx.Response:
    """Pay ``body`` with a correct voucher on ``channel`` unless ``kw`` makes it wrong."""
    quote = offer(http, _url(box), body)
    amount = int(batch_offer(quote)["amount"])
    signed_max = kw.pop("signed_max", channel.charged + amount)
    signer = kw.pop("signer", channel.payer)
    payment = voucher_payment(quote, channel.config, signed_max, signer, chain_id=box.chain.chain_id, **kw)
    return http.post(_url(box), json=body, headers=header(payment))


def _next_voucher(box: Sandbox, channel: Channel, quote: dict[str, Any]) -> dict[str, Any]:
    """The channel's correct next voucher for ``quote``."""
    amount = int(batch_offer(quote)["amount"])
    return voucher_payment(quote, channel.config, channel.charged + amount, channel.payer, chain_id=box.chain.chain_id)


def _charged(response: httpx.Response) -> int:
    receipt = json.loads(base64.b64decode(response.headers["payment-response"]))
    return int(receipt["extra"]["channelState"]["chargedCumulativeAmount"])


@pytest.fixture(scope="module")
def channel(box: Sandbox) -> Iterator[Channel]:
    """A channel opened by a real deposit, and one voucher paid on it."""
    payer = LocalSigner.generate()
    box.token.mint(payer.address, 10_000_000)
    with httpx.Client(timeout=30) as http:
        body = _body()
        quote = offer(http, _url(box), body)
        requirement = batch_offer(quote)
        config = config_for(requirement, payer)
        payment = opening_payment(quote, config, payer, chain_id=box.chain.chain_id, token_domain=box.token.domain)
        response = http.post(_url(box), json=body, headers=header(payment))
        assert response.status_code == 200, response.text
        # the deposit's receipt names its transaction and amount, as the spec asks
        receipt = json.loads(base64.b64decode(response.headers["payment-response"]))
        deposit = int(requirement["extra"]["minDeposit"])
        assert (
            receipt["amount"] == str(deposit)
            and box.chain.w3.eth.get_transaction_receipt(receipt["transaction"])["status"] == 1
        )
        assert receipt["extra"]["channelState"]["balance"] == str(deposit)
        yield Channel(payer, config, _charged(response))


def _refused(
    box: Sandbox, http: httpx.Client, observer: Observer, channel: Channel, reason: str, **kw: Any
) -> dict[str, Any]:
    with observer.unchanged(channel.payer.address, box.operator.address):
        response = _pay(box, http, channel, _body(), **kw)
        assert rejection(response) == (402, reason), response.text
    # the reservation is sent before the voucher is verified: a refused one has given the
    # channel back by the time its refusal arrives
    key = f"{box.namespace}:{keys.channel('0x' + channel.config.channel_id(box.chain.chain_id).hex())}"
    with redis.Redis.from_url(REDIS_URL) as store:
        assert store.hget(key, "pending") == b""
    # the channel still takes the correct next voucher: nothing was charged
    ok = _pay(box, http, channel, _body())
    assert ok.status_code == 200, ok.text
    channel.charged = _charged(ok)
    required: dict[str, Any] = json.loads(base64.b64decode(response.headers["PAYMENT-REQUIRED"]))
    return required


def test_the_correct_voucher_is_charged_what_it_used(box: Sandbox, http: httpx.Client, channel: Channel) -> None:
    before = channel.charged
    response = _pay(box, http, channel, _body())
    assert response.status_code == 200
    assert response.headers.get_list("content-length") == [str(len(response.content))]  # once
    usage = response.json()["usage"]["payrouter"]
    assert usage["pricing"] == "usage" and _charged(response) == before + int(usage["charged"])
    channel.charged = _charged(response)


def test_the_receipt_sent_before_the_commits_reply_names_what_the_store_holds(
    box: Sandbox, http: httpx.Client, channel: Channel
) -> None:
    # The commit is written before the answer and its reply read after it, so the receipt's
    # channelState is worked out from the reservation: it must be exactly what the store then
    # holds, and the charge must already be there when the answer arrives.
    cid = channel.config.channel_id(box.chain.chain_id)
    key = f"{box.namespace}:{keys.channel('0x' + cid.hex())}"
    with redis.Redis.from_url(REDIS_URL) as store:
        for _ in range(20):
            response = _pay(box, http, channel, _body())
            assert response.status_code == 200, response.text
            stored = store.hmget(key, "charged", "pending", "signed_max")
            assert stored[0] == str(_charged(response)).encode() and stored[1] == b"", (stored, response.headers)
            channel.charged = _charged(response)


def test_wrong_signer(box: Sandbox, http: httpx.Client, observer: Observer, channel: Channel) -> None:
    _refused(
        box, http, observer, channel, "invalid_batch_settlement_evm_voucher_signature", signer=LocalSigner.generate()
    )


def test_a_forged_voucher_never_reaches_the_store(
    box: Sandbox, http: httpx.Client, observer: Observer, channel: Channel
) -> None:
    # Anyone can name a channel and its charged amount (0 on a new channel, the claimed total
    # after a claim): a forged voucher must be refused before anything is reserved, or it could
    # hold another payer's channel busy. Redis's MONITOR sees every command meanwhile.
    key = f"{box.namespace}:{keys.channel('0x' + channel.config.channel_id(box.chain.chain_id).hex())}"
    marker = f"forged-voucher-test-{secrets.token_hex(4)}"
    commands: list[str] = []
    with redis.Redis.from_url(REDIS_URL) as store, store.monitor() as monitor:

        def watch() -> None:
            for seen in monitor.listen():
                commands.append(str(seen["command"]))
                if marker in commands[-1]:
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        time.sleep(0.2)  # MONITOR is on
        forged = _pay(box, http, channel, _body(), signer=LocalSigner.generate())
        store.echo(marker)
        watcher.join(10)
    assert rejection(forged) == (402, "invalid_batch_settlement_evm_voucher_signature"), forged.text
    assert any(marker in c for c in commands), "MONITOR saw nothing"
    assert not [c for c in commands if key in c], "the forged voucher reached the channel's key"
    ok = _pay(box, http, channel, _body())  # and the channel serves its payer as before
    assert ok.status_code == 200, ok.text
    channel.charged = _charged(ok)


def test_a_malformed_request_with_a_voucher_is_a_400_and_leaves_the_channel_free(
    box: Sandbox, http: httpx.Client, observer: Observer, channel: Channel
) -> None:
    # the body is read after the reservation was sent: its 400 must give the channel back
    body = _body()
    quote = offer(http, _url(box), body)
    payment = _next_voucher(box, channel, quote)
    with observer.unchanged(channel.payer.address, box.operator.address):
        response = http.post(_url(box), json={**body, "messages": "not a list"}, headers=header(payment))
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
    ok = _pay(box, http, channel, _body())
    assert ok.status_code == 200, ok.text
    channel.charged = _charged(ok)


def test_wrong_channel(box: Sandbox, http: httpx.Client, observer: Observer, channel: Channel) -> None:
    other = config_for(batch_offer(offer(http, _url(box), _body())), channel.payer, salt=7).channel_id(
        box.chain.chain_id
    )
    _refused(box, http, observer, channel, "invalid_batch_settlement_evm_channel_id_mismatch", channel_id=other)


def test_unknown_channel(box: Sandbox, http: httpx.Client, observer: Observer, channel: Channel) -> None:
    empty = Channel(channel.payer, config_for(batch_offer(offer(http, _url(box), _body())), channel.payer, salt=9), 0)
    with observer.unchanged(channel.payer.address):
        response = _pay(box, http, empty, _body())
        assert rejection(response) == (402, "invalid_batch_settlement_evm_channel_not_found")


@pytest.mark.parametrize("delta", [1, -1])
def test_cumulative_too_high_or_too_low_gets_the_channel_state(
    box: Sandbox, http: httpx.Client, observer: Observer, channel: Channel, delta: int
) -> None:
    body = _body()
    amount = int(batch_offer(offer(http, _url(box), body))["amount"])
    charged = channel.charged
    required = _refused(
        box,
        http,
        observer,
        channel,
        "invalid_batch_settlement_evm_cumulative_amount_mismatch",
        signed_max=charged + amount + delta,
    )
    extra = batch_offer(required)["extra"]
    # the corrective 402 tells the client where the channel stands, with our last voucher
    assert extra["channelState"]["chargedCumulativeAmount"] == str(charged)
    assert extra["voucherState"]["signedMaxClaimable"] and extra["voucherState"]["signature"].startswith("0x")


def test_a_voucher_presenting_another_requests_quote_is_refused_and_leaves_the_channel_free(
    box: Sandbox, http: httpx.Client, observer: Observer, channel: Channel
) -> None:
    # The reservation is taken while the quote is checked: a quote refused then must give the
    # channel back at once (the helper's next voucher would otherwise be `channel_busy`).
    quoted, body = _body(), _body()
    quote = offer(http, _url(box), quoted)
    payment = _next_voucher(box, channel, quote)
    with observer.unchanged(channel.payer.address, box.operator.address):
        response = http.post(_url(box), json=body, headers=header(payment))
        assert rejection(response) == (402, "invalid_payment_requirements"), response.text
    ok = _pay(box, http, channel, _body())
    assert ok.status_code == 200, ok.text
    channel.charged = _charged(ok)


def test_replayed_voucher(box: Sandbox, http: httpx.Client, observer: Observer, channel: Channel) -> None:
    body = _body()
    quote = offer(http, _url(box), body)
    payment = _next_voucher(box, channel, quote)
    first = http.post(_url(box), json=body, headers=header(payment))
    assert first.status_code == 200
    channel.charged = _charged(first)
    with observer.unchanged(channel.payer.address):
        again = http.post(_url(box), json=body, headers=header(payment))
        assert rejection(again) == (402, "invalid_batch_settlement_evm_cumulative_amount_mismatch")


def test_partial_refund_then_a_voucher_above_the_balance(box: Sandbox, http: httpx.Client, observer: Observer) -> None:
    payer = LocalSigner.generate()
    box.token.mint(payer.address, 5_000_000)
    body = _body()
    quote = offer(http, _url(box), body)
    requirement = batch_offer(quote)
    config = config_for(requirement, payer, salt=3)
    deposit = int(requirement["extra"]["minDeposit"])
    first = http.post(
        _url(box),
        json=body,
        headers=header(
            opening_payment(quote, config, payer, chain_id=box.chain.chain_id, token_domain=box.token.domain)
        ),
    )
    assert first.status_code == 200, first.text
    charged = _charged(first)
    # the refund handshake: a probe, then the refund of all but 100 units
    probe = http.get(_url(box))
    assert probe.status_code == 402
    probe_offer = json.loads(base64.b64decode(probe.headers["PAYMENT-REQUIRED"]))
    before = box.token.balance_of(payer.address)
    refund = refund_payment(
        probe_offer, config, charged, payer, chain_id=box.chain.chain_id, amount=deposit - charged - 100
    )
    done = http.get(_url(box), headers=header(refund))
    assert done.status_code == 200, done.text
    receipt = json.loads(base64.b64decode(done.headers["payment-response"]))
    assert receipt["success"] and int(receipt["amount"]) == deposit - charged - 100
    assert box.token.balance_of(payer.address) - before == deposit - charged - 100
    state = receipt["extra"]["channelState"]
    assert state["balance"] == str(charged + 100) and state["totalClaimed"] == str(charged)
    # 100 units left: a call's voucher goes above the balance
    channel = Channel(payer, config, charged)
    with observer.unchanged(payer.address):
        response = _pay(box, http, channel, _body())
        assert rejection(response) == (402, "invalid_batch_settlement_evm_cumulative_exceeds_balance")
    # asking for more than is left is refused and moves nothing
    with observer.unchanged(payer.address):
        too_much = refund_payment(probe_offer, config, charged, payer, chain_id=box.chain.chain_id, amount=101)
        assert rejection(http.get(_url(box), headers=header(too_much))) == (
            402,
            "invalid_batch_settlement_evm_refund_amount_invalid",
        )


def test_a_stream_is_charged_what_it_streamed_and_its_receipt_is_the_last_event(
    box: Sandbox, http: httpx.Client, channel: Channel
) -> None:
    body = {**_body(), "stream": True, "stream_options": {"include_usage": True}}
    response = _pay(box, http, channel, body)
    assert response.status_code == 200, response.text
    assert "payment-response" not in response.headers  # the charge is not known when headers leave
    events = sse_events(response.text)
    name, data = events[-1]
    assert name == "x402.payment"
    receipt = json.loads(data)
    charged = int(receipt["extra"]["chargedAmount"])
    usage = next(json.loads(d)["usage"] for _, d in events if d.startswith("{") and '"usage"' in d)
    assert charged == int(usage["payrouter"]["charged"]) and usage["payrouter"]["pricing"] == "usage"
    assert int(receipt["extra"]["channelState"]["chargedCumulativeAmount"]) == channel.charged + charged
    channel.charged += charged
    # the next voucher builds on what the stream was charged
    after = _pay(box, http, channel, _body())
    assert after.status_code == 200
    channel.charged = _charged(after)


def _open_payment(
    box: Sandbox, http: httpx.Client, payer: LocalSigner, body: dict[str, Any], salt: int, **changed: Any
) -> tuple[dict[str, Any], ChannelConfig, int]:
    """A channel's opening payment for ``body`` (``changed``: fields of the channel changed)."""
    quote = offer(http, _url(box), body)
    requirement = batch_offer(quote)
    config = dataclasses.replace(config_for(requirement, payer, salt=salt), **changed)
    payment = opening_payment(quote, config, payer, chain_id=box.chain.chain_id, token_domain=box.token.domain)
    return payment, config, int(requirement["amount"])


def test_a_failed_call_charges_nothing_and_its_deposit_serves_the_payment_sent_again(
    box: Sandbox, http: httpx.Client, observer: Observer
) -> None:
    payer = LocalSigner.generate()
    box.token.mint(payer.address, 5_000_000)
    body = _body()
    payment, _, _ = _open_payment(box, http, payer, body, salt=11)
    observer.control(fail_models=["gpt-4o"])
    try:
        failed = http.post(_url(box), json=body, headers=header(payment))
    finally:
        observer.control(fail_models=[])
    assert failed.status_code == 502, failed.text
    # the deposit went through (it is the payer's money, in their channel); nothing was charged
    again = http.post(_url(box), json=body, headers=header(payment))
    assert again.status_code == 200, again.text
    receipt = json.loads(base64.b64decode(again.headers["payment-response"]))
    assert receipt["extra"]["channelState"]["chargedCumulativeAmount"] == receipt["extra"]["chargedAmount"]


def test_a_client_that_hangs_up_mid_stream_pays_the_quote(box: Sandbox, http: httpx.Client, observer: Observer) -> None:
    payer = LocalSigner.generate()
    box.token.mint(payer.address, 5_000_000)
    body = {**_body(), "stream": True}
    payment, config, amount = _open_payment(box, http, payer, body, salt=12)
    observer.control(chunk_delay_ms=50)
    try:
        with http.stream("POST", _url(box), json=body, headers=header(payment)) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if '"content":"[' in line:
                    break  # the answer began to arrive; then the client is gone
    finally:
        observer.control(chunk_delay_ms=0)
    channel = Channel(payer, config, amount)  # the stream was charged its whole quote
    after = None
    for _ in range(50):  # the server finishes the cut stream in the background
        after = _pay(box, http, channel, _body())
        if after.status_code == 200:
            break
        time.sleep(0.05)
    assert after is not None and after.status_code == 200, after.text if after is not None else ""
    receipt = json.loads(base64.b64decode(after.headers["payment-response"]))
    assert int(receipt["extra"]["channelState"]["chargedCumulativeAmount"]) == amount + int(
        receipt["extra"]["chargedAmount"]
    )


def test_a_channel_being_withdrawn_is_claimed_at_once_and_takes_no_more_vouchers(
    box: Sandbox, http: httpx.Client, observer: Observer
) -> None:
    payer = LocalSigner.generate()
    box.token.mint(payer.address, 5_000_000)
    box.chain.set_eth_balance(payer.address, 10**18)  # the payer sends its own withdrawal
    body = _body()
    payment, config, _ = _open_payment(box, http, payer, body, salt=13)
    opened = http.post(_url(box), json=body, headers=header(payment))
    assert opened.status_code == 200, opened.text
    channel = Channel(payer, config, _charged(opened))
    claim_pass(box)  # every channel's charges so far (this one's too) are claimed now
    claimed_before = channel.charged
    settlement = box.chain.w3.eth.contract(
        address=Web3.to_checksum_address(BATCH_SETTLEMENT_ADDRESS), abi=load_artifact("BatchSettlement")["abi"]
    )
    c = config
    data = settlement.encode_abi(
        "initiateWithdraw",
        [(c.payer, c.payer_authorizer, c.receiver, c.receiver_authorizer, c.token, c.withdraw_delay, c.salt), 1000],
    )
    box.chain.send(payer, {"to": BATCH_SETTLEMENT_ADDRESS, "data": data})
    # the next voucher is still served until the claimer sees the withdrawal ...
    served = _pay(box, http, channel, _body())
    assert served.status_code == 200
    channel.charged = _charged(served)
    report = claim_pass(box)
    # ... which it claims at once (before the delay lets the payer take it), and then refuses
    channel_id = "0x" + config.channel_id(box.chain.chain_id).hex()
    assert channel_id in report.withdrawing and report.claimed == channel.charged - claimed_before
    with observer.unchanged(payer.address):
        response = _pay(box, http, channel, _body())
        assert rejection(response) == (402, "invalid_batch_settlement_evm_channel_withdrawing")


def test_a_channel_without_a_payer_authorizer_is_refused_before_its_deposit(
    box: Sandbox, http: httpx.Client, observer: Observer
) -> None:
    # with payerAuthorizer 0 the contract checks the payer's own signature, through ERC-1271
    # when the payer has code (an EIP-7702 delegation can be added at any time): a voucher we
    # verified could then be refused at claim time
    payer = LocalSigner.generate()
    box.token.mint(payer.address, 10_000_000)
    body = _body()
    payment, _, _ = _open_payment(box, http, payer, body, salt=13, payer_authorizer="0x" + "00" * 20)
    upstream = observer.upstream_calls()
    with observer.unchanged(payer.address, box.operator.address):
        response = http.post(_url(box), json=body, headers=header(payment))
        assert rejection(response) == (402, "invalid_batch_settlement_evm_voucher_signature")
    assert "payerAuthorizer" in response.text and observer.upstream_calls() == upstream
