"""POST /v1/feedback: only the payer of a completion may rate it (EIP-191 signature by the
paying address over the completion id and rating); a stranger, a replay onto another rating,
and unknown completions are refused."""

from __future__ import annotations

import secrets
import time

import httpx
from eth_account import Account
from eth_account.messages import encode_defunct

from payrouter.app import create_app
from payrouter.feedback import feedback_message, sign_feedback
from payrouter.sandbox.dev import Sandbox
from payrouter.sandbox.serving import serve_in_thread
from wallets import LocalSigner

from ..polling import wait_until
from .conftest import exact_only, router_settings
from .payments import header, offer, payment


def _personal_sign(key: str, completion_id: str, rating: str) -> str:
    # what any wallet's personal_sign makes: an independent implementation of EIP-191
    signed = Account.sign_message(encode_defunct(text=feedback_message(completion_id, rating)), key)
    return "0x" + bytes(signed.signature).hex()


def _rate(http: httpx.Client, box: Sandbox, completion_id: str, rating: str, signature: str) -> httpx.Response:
    body = {"completion_id": completion_id, "rating": rating, "signature": signature}
    return http.post(f"{box.router_url}/v1/feedback", json=body)


def _feedback_count(http: httpx.Client, box: Sandbox, model: str, rating: str) -> float:
    for line in http.get(f"{box.router_url}/metrics").text.splitlines():
        if line.startswith("payrouter_feedback_total{") and f'model="{model}"' in line and f'rating="{rating}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_only_the_payer_can_rate_its_completion(box: Sandbox, http: httpx.Client) -> None:
    payer = box.agents[4]
    url = f"{box.router_url}/v1/chat/completions"
    body = {"model": "auto", "max_tokens": 20, "messages": [{"role": "user", "content": secrets.token_hex(6)}]}
    paid = http.post(url, json=body, headers=header(payment(offer(http, url, body), payer)))
    assert paid.status_code == 200, paid.text
    completion_id, model = paid.json()["id"], paid.headers["x-payrouter-model"]
    stranger = LocalSigner.generate()

    # the call's record is written off the paid path: wait until it is there
    def recorded() -> int | None:
        status = _rate(http, box, completion_id, "good", sign_feedback(stranger, completion_id, "good")).status_code
        return None if status == 404 else status

    assert wait_until(recorded, "the call's feedback record") == 403
    before = _feedback_count(http, box, model, "good")
    key = payer.unsafe_export_private_key()
    good = _personal_sign(key, completion_id, "good")
    # the payer's signature of "good" does not rate it "bad", nor another completion
    assert _rate(http, box, completion_id, "bad", good).status_code == 403
    assert _rate(http, box, "chatcmpl-" + secrets.token_hex(8), "good", good).status_code == 404
    ok = _rate(http, box, completion_id, "good", good)
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"completion_id": completion_id, "rating": "good", "model": model}
    assert _rate(http, box, completion_id, "good", good).status_code == 200  # sent twice: the same rating
    assert _rate(http, box, completion_id, "bad", _personal_sign(key, completion_id, "bad")).status_code == 409
    assert _feedback_count(http, box, model, "good") == before + 1
    # a stranger still cannot, and malformed bodies are 400
    assert _rate(http, box, completion_id, "good", sign_feedback(stranger, completion_id, "good")).status_code == 403
    assert _rate(http, box, completion_id, "meh", good).status_code == 400
    assert _rate(http, box, completion_id, "good", "0xzz").status_code == 400
    assert http.post(f"{box.router_url}/v1/feedback", content=b"[").status_code == 400


def test_feedback_off_keeps_no_records(box: Sandbox, http: httpx.Client) -> None:
    settings = router_settings(box, exact_only(box.table), feedback_ttl=0)
    with serve_in_thread(create_app(settings)) as router:
        url = f"{router}/v1/chat/completions"
        body = {"model": "auto", "max_tokens": 20, "messages": [{"role": "user", "content": secrets.token_hex(6)}]}
        paid = http.post(url, json=body, headers=header(payment(offer(http, url, body), box.agents[4])))
        assert paid.status_code == 200, paid.text
        completion_id = paid.json()["id"]
        time.sleep(0.5)  # records are written within ~50 ms when feedback is on
        key = box.agents[4].unsafe_export_private_key()
        rate = {
            "completion_id": completion_id,
            "rating": "good",
            "signature": _personal_sign(key, completion_id, "good"),
        }
        assert http.post(f"{router}/v1/feedback", json=rate).status_code == 404
