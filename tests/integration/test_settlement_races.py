"""What happens between verification and settlement: a drained payer, and a front-runner."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from typing import Any

import httpx
import pytest

from payrouter.journal import State
from payrouter.sandbox.dev import Sandbox
from payrouter.x402.wire import decode_header
from tests.mined_together import mined_together
from tests.redis_keys import REDIS_URL, journal_record
from wallets import LocalSigner, TransferWithAuthorization, new_nonce, sign_authorization

from .conftest import Observer
from .payments import header, offer, payment
from .reconcile_now import reconcile_now


def _paid_in_background(
    url: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[threading.Thread, list[httpx.Response]]:
    out: list[httpx.Response] = []

    def run() -> None:
        with httpx.Client(timeout=30) as client:
            out.append(client.post(url, json=body, headers=headers))

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def _wait_for_upstream_call(observer: Observer, calls: int) -> None:
    deadline = time.monotonic() + 10
    while observer.upstream_calls() == calls:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_payer_drained_during_the_call_gets_no_answer(box: Sandbox, http: httpx.Client, observer: Observer) -> None:
    url = f"{box.router_url}/v1/chat/completions"
    payer = box.chain.new_account()
    body = {"model": "auto", "max_tokens": 20, "messages": [{"role": "user", "content": secrets.token_hex(6)}]}
    o = offer(http, url, body)
    amount = int(o["accepts"][0]["amount"])
    box.token.mint(payer.address, amount)
    operator_before = observer.balances(box.operator.address)[0]
    observer.control(delay_ms=400)
    calls = observer.upstream_calls()
    thread, result = _paid_in_background(url, body, header(payment(o, payer)))
    _wait_for_upstream_call(observer, calls)
    # while the model runs, the payer moves its funds away with another authorization
    sink = LocalSigner.generate()
    drain = TransferWithAuthorization(payer.address, sink.address, amount, 0, int(time.time()) + 60, new_nonce())
    box.token.transfer_with_authorization(payer, drain, sign_authorization(payer, box.token.domain, drain))
    thread.join(30)
    response = result[0]
    assert response.status_code == 402
    receipt = json.loads(base64.b64decode(response.headers["PAYMENT-RESPONSE"]))
    assert receipt["success"] is False and receipt["errorReason"] == "invalid_exact_evm_transaction_failed"
    assert "choices" not in response.text  # the answer is not handed over unpaid
    assert observer.balances(box.operator.address)[0] == operator_before


@pytest.mark.parametrize("reconciled", [False, True], ids=["found-by-the-request", "found-by-a-reconciler-pass"])
def test_front_run_settlement_still_counts(
    box: Sandbox, http: httpx.Client, observer: Observer, reconciled: bool
) -> None:
    """A third party mines the payer's authorization while the model runs: the request's own
    settle finds that transfer, or a reconciler pass settled the record first and the request
    answers from it; either way the answer goes out once, with the front-runner's transaction,
    and is kept for the payment's replay."""
    url = f"{box.router_url}/v1/chat/completions"
    agent = box.agents[3]
    body = {"model": "auto", "max_tokens": 20, "messages": [{"role": "user", "content": secrets.token_hex(6)}]}
    o = offer(http, url, body)
    amount = int(o["accepts"][0]["amount"])
    paid = header(payment(o, agent))
    before = observer.balances(agent.address, box.operator.address)
    observer.control(delay_ms=1000)
    calls = observer.upstream_calls()
    thread, result = _paid_in_background(url, body, paid)
    _wait_for_upstream_call(observer, calls)
    # a third party submits the very same signed authorization first
    decoded = decode_header(paid["PAYMENT-SIGNATURE"])
    auth = TransferWithAuthorization.from_wire(decoded["payload"]["authorization"])
    signature = bytes.fromhex(decoded["payload"]["signature"][2:])
    front = box.token.transfer_with_authorization(box.chain.new_account(), auth, signature)
    if reconciled:
        assert reconcile_now(box, agent.address, "0x" + auth.nonce.hex()) == "settled"
    thread.join(30)
    response = result[0]
    assert response.status_code == 200, response.text
    receipt = json.loads(base64.b64decode(response.headers["PAYMENT-RESPONSE"]))
    assert receipt["success"] is True
    assert receipt["transaction"] == front["transactionHash"].to_0x_hex()
    after = observer.balances(agent.address, box.operator.address)
    assert (before[0] - after[0], after[1] - before[1]) == (amount, amount)
    observer.control(delay_ms=0)
    again = http.post(url, json=body, headers=paid)
    assert again.status_code == 200 and again.json() == response.json()


