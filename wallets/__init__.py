"""wallets: keys, signers and EIP-712 / EIP-3009 typed data for payrouter.

Pure library: no web framework, no Redis, no reading of the environment.

Quick start::

    from wallets import Eip712Domain, LocalSigner, TransferWithAuthorization, new_nonce

    payer = LocalSigner.generate()
    domain = Eip712Domain("USD Coin", "2", 8453, "0x8335...")
    auth = TransferWithAuthorization(payer.address, pay_to, 10_000, 0, now + 300, new_nonce())
    signature = sign_authorization(payer, domain, auth)
    assert recover_authorizer(domain, auth, signature) == payer.address
"""

from wallets.channels import (
    BATCH_SETTLEMENT_ADDRESS,
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
    MAX_WITHDRAW_DELAY,
    MIN_WITHDRAW_DELAY,
    MULTICALL3_ADDRESS,
    ChannelConfig,
    ClaimBatch,
    ClaimEntry,
    Refund,
    Voucher,
    batch_settlement_domain,
    deposit_nonce,
)
from wallets.eip712 import Eip712Domain, Eip712Struct, full_message, typed_data_digest
from wallets.eip3009 import (
    CancelAuthorization,
    ReceiveWithAuthorization,
    TransferWithAuthorization,
    new_nonce,
    recover_authorizer,
    sign_authorization,
)
from wallets.errors import InvalidKeyError, KeystoreError, SignatureError, TypedDataError, WalletError
from wallets.keys import LocalSigner, load_keystore, save_keystore
from wallets.recover import ecc_backend_name, normalize_signature, recover_address, recover_address_bytes
from wallets.signer import Signer, TransactionSigner
from wallets.transactions import Eip1559Transaction

__all__ = [
    "BATCH_SETTLEMENT_ADDRESS",
    "CancelAuthorization",
    "ChannelConfig",
    "ClaimBatch",
    "ClaimEntry",
    "ERC3009_DEPOSIT_COLLECTOR_ADDRESS",
    "Eip1559Transaction",
    "Eip712Domain",
    "Eip712Struct",
    "InvalidKeyError",
    "KeystoreError",
    "LocalSigner",
    "MAX_WITHDRAW_DELAY",
    "MIN_WITHDRAW_DELAY",
    "MULTICALL3_ADDRESS",
    "ReceiveWithAuthorization",
    "Refund",
    "SignatureError",
    "Signer",
    "TransactionSigner",
    "TransferWithAuthorization",
    "TypedDataError",
    "Voucher",
    "WalletError",
    "batch_settlement_domain",
    "deposit_nonce",
    "ecc_backend_name",
    "full_message",
    "load_keystore",
    "new_nonce",
    "normalize_signature",
    "recover_address",
    "recover_address_bytes",
    "recover_authorizer",
    "save_keystore",
    "sign_authorization",
    "typed_data_digest",
]
