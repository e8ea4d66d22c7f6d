"""A stand-in for a remote x402 ``batch-settlement`` server, as an httpx transport.

It follows the brief (/work/shared/docs/x402-batch-settlement.md) and checks what the agent sends
with the official SDK's parsers and eth-account recovery, never with payrouter code: config
checks (``validate_channel_config``), ``max == charged + amount`` (else a corrective 402 carrying
``channelState`` and ``voucherState``), voucher signatures, the deposit's ERC-3009 signature,
``max ≤ balance``; it charges ``charge`` (≤ the offered maximum) and answers ``PAYMENT-RESPONSE``
with ``extra.chargedAmount`` and ``extra.channelState``. With a ``chain`` it executes deposits on
anvil through the real contract, so the channel's balance is on chain.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from eth_account import Account
from eth_account.messages import encode_typed_data
from web3 import Web3
from x402.mechanisms.evm.batch_settlement.constants import RECEIVE_AUTHORIZATION_TYPES, VOUCHER_TYPES
from x402.mechanisms.evm.batch_settlement.encoding import build_erc3009_deposit_nonce
from x402.mechanisms.evm.batch_settlement.facilitator.deposit_eip3009 import build_eip3009_deposit_collector_data
from x402.mechanisms.evm.batch_settlement.facilitator.utils import validate_channel_config
from x402.mechanisms.evm.batch_settlement.types import DepositPayload, RefundPayload, VoucherPayload
from x402.mechanisms.evm.batch_settlement.utils import get_batch_settlement_eip712_domain
from x402.schemas import PaymentRequirements

from payrouter.artifacts import load_artifact
from payrouter.devchain import DevChain

SETTLEMENT = "0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003"
COLLECTOR = "0x4020806089470a89826cB9fB1f4059150b550004"
MISMATCH = "invalid_batch_settlement_evm_cumulative_amount_mismatch"


def b64(data: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(data).encode()).decode()


def unb64(value: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(base64.b64decode(value))
    return data


@dataclass
class Record:
    charged: int = 0
    balance: int = 0
    signed_max: int = 0
    signature: str = ""


@dataclass
class BatchServer:
    """The server's side of one receiver. ``charge``: what each request costs (≤ ``amount``)."""

    network: str
    token: str
    pay_to: str
    receiver_authorizer: str
    amount: int = 1_000
    charge: int = 700
    min_deposit: int | None = None
    offer_exact: bool = False
    chain: DevChain | None = None
    records: dict[str, Record] = field(default_factory=dict)
    seen: list[dict[str, Any]] = field(default_factory=list)  # every payment payload received
    forge_voucher_state: bool = False  # corrective 402s carry a voucher the agent did not sign
    overcharge: bool = False
    misreport_cumulative: bool = False  # PAYMENT-RESPONSE's chargedCumulativeAmount disagrees
    paid_body: dict[str, Any] = field(default_factory=lambda: {"answer": 42})

    @property
    def chain_id(self) -> int:
        return int(self.network.split(":")[1])

    def offer(self) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "receiverAuthorizer": self.receiver_authorizer,
            "withdrawDelay": 900,
            "name": "USD Coin",
            "version": "2",
            "assetTransferMethod": "eip3009",
        }
        if self.min_deposit is not None:
            extra["minDeposit"] = str(self.min_deposit)
        return {
            "scheme": "batch-settlement",
            "network": self.network,
            "amount": str(self.amount),
            "asset": self.token,
            "payTo": self.pay_to,
            "maxTimeoutSeconds": 300,
            "extra": extra,
        }

    def exact_offer(self) -> dict[str, Any]:
        return {
            "scheme": "exact",
            "network": self.network,
            "amount": str(self.amount),
            "asset": self.token,
            "payTo": self.pay_to,
            "maxTimeoutSeconds": 300,
            "extra": {"name": "USD Coin", "version": "2"},
        }

    def _required(self, error: str | None = None, extra: dict[str, Any] | None = None) -> httpx.Response:
        offer = self.offer()
        offer["extra"].update(extra or {})
        accepts = [offer, self.exact_offer()] if self.offer_exact else [offer]
        body: dict[str, Any] = {"x402Version": 2, "resource": {"url": "http://router/v1/x"}, "accepts": accepts}
        if error:
            body["error"] = error
        return httpx.Response(402, headers={"PAYMENT-REQUIRED": b64(body)}, json={"error": error})

    def _corrective(self, channel_id: str, record: Record) -> httpx.Response:
        signature = record.signature
        if self.forge_voucher_state:
            forged = Account.create()
            signature = "0x" + self._sign_voucher(forged.key, channel_id, record.signed_max).hex()
        return self._required(
            MISMATCH,
            {
                "channelState": {
                    "channelId": channel_id,
                    "balance": str(record.balance),
                    "totalClaimed": "0",
                    "withdrawRequestedAt": 0,
                    "refundNonce": "0",
                    "chargedCumulativeAmount": str(record.charged),
                },
                "voucherState": {"signedMaxClaimable": str(record.signed_max), "signature": signature},
            },
        )

    def _sign_voucher(self, key: Any, channel_id: str, max_claimable: int) -> bytes:
        signable = encode_typed_data(
            domain_data=get_batch_settlement_eip712_domain(self.chain_id),
            message_types=VOUCHER_TYPES,
            message_data={"channelId": bytes.fromhex(channel_id[2:]), "maxClaimableAmount": max_claimable},
        )
        return bytes(Account.sign_message(signable, key).signature)

    def _voucher_signer(self, channel_id: str, max_claimable: int, signature: str) -> str:
        signable = encode_typed_data(
            domain_data=get_batch_settlement_eip712_domain(self.chain_id),
            message_types=VOUCHER_TYPES,
            message_data={"channelId": bytes.fromhex(channel_id[2:]), "maxClaimableAmount": max_claimable},
        )
        return str(Account.recover_message(signable, signature=bytes.fromhex(signature[2:])))

    def _check_deposit(self, payload: DepositPayload) -> None:
        assert payload.deposit is not None and payload.voucher is not None and payload.channel_config is not None
        auth = payload.deposit.authorization.erc3009_authorization
        assert auth is not None
        signable = encode_typed_data(
            domain_data={
                "name": "USD Coin",
                "version": "2",
                "chainId": self.chain_id,
                "verifyingContract": Web3.to_checksum_address(self.token),
            },
            message_types=RECEIVE_AUTHORIZATION_TYPES,
            message_data={
                "from": payload.channel_config.payer,
                "to": COLLECTOR,
                "value": int(payload.deposit.amount),
                "validAfter": int(auth.valid_after),
                "validBefore": int(auth.valid_before),
                "nonce": bytes.fromhex(build_erc3009_deposit_nonce(payload.voucher.channel_id, auth.salt)[2:]),
            },
        )
        signer = Account.recover_message(signable, signature=bytes.fromhex(auth.signature[2:]))
        assert signer == payload.channel_config.payer, "deposit authorization not signed by the payer"
        if self.chain is not None:
            c = payload.channel_config
            settlement = self.chain.w3.eth.contract(
                address=Web3.to_checksum_address(SETTLEMENT), abi=load_artifact("BatchSettlement")["abi"]
            )
            config = (
                c.payer,
                c.payer_authorizer,
                c.receiver,
                c.receiver_authorizer,
                c.token,
                c.withdraw_delay,
                bytes.fromhex(c.salt[2:]),
            )
            call = settlement.functions.deposit(
                config, int(payload.deposit.amount), COLLECTOR, build_eip3009_deposit_collector_data(payload)
            )
            tx = {"to": SETTLEMENT, "data": call._encode_transaction_data()}
            assert self.chain.send(self.chain.deployer, tx)["status"] == 1

    def handle(self, request: httpx.Request) -> httpx.Response:
        header = request.headers.get("PAYMENT-SIGNATURE")
        if header is None:
            return self._required()
        envelope = unb64(header)
        self.seen.append(envelope)
        accepted, inner = envelope["accepted"], envelope["payload"]
        if accepted["scheme"] == "exact":
            reply = {"success": True, "transaction": "0xexact", "network": self.network}
            return httpx.Response(200, json=self.paid_body, headers={"PAYMENT-RESPONSE": b64(reply)})
        requirements = PaymentRequirements.model_validate(accepted)
        kind = inner["type"]
        kinds: dict[str, Any] = {"deposit": DepositPayload, "voucher": VoucherPayload, "refund": RefundPayload}
        parsed: Any = kinds[kind].from_dict(inner)
        voucher, config = parsed.voucher, parsed.channel_config
        assert validate_channel_config(config, voucher.channel_id, requirements) is None
        max_claimable = int(voucher.max_claimable_amount)
        assert self._voucher_signer(voucher.channel_id, max_claimable, voucher.signature) == config.payer_authorizer
        record = self.records.setdefault(voucher.channel_id.lower(), Record())
        if kind == "refund":
            if max_claimable != record.charged:
                return self._corrective(voucher.channel_id, record)
            refund = int(parsed.amount) if parsed.amount else record.balance - record.charged
            record.balance -= refund
            state = {"channelId": voucher.channel_id, "chargedCumulativeAmount": str(record.charged)}
            reply = {
                "success": True,
                "transaction": "0xrefund",
                "amount": str(refund),
                "extra": {"channelState": state},
            }
            return httpx.Response(
                200, json={"message": "Refund acknowledged"}, headers={"PAYMENT-RESPONSE": b64(reply)}
            )
        if max_claimable != record.charged + int(accepted["amount"]):
            return self._corrective(voucher.channel_id, record)
        deposit = 0
        if kind == "deposit":
            self._check_deposit(parsed)
            deposit = int(parsed.deposit.amount)
        if max_claimable > record.balance + deposit:
            return self._required("invalid_batch_settlement_evm_exceeds_balance")
        record.balance += deposit
        charge = self.amount + 1 if self.overcharge else self.charge
        record.charged += charge
        record.signed_max, record.signature = max_claimable, voucher.signature
        state = {
            "channelId": voucher.channel_id,
            "balance": str(record.balance),
            "totalClaimed": "0",
            "chargedCumulativeAmount": str(record.charged + (1 if self.misreport_cumulative else 0)),
        }
        reply = {
            "success": True,
            "transaction": "0xdeposit" if deposit else "",
            "network": self.network,
            "payer": config.payer,
            "amount": str(deposit) if deposit else "",
            "extra": {"chargedAmount": str(charge), "channelState": state},
        }
        return httpx.Response(200, json=self.paid_body, headers={"PAYMENT-RESPONSE": b64(reply)})

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def _busy(self) -> httpx.Response:
        return self._required("invalid_batch_settlement_evm_channel_busy")

    def busy_transport(self, hold: float = 0.02) -> httpx.MockTransport:
        """Like `transport`, but one paid request at a time (each held ``hold`` seconds), as
        real servers reserve a channel: a concurrent one gets ``…_channel_busy``."""
        lock = threading.Lock()

        def handle(request: httpx.Request) -> httpx.Response:
            if "PAYMENT-SIGNATURE" not in request.headers:
                return self.handle(request)
            if not lock.acquire(blocking=False):
                return self._busy()
            try:
                time.sleep(hold)
                return self.handle(request)
            finally:
                lock.release()

        return httpx.MockTransport(handle)

    def async_busy_transport(self, hold: float = 0.02) -> httpx.MockTransport:
        """The asyncio twin of `busy_transport`."""
        in_flight = [False]

        async def handle(request: httpx.Request) -> httpx.Response:
            if "PAYMENT-SIGNATURE" not in request.headers:
                return self.handle(request)
            if in_flight[0]:
                return self._busy()
            in_flight[0] = True
            try:
                await asyncio.sleep(hold)
                return self.handle(request)
            finally:
                in_flight[0] = False

        return httpx.MockTransport(handle)

    async def asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The same server as an ASGI app (for clients that open their own connections)."""
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        if path == "/v1/models":  # the CLI reads the asset's decimals here
            response = httpx.Response(200, json={"payment": {"asset": {"decimals": 6}}})
        else:
            headers = [(k.decode(), v.decode()) for k, v in scope["headers"]]
            url = f"http://router{path}"
            response = self.handle(httpx.Request(scope["method"], url, headers=headers, content=body))
        content = response.read()
        headers_out = [(k.encode(), v.encode()) for k, v in response.headers.items() if k != "content-length"]
        headers_out.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers_out})
        await send({"type": "http.response.body", "body": content})
