"""What `FacilitatorSettler` makes of each answer a facilitator can give to a settle action.

A real HTTP facilitator stand-in (its answer set per test) and a real chain (anvil): the
receipts of the transactions it names are read there. The rule: a refusal before anything
was sent is `ChannelTxFailed` (the rows' fault) or `ChannelUnavailable` (the facilitator's
own); anything that may have sent a transaction is `ChannelTxInDoubt`; a named transaction
counts as what the chain says it did.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from payrouter.chain import ChainClient
from payrouter.channels.contract import BatchSettlementContract, ChannelTxFailed, ChannelTxInDoubt, ChannelUnavailable
from payrouter.devchain import DevChain, DevToken
from payrouter.facilitator import RemoteFacilitator
from payrouter.facilitator.channels import FacilitatorSettler
from payrouter.sandbox.serving import serve_in_thread
from wallets import LocalSigner
from wallets.channels import ChannelConfig

SECRET_URL = "https://rpc.example.com/v2/sk_live_not_for_payers"


class StandIn:
    """A facilitator whose /settle gives the answer a test sets."""

    def __init__(self) -> None:
        self.answer: Response = JSONResponse({})
        self.asked: list[dict[str, Any]] = []

        async def settle(request: Request) -> Response:
            self.asked.append(await request.json())
            return self.answer

        self.app = Starlette(routes=[Route("/settle", settle, methods=["POST"])])


@pytest.fixture(scope="module")
def stand_in() -> Iterator[tuple[StandIn, str]]:
    facilitator = StandIn()
    with serve_in_thread(facilitator.app) as url:
        yield facilitator, url


@pytest.fixture(scope="module")
def hashes(chain: DevChain, token: DevToken) -> dict[str, str]:
    """A mined transaction that succeeded and one that reverted."""
    ok = token.mint(LocalSigner.generate().address, 1)["transactionHash"].hex()
    outsider = chain.new_account()
    data = token.contract.encode_abi("mint", [outsider.address, 1])  # only the owner may mint
    w3 = chain.w3
    tx = {
        "chainId": chain.chain_id,
        "to": token.address,
        "data": data,
        "gas": 100_000,
        "nonce": w3.eth.get_transaction_count(outsider.address),
        "maxFeePerGas": 10 * 10**9,
        "maxPriorityFeePerGas": 10**9,
    }
    sent = w3.eth.send_raw_transaction(outsider.sign_transaction(tx))
    assert w3.eth.wait_for_transaction_receipt(sent)["status"] == 0
    return {"ok": "0x" + ok.removeprefix("0x"), "reverted": "0x" + sent.hex().removeprefix("0x")}


def _row(authorizer: str) -> tuple[ChannelConfig, int, bytes, int]:
    config = ChannelConfig(
        payer="0x" + "11" * 20,
        payer_authorizer="0x" + "11" * 20,
        receiver="0x" + "22" * 20,
        receiver_authorizer=authorizer,
        token="0x" + "33" * 20,
        withdraw_delay=900,
        salt=secrets.token_bytes(32),
    )
    return config, 100, b"\x01" * 65, 50


def _claim(chain: DevChain, url: str) -> str:
    async def run() -> str:
        client = ChainClient(chain.rpc_url)
        remote = RemoteFacilitator(url)
        try:
            reader = BatchSettlementContract(client, None, chain.chain_id)
            authorizer = "0x" + "44" * 20
            settler = FacilitatorSettler(remote, reader, client, chain.network, authorizer, receipt_timeout=2)
            return await settler.claim([_row(authorizer)])
        finally:
            await remote.close()
            await client.close()

    return asyncio.run(run())


def _failure(reason: str, tx: str = "", message: str = f"node at {SECRET_URL} said no") -> Response:
    return JSONResponse(
        {"success": False, "errorReason": reason, "errorMessage": message, "transaction": tx, "network": "x"}
    )


CASES: list[tuple[str, Any, type[Exception], str]] = [
    # (case, answer (a hash key is filled in), the exception, its tx: "" or the hash key)
    ("pending", ("settlement_pending", "ok"), ChannelTxInDoubt, "ok"),
    ("send-failed-without-hash", ("invalid_batch_settlement_evm_claim_transaction_failed", ""), ChannelTxInDoubt, ""),
    ("would-revert", ("invalid_batch_settlement_evm_claim_simulation_failed", ""), ChannelTxFailed, ""),
    ("no-authorizer", ("invalid_batch_settlement_evm_authorizer_not_configured", ""), ChannelUnavailable, ""),
    (
        "reverted-on-chain",
        ("invalid_batch_settlement_evm_claim_transaction_failed", "reverted"),
        ChannelTxFailed,
        "reverted",
    ),
    ("success-that-reverted", ("success", "reverted"), ChannelTxFailed, "reverted"),
    ("success-without-hash", ("success", ""), ChannelTxInDoubt, ""),
    ("unauthorized", PlainTextResponse("no", 401), ChannelUnavailable, ""),
    ("crashed", PlainTextResponse("boom", 500), ChannelTxInDoubt, ""),
]


@pytest.mark.parametrize(("case", "answer", "raised", "tx"), CASES, ids=[c[0] for c in CASES])
def test_each_answer_maps_to_what_may_have_happened(
    chain: DevChain,
    stand_in: tuple[StandIn, str],
    hashes: dict[str, str],
    case: str,
    answer: Any,
    raised: type[Exception],
    tx: str,
) -> None:
    facilitator, url = stand_in
    if isinstance(answer, tuple):
        reason, key = answer
        if reason == "success":
            facilitator.answer = JSONResponse({"success": True, "transaction": hashes.get(key, ""), "network": "x"})
        else:
            facilitator.answer = _failure(reason, hashes.get(key, ""))
    else:
        facilitator.answer = answer
    with pytest.raises(raised) as caught:
        _claim(chain, url)
    assert type(caught.value) is raised
    assert caught.value.tx == hashes.get(tx, "")  # type: ignore[attr-defined]
    assert "sk_live" not in str(caught.value) and "rpc.example" not in str(caught.value)


def test_a_claim_the_chain_shows_mined_is_its_hash(
    chain: DevChain, stand_in: tuple[StandIn, str], hashes: dict[str, str]
) -> None:
    facilitator, url = stand_in
    facilitator.answer = JSONResponse({"success": True, "transaction": hashes["ok"], "network": "x"})
    assert _claim(chain, url) == hashes["ok"]
    payload = facilitator.asked[-1]["paymentPayload"]
    assert payload["payload"]["type"] == "claim" and "claimAuthorizerSignature" not in payload["payload"]
    assert payload["accepted"]["amount"] == "0" and payload["accepted"]["extra"] == {}
