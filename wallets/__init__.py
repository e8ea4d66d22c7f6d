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
from wallets.recover import ecc_backend_name, normalize_signature, recover_address
from wallets.signer import Signer, TransactionSigner
from wallets.transactions import Eip1559Transaction

__all__ = [
    "CancelAuthorization",
    "Eip1559Transaction",
    "Eip712Domain",
    "Eip712Struct",
    "InvalidKeyError",
    "KeystoreError",
    "LocalSigner",
    "ReceiveWithAuthorization",
    "SignatureError",
    "Signer",
    "TransactionSigner",
    "TransferWithAuthorization",
    "TypedDataError",
    "WalletError",
    "ecc_backend_name",
    "full_message",
    "load_keystore",
    "new_nonce",
    "normalize_signature",
    "recover_address",
    "recover_authorizer",
    "save_keystore",
    "sign_authorization",
    "typed_data_digest",
]
