"""The payment gate in one process: the memory store and journal, a scripted facilitator, the
test model server on a loopback port. No chain, so each test takes milliseconds; the same rules
run on anvil in tests/integration."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from payrouter.app import create_app
from payrouter.sandbox.dev import EXAMPLE_TABLE
from payrouter.sandbox.serving import serve_in_thread
from payrouter.sandbox.upstream import TestUpstream
from payrouter.settings import ProviderSettings, Settings
from payrouter.settlement_backend import SettlementBackend
from pricing import load_price_table
from tests.integration.payments import header, payment, sse_events
from tests.x402.fake_facilitator import FakeFacilitator
from wallets import LocalSigner

ASSET = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    with serve_in_thread(TestUpstream().app) as url:
        yield url


@pytest.fixture
def facilitator() -> FakeFacilitator:
    return FakeFacilitator()


@pytest.fixture
def client(upstream_url: str, facilitator: FakeFacilitator) -> Iterator[TestClient]:
    table = load_price_table(EXAMPLE_TABLE).on_chain("eip155:31337", ASSET, LocalSigner.generate().address)
    settings = Settings(
        price_table=table,
        providers={p: ProviderSettings(base_url=f"{upstream_url}/v1") for p in {m.provider for m in table.models}},
        rpc_url="http://127.0.0.1:9",  # unused: the backend is given
        gas_key=SecretStr("0x" + "11" * 32),
        reconcile_interval=0,
    )
    app = create_app(settings, backend=SettlementBackend(None, facilitator))
    with TestClient(app) as test_client:
        yield test_client


def _body(**kw: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "max_tokens": 40,
        "messages": [{"role": "user", "content": secrets.token_hex(6)}],
        **kw,
    }


def _offer(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 402
    offer: dict[str, Any] = json.loads(base64.b64decode(response.headers["PAYMENT-REQUIRED"]))
    return offer


def _receipt(response: Any) -> dict[str, Any]:
    receipt: dict[str, Any] = json.loads(base64.b64decode(response.headers["PAYMENT-RESPONSE"]))
    return receipt


def test_paid_answer_and_its_replay(client: TestClient, facilitator: FakeFacilitator) -> None:
    body = _body()
    paid = header(payment(_offer(client, body), LocalSigner.generate()))
    first = client.post("/v1/chat/completions", json=body, headers=paid)
    assert first.status_code == 200 and _receipt(first)["transaction"] == facilitator.settled[0]
    again = client.post("/v1/chat/completions", json=body, headers=paid)
    assert again.status_code == 200 and again.json() == first.json()
    assert facilitator.settle_calls == 1


def test_in_doubt_is_pending_never_nothing_charged(client: TestClient, facilitator: FakeFacilitator) -> None:
    body = _body()
    paid = header(payment(_offer(client, body), LocalSigner.generate()))
    facilitator.outcomes.append("doubt")
    response = client.post("/v1/chat/completions", json=body, headers=paid)
    assert response.status_code == 402
    receipt = _receipt(response)
    assert receipt["errorReason"] == "settlement_pending" and receipt["transaction"].startswith("0x")
    # without a chain to look at, it stays pending: never served twice, never "released"
    again = client.post("/v1/chat/completions", json=body, headers=paid)
    assert _receipt(again)["transaction"] == receipt["transaction"] and facilitator.settle_calls == 1


def test_a_reverted_settlement_is_not_served_again(client: TestClient, facilitator: FakeFacilitator) -> None:
    body = _body()
    paid = header(payment(_offer(client, body), LocalSigner.generate()))
    facilitator.outcomes.append("refuse")
    first = client.post("/v1/chat/completions", json=body, headers=paid)
    assert first.status_code == 402 and _receipt(first)["errorReason"] == "invalid_exact_evm_transaction_failed"
    again = client.post("/v1/chat/completions", json=body, headers=paid)
    assert again.status_code == 402 and facilitator.settle_calls == 1


def test_bad_signature_is_refused_before_the_model(client: TestClient, facilitator: FakeFacilitator) -> None:
    body = _body()
    agent = LocalSigner.generate()
    forged = payment(_offer(client, body), agent, sign_with=LocalSigner.generate())
    response = client.post("/v1/chat/completions", json=body, headers=header(forged))
    required = json.loads(base64.b64decode(response.headers["PAYMENT-REQUIRED"]))
    assert response.status_code == 402 and required["error"] == "invalid_exact_evm_payload_signature"
    assert facilitator.settle_calls == 0


def test_a_refused_stream_is_cut_and_its_payer_refused_streams(
    client: TestClient, facilitator: FakeFacilitator
) -> None:
    agent = LocalSigner.generate()
    body = _body(stream=True)
    facilitator.outcomes.append("refuse")
    response = client.post("/v1/chat/completions", json=body, headers=header(payment(_offer(client, body), agent)))
    events = sse_events(response.text)
    assert json.loads(events[-1][1])["success"] is False
    assert "payment_error" in events[-2][1]
    body2 = _body(stream=True)
    refused = client.post("/v1/chat/completions", json=body2, headers=header(payment(_offer(client, body2), agent)))
    assert json.loads(base64.b64decode(refused.headers["PAYMENT-REQUIRED"]))["error"] == "payer_has_unpaid_stream"
    plain = _body()
    served = client.post("/v1/chat/completions", json=plain, headers=header(payment(_offer(client, plain), agent)))
    assert served.status_code == 200


def test_answers_carry_one_content_length_paid_or_failed(
    client: TestClient, facilitator: FakeFacilitator, upstream_url: str
) -> None:
    body = _body()
    paid = client.post(
        "/v1/chat/completions", json=body, headers=header(payment(_offer(client, body), LocalSigner.generate()))
    )
    assert paid.status_code == 200
    assert paid.headers.get_list("content-length") == [str(len(paid.content))]
    failing = _body()
    offered = _offer(client, failing)
    httpx.post(f"{upstream_url}/_control", json={"fail_next": 100}).raise_for_status()
    try:
        failed = client.post(
            "/v1/chat/completions", json=failing, headers=header(payment(offered, LocalSigner.generate()))
        )
    finally:
        httpx.post(f"{upstream_url}/_control", json={"fail_next": 0}).raise_for_status()
    assert failed.status_code == 502 and facilitator.settle_calls == 1  # the paid one only
    assert failed.headers.get_list("content-length") == [str(len(failed.content))]


def test_a_malformed_request_is_a_400_whatever_its_payment(client: TestClient) -> None:
    # the request is parsed after the payment is read; its 400 still comes first
    for headers in ({"PAYMENT-SIGNATURE": "not base64 json"}, {}):
        response = client.post("/v1/chat/completions", json={**_body(), "messages": "not a list"}, headers=headers)
        assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


class _InFlight:
    """A paid request run in a thread while the test reads and writes its journal record on the
    app's own event loop (the memory journal lives there), the test upstream slowed by ``knobs``."""

    def __init__(self, client: TestClient, upstream_url: str, body: dict[str, Any], **knobs: int) -> None:
        portal = client.portal
        assert portal is not None  # the client is entered: the app runs on this portal's loop
        self.client, self.portal, self.upstream_url, self.body = client, portal, upstream_url, body
        self.journal = client.app_state["services"].journal
        self.agent = LocalSigner.generate()
        self.paid = payment(_offer(client, body), self.agent)
        self.record_id = f"exact:{self.agent.address.lower()}:{self.paid['payload']['authorization']['nonce']}"
        self.knobs = knobs
        self.out: list[Any] = []  # the test client's responses
        self.thread = threading.Thread(target=lambda: self.out.append(self.send()))

    def send(self) -> Any:
        return self.client.post("/v1/chat/completions", json=self.body, headers=header(self.paid))

    def __enter__(self) -> _InFlight:
        httpx.post(f"{self.upstream_url}/_control", json=self.knobs).raise_for_status()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(20)
        httpx.post(f"{self.upstream_url}/_control", json=dict.fromkeys(self.knobs, 0)).raise_for_status()

    def record(self) -> Any:
        return self.portal.call(self.journal.get, self.record_id)

    def wait_for(self, state: str) -> Any:
        deadline = time.monotonic() + 5
        while (record := self.record()) is None or record.state != state:
            assert time.monotonic() < deadline, f"the record never reached {state}"
            time.sleep(0.01)
        return record

    def move(self, record: Any, state: str, **changes: Any) -> None:
        assert self.portal.call(self.journal.advance, record.moved(state, **changes), [record.state])[0]

    @property
    def response(self) -> Any:
        return self.out[0]


