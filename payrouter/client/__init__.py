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

Payment channels (x402 ``batch-settlement``: deposit once, then one signed voucher per request;
the server charges the actual price)::

    transport = PaymentTransport(signer, policy, budget, channels=ChannelOptions(store=FileChannelStore()))
    ...
    refund_channel(signer, url, FileChannelStore(), budget=budget)  # take back what is left
"""

from payrouter.client.channel_payer import ChannelOptions, ChannelTermsChanged
from payrouter.client.channels import (
    ChannelState,
    ChannelStore,
    FileChannelStore,
    MemoryChannelStore,
    RedisChannelStore,
)
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
from payrouter.client.refunds import RefundError, RefundResult, refund_channel
from payrouter.client.schemes import Receipt
from payrouter.client.transport import AsyncPaymentTransport, PaymentPending, PaymentTransport, receipt_of
from payrouter.client.vouchers import ChannelResponseError

__all__ = [
    "AsyncPaymentTransport",
    "BudgetStore",
    "ChannelOptions",
    "ChannelResponseError",
    "ChannelState",
    "ChannelStore",
    "ChannelTermsChanged",
    "FileBudgetStore",
    "FileChannelStore",
    "MemoryBudgetStore",
    "MemoryChannelStore",
    "Offer",
    "PaymentOfferError",
    "PaymentPending",
    "PaymentRefused",
    "PaymentTransport",
    "Receipt",
    "RedisBudgetStore",
    "RedisChannelStore",
    "RefundError",
    "RefundResult",
    "SignedPayment",
    "SpendingPolicy",
    "build_payment_header",
    "read_offer",
    "receipt_of",
    "refund_channel",
    "sign_offer",
]