def test_one_transfer_does_not_pay_two_payments(box: Sandbox, http: httpx.Client, observer: Observer) -> None:
    """While the model runs, the payer mines one transaction that spends our payment's nonce on
    a transfer to itself and pays pay_to the same amount with another authorization: neither a
    reconciler pass nor the request's own settle takes that transfer for our payment (it pays
    only the authorization it follows), so the request is refused and not answered."""
    url = f"{box.router_url}/v1/chat/completions"
    agent = LocalSigner.generate()
    body = {"model": "auto", "max_tokens": 20, "messages": [{"role": "user", "content": secrets.token_hex(6)}]}
    o = offer(http, url, body)
    amount = int(o["accepts"][0]["amount"])
    box.token.mint(agent.address, 2 * amount)
    paid = payment(o, agent)
    ours = TransferWithAuthorization.from_wire(paid["payload"]["authorization"])
    operator_before = observer.balances(box.operator.address)[0]
    observer.control(delay_ms=1000)
    calls = observer.upstream_calls()
    thread, result = _paid_in_background(url, body, header(paid))
    _wait_for_upstream_call(observer, calls)
    spend = TransferWithAuthorization(agent.address, agent.address, 1, 0, ours.valid_before, ours.nonce)
    other = TransferWithAuthorization(agent.address, ours.to, amount, 0, ours.valid_before, new_nonce())
    signed = [(a, sign_authorization(agent, box.token.domain, a)) for a in (spend, other)]
    assert mined_together(box.chain, box.token, signed)["status"] == 1
    assert reconcile_now(box, agent.address, "0x" + ours.nonce.hex()) in ("claimed", "serving")
    thread.join(30)
    response = result[0]
    assert response.status_code == 402, response.text
    receipt = json.loads(base64.b64decode(response.headers["PAYMENT-RESPONSE"]))
    assert receipt["success"] is False and receipt["errorReason"] == "invalid_exact_evm_transaction_failed"
    assert "choices" not in response.text
    assert observer.balances(box.operator.address)[0] == operator_before + amount  # the other one, once


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_front_run_payment_whose_model_fails_is_recorded_not_discarded(
    box: Sandbox, http: httpx.Client, observer: Observer, stream: bool
) -> None:
    """Someone mines the payer's authorization while the model runs, then the model call fails:
    the money is ours, so the record says ``settled`` (delivered ``broken``) rather than being
    discarded as a failed call's would be (the journal keeps matching the chain); a stream's
    payment presented again is served again."""
    url = f"{box.router_url}/v1/chat/completions"
    agent = LocalSigner.generate()
    body: dict[str, Any] = {"model": "gpt-4o-mini", "max_tokens": 20, "stream": stream}
    body["messages"] = [{"role": "user", "content": secrets.token_hex(6)}]
    o = offer(http, url, body)
    amount = int(o["accepts"][0]["amount"])
    box.token.mint(agent.address, amount)
    paid = payment(o, agent)
    ours = TransferWithAuthorization.from_wire(paid["payload"]["authorization"])
    observer.control(delay_ms=1000, fail_next=1, fail_status=400)  # a 400: no fallback, no breaker
    calls = observer.upstream_calls()
    thread, result = _paid_in_background(url, body, header(paid))
    _wait_for_upstream_call(observer, calls)
    box.token.transfer_with_authorization(
        box.chain.new_account(), ours, bytes.fromhex(paid["payload"]["signature"][2:])
    )
    thread.join(30)
    failed = result[0]
    assert failed.status_code == 502 and "present the same payment again" in failed.text
    assert json.loads(base64.b64decode(failed.headers["PAYMENT-RESPONSE"]))["success"] is True
    nonce = "0x" + ours.nonce.hex()

    def recorded() -> tuple[str, str, str]:
        record = journal_record(REDIS_URL, box.namespace, agent.address, nonce)
        return record["state"], record["delivered"], record["charged"]

    assert recorded() == (State.SETTLED, "broken", str(amount))  # written before the error went out
    observer.control(delay_ms=0)
    again = http.post(url, json=body, headers=header(paid))  # served again, once, free
    assert again.status_code == 200, again.text
    assert ("[DONE]" in again.text) if stream else again.json()["choices"][0]["message"]["content"]
    if not stream:  # kept for its replay
        assert http.post(url, json=body, headers=header(paid)).json() == again.json()
    assert observer.balances(agent.address)[0] == 0  # paid once
