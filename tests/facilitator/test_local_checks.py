"""LocalFacilitator.verify refuses bad payments on its own, before and without the chain.

On a live chain the token's simulation refuses the same payments with the same reasons, so
integration tests cannot tell whether the local checks work. Here the RPC is unreachable: a
payment that gets past the local checks can only fail with ``unexpected_verify_error``, so
each specific reason below must come from the local check itself.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from payrouter.chain import ChainClient
from payrouter.facilitator.local import LocalFacilitator
from payrouter.store import MemoryStore
from payrouter.x402.errors import PaymentRejected, Reason
from payrouter.x402.requirements import Requirements
from payrouter.x402.wire import PaymentPayload, parse_payment
from wallets import Eip712Domain, LocalSigner, TransferWithAuthorization, new_nonce

CHAIN_ID = 31337
ASSET = "0x" + "a1" * 20
PAY_TO = LocalSigner.generate().address
AMOUNT = 12_345
REQUIREMENTS = Requirements(
    network=f"eip155:{CHAIN_ID}",
    amount=AMOUNT,
    asset=ASSET,
    pay_to=PAY_TO,
    max_timeout_seconds=300,
    extra={"name": "USD Coin", "version": "2"},
)
DOMAIN = Eip712Domain("USD Coin", "2", CHAIN_ID, ASSET)


@pytest.fixture(scope="module")
def closed_port() -> Iterator[int]:
    """A loopback port held bound but never listening: connecting is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
async def facilitator(closed_port: int) -> AsyncIterator[LocalFacilitator]:
    chain = ChainClient(f"http://127.0.0.1:{closed_port}", timeout=2.0)
    local = LocalFacilitator(chain, LocalSigner.generate(), MemoryStore(), CHAIN_ID)
    yield local
    await local.close()


def _payment(
    payer: LocalSigner,
    *,
    sign_with: LocalSigner | None = None,
    domain: Eip712Domain = DOMAIN,
    to: str = PAY_TO,
    value: int = AMOUNT,
    valid_after: int = 0,
    valid_before: int | None = None,
    signature: bytes | None = None,
) -> PaymentPayload:
    """A v2 payment from ``payer``, with any field (or the key that signs it) made wrong."""
    auth = TransferWithAuthorization(
        from_=payer.address,
        to=to,
        value=value,
        valid_after=valid_after,
        valid_before=int(time.time()) + 300 if valid_before is None else valid_before,
        nonce=new_nonce(),
    )
    if signature is None:
        signature = (sign_with or payer).sign_typed_data(domain, auth)
    obj: dict[str, Any] = {
        "x402Version": 2,
        "resource": {"url": "http://router.test/v1/chat/completions"},
        "accepted": REQUIREMENTS.to_v2(),
        "payload": {"signature": "0x" + signature.hex(), "authorization": auth.to_wire()},
    }
    return parse_payment(obj, 2)


async def _reason(facilitator: LocalFacilitator, payment: PaymentPayload) -> str:
    with pytest.raises(PaymentRejected) as rejected:
        await facilitator.verify(payment, REQUIREMENTS)
    assert rejected.value.payer == payment.authorization.from_
    return rejected.value.reason


async def test_a_correct_payment_reaches_the_chain(facilitator: LocalFacilitator) -> None:
    # every local check passes, so only the unreachable RPC can refuse it
    reason = await _reason(facilitator, _payment(LocalSigner.generate()))
    assert reason == Reason.UNEXPECTED_VERIFY


async def test_a_signature_by_anyone_else_is_refused(facilitator: LocalFacilitator) -> None:
    payer, thief = LocalSigner.generate(), LocalSigner.generate()
    assert await _reason(facilitator, _payment(payer, sign_with=thief)) == Reason.SIGNATURE


async def test_a_signature_for_another_token_is_refused(facilitator: LocalFacilitator) -> None:
    other = Eip712Domain("USD Coin", "2", CHAIN_ID, "0x" + "b2" * 20)
    assert await _reason(facilitator, _payment(LocalSigner.generate(), domain=other)) == Reason.SIGNATURE


async def test_a_signature_for_another_chain_is_refused(facilitator: LocalFacilitator) -> None:
    other = Eip712Domain("USD Coin", "2", 8453, ASSET)
    assert await _reason(facilitator, _payment(LocalSigner.generate(), domain=other)) == Reason.SIGNATURE


async def test_a_garbage_signature_is_refused(facilitator: LocalFacilitator) -> None:
    garbage = bytes(range(64)) + b"\x1f"  # 65 bytes, v out of range
    assert await _reason(facilitator, _payment(LocalSigner.generate(), signature=garbage)) == Reason.SIGNATURE


@pytest.mark.parametrize("value", [AMOUNT - 1, AMOUNT + 1, 0], ids=["less", "more", "zero"])
async def test_a_wrong_value_is_refused(facilitator: LocalFacilitator, value: int) -> None:
    assert await _reason(facilitator, _payment(LocalSigner.generate(), value=value)) == Reason.VALUE_MISMATCH


async def test_a_wrong_recipient_is_refused(facilitator: LocalFacilitator) -> None:
    elsewhere = LocalSigner.generate().address
    reason = await _reason(facilitator, _payment(LocalSigner.generate(), to=elsewhere))
    assert reason == Reason.RECIPIENT_MISMATCH


@pytest.mark.parametrize("seconds_left", [-60, 0, 3, 5], ids=["expired", "now", "in_3s", "in_5s"])
async def test_an_expired_or_expiring_authorization_is_refused(
    facilitator: LocalFacilitator, seconds_left: int
) -> None:
    payment = _payment(LocalSigner.generate(), valid_before=int(time.time()) + seconds_left)
    assert await _reason(facilitator, payment) == Reason.VALID_BEFORE


async def test_an_authorization_valid_long_enough_passes_the_expiry_check(facilitator: LocalFacilitator) -> None:
    payment = _payment(LocalSigner.generate(), valid_before=int(time.time()) + 30)
    assert await _reason(facilitator, payment) == Reason.UNEXPECTED_VERIFY


async def test_a_not_yet_valid_authorization_is_refused(facilitator: LocalFacilitator) -> None:
    payment = _payment(LocalSigner.generate(), valid_after=int(time.time()) + 120)
    assert await _reason(facilitator, payment) == Reason.VALID_AFTER
