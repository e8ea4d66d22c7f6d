"""Microbenchmarks of the signature work on the paid path.

Usage: .venv/bin/python bench/signatures.py [--n 5000]

Prints µs per operation for: our EIP-3009 digest, recovery with coincurve, the full
verify (digest + recover + compare), signing, and eth-account's generic path for contrast.
"""

from __future__ import annotations

import argparse

from eth_account import Account
from eth_account.messages import encode_typed_data

from bench.timing import per_op_us
from wallets import (
    Eip712Domain,
    LocalSigner,
    TransferWithAuthorization,
    ecc_backend_name,
    full_message,
    new_nonce,
    recover_authorizer,
    sign_authorization,
    typed_data_digest,
)
from wallets.recover import recover_address


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    n = parser.parse_args().n
    payer = LocalSigner.generate()
    domain = Eip712Domain("USD Coin", "2", 8453, "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913")
    auth = TransferWithAuthorization(
        payer.address, "0x90F79bf6EB2c4f870365E785982E1f101E93b906", 10_000, 0, 1_900_000_000, new_nonce()
    )
    signature = sign_authorization(payer, domain, auth)
    digest = typed_data_digest(domain, auth)
    wire = auth.to_wire()
    signable = encode_typed_data(full_message=full_message(domain, auth))

    rows = [
        ("parse wire authorization", lambda: TransferWithAuthorization.from_wire(wire)),
        ("EIP-3009 digest (ours)", lambda: typed_data_digest(domain, auth)),
        ("recover from digest (coincurve)", lambda: recover_address(digest, signature)),
        ("full verify: digest + recover + compare", lambda: recover_authorizer(domain, auth, signature) == auth.from_),
        (
            "parse + full verify",
            lambda: recover_authorizer(domain, TransferWithAuthorization.from_wire(wire), signature),
        ),
        ("sign (ours)", lambda: sign_authorization(payer, domain, auth)),
        ("eth-account encode_typed_data", lambda: encode_typed_data(full_message=full_message(domain, auth))),
        ("eth-account recover_message", lambda: Account.recover_message(signable, signature=signature)),
    ]
    print(f"ECC backend: {ecc_backend_name()}; n={n}, best of 3")
    for label, fn in rows:
        print(f"{label:<42} {per_op_us(fn, n):8.1f} µs")


if __name__ == "__main__":
    main()
