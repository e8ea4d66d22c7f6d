"""Finding a payment on chain that another transaction settled (anyone may submit a signed
authorization): both facilitators ask before they call a settlement failed."""

from __future__ import annotations

from payrouter.chain import AUTHORIZATION_USED_TOPIC, TRANSFER_TOPIC, ChainClient, Receipt
from payrouter.x402.requirements import Requirements
from payrouter.x402.wire import PaymentPayload

__all__ = ["find_settlement", "has_transfer"]


def _topic_address(address: str) -> str:
    return "0x" + "0" * 24 + address[2:].lower()


def has_transfer(receipt: Receipt, payment: PaymentPayload, req: Requirements) -> bool:
    """``receipt`` holds the payment's ``Transfer`` of exactly its value from the payer to ``pay_to``."""
    auth = payment.authorization
    want = [TRANSFER_TOPIC, _topic_address(auth.from_), _topic_address(req.pay_to)]
    for log in receipt.logs:
        topics = [t.lower() for t in log.get("topics", [])]
        if (
            log.get("address", "").lower() == req.asset.lower()
            and topics == want
            and int(log.get("data", "0x0"), 16) == auth.value
        ):
            return True
    return False


async def find_settlement(chain: ChainClient, payment: PaymentPayload, req: Requirements) -> str | None:
    """The transaction that used this authorization to pay ``req.pay_to``, if any.

    Raises:
        ChainError: the chain could not be searched.
    """
    auth = payment.authorization
    logs = await chain.get_logs(
        req.asset, [AUTHORIZATION_USED_TOPIC, _topic_address(auth.from_), "0x" + auth.nonce.hex()]
    )
    for log in logs:
        receipt = await chain.receipt(log["transactionHash"])
        if receipt is not None and receipt.status == 1 and has_transfer(receipt, payment, req):
            return receipt.transaction_hash
    return None
