"""Who may rate a completion: the address that paid for it, proven by an EIP-191 signature.

The signed text names the completion id and the rating, so a signature rates one completion
one way: it cannot be replayed onto another completion or flipped to the other rating. Any
wallet's ``personal_sign`` produces it.
"""

from __future__ import annotations

from eth_typing import ChecksumAddress
from eth_utils.crypto import keccak

from wallets import LocalSigner
from wallets.recover import recover_address

__all__ = ["RATINGS", "feedback_digest", "feedback_message", "feedback_signer", "sign_feedback"]

# what a payer may say of a completion: it was right ("good", score 1) or wrong ("bad", 0)
RATINGS = {"good": 1.0, "bad": 0.0}


def feedback_message(completion_id: str, rating: str) -> str:
    """The text a payer signs (EIP-191 ``personal_sign``) to rate ``completion_id``."""
    return f"payrouter feedback\ncompletion: {completion_id}\nrating: {rating}"


def feedback_digest(completion_id: str, rating: str) -> bytes:
    """The EIP-191 (version 0x45) digest of `feedback_message`."""
    text = feedback_message(completion_id, rating).encode()
    return keccak(b"\x19Ethereum Signed Message:\n" + str(len(text)).encode() + text)


def feedback_signer(completion_id: str, rating: str, signature: bytes) -> ChecksumAddress:
    """The address that signed this rating.

    Raises:
        wallets.SignatureError: the signature is malformed or recovers to no key.
    """
    return recover_address(feedback_digest(completion_id, rating), signature)


def sign_feedback(signer: LocalSigner, completion_id: str, rating: str) -> str:
    """The ``0x``-hex signature rating ``completion_id`` (what ``POST /v1/feedback`` wants)."""
    return "0x" + signer.unsafe_sign_digest(feedback_digest(completion_id, rating)).hex()
