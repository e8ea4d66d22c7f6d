"""The agent side of x402: pay 402s safely under a budget.

Quick start::

    import httpx
    from payrouter.client import PaymentTransport, SpendingPolicy, FileBudgetStore, receipt_of
    from wallets import LocalSigner

    transport = PaymentTransport(
        LocalSigner(os.environ["PAYROUTER_PRIVATE_KEY"]),
        SpendingPolicy(max_per_call=50_000, per_day=2_000_000),  # atomic units (USDC: 6 decimals)
        FileBudgetStore(),
    )
    with httpx.Client(transport=transport) as http:
        r = http.post(f"{ROUTER}/v1/chat/completions", json={"model": "auto", "messages": [...]})
        print(r.json()["choices"][0]["message"]["content"], receipt_of(r))
"""

from payrouter.client.payment import (
    Offer,
    PaymentOfferError,
    SignedPayment,
    build_payment_header,
    read_offer,
    sign_offer,
)
from payrouter.client.policy import (
    BudgetStore,
    FileBudgetStore,
    MemoryBudgetStore,
    PaymentRefused,
    RedisBudgetStore,
    SpendingPolicy,
)
from payrouter.client.transport import AsyncPaymentTransport, PaymentPending, PaymentTransport, Receipt, receipt_of

__all__ = [
    "AsyncPaymentTransport",
    "BudgetStore",
    "FileBudgetStore",
    "MemoryBudgetStore",
    "Offer",
    "PaymentOfferError",
    "PaymentPending",
    "PaymentRefused",
    "PaymentTransport",
    "Receipt",
    "RedisBudgetStore",
    "SignedPayment",
    "SpendingPolicy",
    "build_payment_header",
    "read_offer",
    "receipt_of",
    "sign_offer",
]
