"""Payment records for journal and ledger tests."""

from __future__ import annotations

import secrets
from dataclasses import replace

from payrouter.journal import PaymentRecord, State


def sample_record(payer: str = "0x" + "11" * 20, nonce: str | None = None, **changes: object) -> PaymentRecord:
    """A claimed ``exact`` record of ``payer`` (a fresh nonce unless given), with ``changes``."""
    nonce = nonce or "0x" + secrets.token_hex(32)
    base = PaymentRecord(
        id=f"exact:{payer}:{nonce}",
        scheme="exact",
        state=State.CLAIMED,
        owner="a",
        payer=payer,
        pay_to="0x" + "22" * 20,
        asset="0x" + "33" * 20,
        network="eip155:31337",
        amount=1000,
        nonce=nonce,
        valid_before=2**40,
        x402_version=2,
        payment="{}",
        fingerprint="f",
        request="r",
        path="/v1/chat/completions",
        stream=False,
        route="{}",
        model="gpt-4o-mini",
    )
    return replace(base, **changes)  # type: ignore[arg-type]
