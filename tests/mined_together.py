"""Several EIP-3009 authorizations mined by one transaction (Multicall3 ``aggregate3``), as a
payer's own tooling may submit them."""

from __future__ import annotations

from typing import Any

from web3 import Web3

from payrouter.artifacts import load_artifact
from payrouter.devchain import DevChain, DevToken
from wallets import TransferWithAuthorization
from wallets.channels import MULTICALL3_ADDRESS


def mined_together(chain: DevChain, token: DevToken, signed: list[tuple[TransferWithAuthorization, bytes]]) -> Any:
    """The receipt of one transaction (from a fresh relayer) that submits ``signed`` in order;
    Multicall3 must be installed at its canonical address."""
    multicall = chain.w3.eth.contract(
        address=Web3.to_checksum_address(MULTICALL3_ADDRESS), abi=load_artifact("Multicall3")["abi"]
    )
    calls = [
        (token.address, False, token.transfer_with_authorization_call(auth, sig)._encode_transaction_data())
        for auth, sig in signed
    ]
    data = multicall.functions.aggregate3(calls)._encode_transaction_data()
    return chain.send(chain.new_account(), {"to": multicall.address, "data": data, "gas": 1_000_000})
