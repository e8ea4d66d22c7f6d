"""Seed a journal the way the service writes it: real EIP-3009 transfers on the dev chain, and
records moved through `RedisJournal.open`/`advance` along the states the gate takes them."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, replace
from typing import Any

from payrouter.devchain import DevChain, DevToken
from payrouter.journal import Journal, PaymentRecord, State
from wallets import LocalSigner, TransferWithAuthorization, sign_authorization

# 2025-03-01T10:00:00Z
BASE_MS = 1_740_823_200_000
MINUTE_MS = 60_000
DAY_MS = 86_400_000


@dataclass(frozen=True)
class Paid:
    """One signed authorization, and its transaction once submitted."""

    payer: LocalSigner
    auth: TransferWithAuthorization
    signature: bytes
    tx: str = ""
    block: int = 0

    @property
    def record_id(self) -> str:
        return f"exact:{self.payer.address.lower()}:0x{self.auth.nonce.hex()}"


def authorize(token: DevToken, payer: LocalSigner, pay_to: str, value: int, valid_before: int | None = None) -> Paid:
    auth = TransferWithAuthorization(
        from_=payer.address,
        to=pay_to,
        value=value,
        valid_after=0,
        valid_before=int(time.time()) + 3600 if valid_before is None else valid_before,
        nonce=secrets.token_bytes(32),
    )
    return Paid(payer, auth, sign_authorization(payer, token.domain, auth))


def submit(token: DevToken, relayer: LocalSigner, paid: Paid) -> Paid:
    receipt = token.transfer_with_authorization(relayer, paid.auth, paid.signature)
    return replace(paid, tx="0x" + bytes(receipt["transactionHash"]).hex(), block=int(receipt["blockNumber"]))


def record(
    chain: DevChain, token: DevToken, paid: Paid, model: str, created_at: int, *, stream: bool = False
) -> PaymentRecord:
    """The record the gate opens for ``paid`` (state claimed)."""
    auth = paid.auth
    accepted = {
        "scheme": "exact",
        "network": chain.network,
        "amount": str(auth.value),
        "asset": token.address,
        "payTo": auth.to,
        "maxTimeoutSeconds": 300,
        "extra": {"name": token.domain.name, "version": token.domain.version},
    }
    payment: dict[str, Any] = {
        "x402Version": 2,
        "accepted": accepted,
        "payload": {"signature": "0x" + paid.signature.hex(), "authorization": auth.to_wire()},
    }
    return PaymentRecord(
        id=paid.record_id,
        scheme="exact",
        state=State.CLAIMED,
        owner=secrets.token_hex(8),
        payer=auth.from_,
        pay_to=auth.to,
        asset=token.address,
        network=chain.network,
        amount=auth.value,
        nonce="0x" + auth.nonce.hex(),
        valid_before=auth.valid_before,
        x402_version=2,
        payment=json.dumps(payment, separators=(",", ":")),
        fingerprint=secrets.token_hex(16),
        request=secrets.token_hex(16),
        path="/v1/chat/completions",
        stream=stream,
        route="{}",
        model=model,
        created_at=created_at,
        updated_at=created_at,
    )


# The states the gate takes a record through to each final (or open) state.
PATHS = {
    State.CLAIMED: [],
    State.RELEASED: [State.RELEASED],
    State.SETTLED: [State.SERVING, State.SETTLING, State.SETTLED],
    State.PENDING: [State.SERVING, State.SETTLING, State.PENDING],
    State.OWED: [State.SERVING, State.SETTLING, State.OWED],
}


async def write(journal: Journal, opened: PaymentRecord, final: str, **changes: Any) -> PaymentRecord:
    """Open ``opened`` and advance it to ``final``, one second per step; ``changes`` land on the last step."""
    assert (await journal.open(opened)).outcome == "new"
    current = opened
    steps = PATHS[final]
    for i, state in enumerate(steps, start=1):
        last = i == len(steps)
        new = replace(current, state=state, updated_at=opened.created_at + 1000 * i, **(changes if last else {}))
        if state == State.SETTLED and "settled_at" not in changes:
            new.settled_at = new.updated_at
        written, stored = await journal.advance(new, [current.state])
        assert written, (current.id, current.state, state, stored)
        current = new
    return current