def test_a_payment_settled_by_someone_else_while_serving_is_answered(
    client: TestClient, facilitator: FakeFacilitator, upstream_url: str
) -> None:
    """The reconciler may decide a record while its request still runs (an authorization that
    expired while serving, moved on chain by someone else): the request answers with that
    transaction, broadcasts nothing, and its answer is kept for the payment's replay."""
    elsewhere = "0x" + secrets.token_hex(32)
    with _InFlight(client, upstream_url, _body(), delay_ms=400) as call:
        record = call.wait_for("serving")
        call.move(record, "settled", tx=elsewhere, charged=record.amount, reason="")
    response = call.response
    assert response.status_code == 200, response.text
    assert _receipt(response)["success"] is True and _receipt(response)["transaction"] == elsewhere
    assert facilitator.settle_calls == 0
    again = call.send()
    assert again.status_code == 200 and again.json() == response.json()


def test_a_stream_released_under_it_by_expiry_leaves_a_debt(
    client: TestClient, facilitator: FakeFacilitator, upstream_url: str
) -> None:
    """The reconciler released a stream's record (its authorization expired unused) while the
    model was still thinking; the first chunk then went out with a settle that could not start:
    the record becomes ``unpaid`` (content out, nothing collectable) and the payer owes it."""
    with _InFlight(client, upstream_url, _body(stream=True), delay_ms=400) as call:
        call.move(call.wait_for("serving"), "released", reason="expired_unused")
    assert json.loads(sse_events(call.response.text)[-1][1])["success"] is False
    assert call.record().state == "unpaid"
    assert facilitator.settle_calls == 0
    again = _body(stream=True)
    refused = client.post(
        "/v1/chat/completions", json=again, headers=header(payment(_offer(client, again), call.agent))
    )
    assert json.loads(base64.b64decode(refused.headers["PAYMENT-REQUIRED"]))["error"] == "payer_has_unpaid_stream"


def test_a_stream_presented_again_while_it_runs_is_being_served(
    client: TestClient, facilitator: FakeFacilitator, upstream_url: str
) -> None:
    """Its transfer went with the first chunk (settled), its transcript is kept at its end: a
    second request with the same payment meanwhile is told to come back, not that the answer
    is gone; once the stream ends, the same payment gets the transcript."""
    with _InFlight(client, upstream_url, _body(stream=True), chunk_delay_ms=100) as call:
        call.wait_for("settled")
        meanwhile = call.send()
    assert meanwhile.status_code == 402 and "being served by another request" in meanwhile.text
    assert call.response.status_code == 200
    after = call.send()
    assert after.status_code == 200 and sse_events(after.text)[:-1] == sse_events(call.response.text)[:-1]
