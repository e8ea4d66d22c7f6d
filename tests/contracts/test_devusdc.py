"""The dev stablecoin on a real anvil: EIP-3009 semantics and FiatTokenV2 revert strings."""

from __future__ import annotations

import time

import pytest
from eth_utils.crypto import keccak
from web3.exceptions import ContractLogicError

from payrouter.devchain import DevChain, DevChainError, DevToken
from wallets import (
    CancelAuthorization,
    LocalSigner,
    ReceiveWithAuthorization,
    TransferWithAuthorization,
    new_nonce,
    sign_authorization,
)


@pytest.fixture
def payer(chain: DevChain, token: DevToken) -> LocalSigner:
    signer = chain.new_account()
    token.mint(signer.address, 1_000_000)
    return signer


@pytest.fixture
def payee(chain: DevChain) -> LocalSigner:
    return chain.new_account()


@pytest.fixture
def relayer(chain: DevChain) -> LocalSigner:
    return chain.new_account()


def _auth(payer: LocalSigner, payee: LocalSigner, value: int = 10_000, **kw: int) -> TransferWithAuthorization:
    fields = {"valid_after": 0, "valid_before": int(time.time()) + 300} | kw
    return TransferWithAuthorization(payer.address, payee.address, value, nonce=new_nonce(), **fields)


def _revert_reason(token: DevToken, auth: TransferWithAuthorization, signature: bytes, sender: str) -> str:
    with pytest.raises(ContractLogicError) as info:
        token.transfer_with_authorization_call(auth, signature).call({"from": sender})
    return str(info.value.args[0])


def test_metadata_and_domain_separator(token: DevToken) -> None:
    fns = token.contract.functions
    assert (fns.name().call(), fns.symbol().call(), fns.decimals().call(), fns.version().call()) == (
        "USD Coin",
        "USDC",
        6,
        "2",
    )
    assert fns.DOMAIN_SEPARATOR().call() == token.domain.separator


def test_domain_name_and_version_are_set_at_deploy(chain: DevChain) -> None:
    other = chain.deploy_token(name="USDC", symbol="USDC", version="7")
    assert other.contract.functions.version().call() == "7"
    assert other.contract.functions.DOMAIN_SEPARATOR().call() == other.domain.separator
    assert other.domain.separator != chain.deploy_token().domain.separator


@pytest.mark.parametrize("split", [True, False], ids=["v_r_s", "bytes_signature"])
def test_transfer_with_authorization_moves_exactly_value(
    token: DevToken, payer: LocalSigner, payee: LocalSigner, relayer: LocalSigner, split: bool
) -> None:
    auth = _auth(payer, payee, 12_345)
    signature = sign_authorization(payer, token.domain, auth)
    receipt = token.transfer_with_authorization(relayer, auth, signature, split=split)
    assert receipt["status"] == 1
    assert token.balance_of(payer.address) == 1_000_000 - 12_345
    assert token.balance_of(payee.address) == 12_345
    assert token.balance_of(relayer.address) == 0
    assert token.authorization_state(payer.address, auth.nonce) is True


def test_replay_reverts(token: DevToken, payer: LocalSigner, payee: LocalSigner, relayer: LocalSigner) -> None:
    auth = _auth(payer, payee)
    signature = sign_authorization(payer, token.domain, auth)
    token.transfer_with_authorization(relayer, auth, signature)
    reason = _revert_reason(token, auth, signature, relayer.address)
    assert "FiatTokenV2: authorization is used or canceled" in reason
    with pytest.raises(DevChainError):
        token.transfer_with_authorization(relayer, auth, signature)
    assert token.balance_of(payee.address) == 10_000


def test_expired_reverts(token: DevToken, payer: LocalSigner, payee: LocalSigner) -> None:
    auth = _auth(payer, payee, valid_before=int(time.time()) - 10)
    reason = _revert_reason(token, auth, sign_authorization(payer, token.domain, auth), payer.address)
    assert "FiatTokenV2: authorization is expired" in reason


def test_not_yet_valid_reverts(token: DevToken, payer: LocalSigner, payee: LocalSigner) -> None:
    auth = _auth(payer, payee, valid_after=int(time.time()) + 3600)
    reason = _revert_reason(token, auth, sign_authorization(payer, token.domain, auth), payer.address)
    assert "FiatTokenV2: authorization is not yet valid" in reason


@pytest.mark.parametrize("split", [True, False], ids=["v_r_s", "bytes_signature"])
def test_wrong_signer_reverts(
    chain: DevChain, token: DevToken, payer: LocalSigner, payee: LocalSigner, split: bool
) -> None:
    thief = chain.new_account()
    auth = _auth(payer, payee)
    forged = thief.sign_typed_data(token.domain, auth)
    with pytest.raises(ContractLogicError, match="FiatTokenV2: invalid signature"):
        token.transfer_with_authorization_call(auth, forged, split=split).call({"from": thief.address})
    assert token.balance_of(payer.address) == 1_000_000


def test_signature_for_other_value_reverts(token: DevToken, payer: LocalSigner, payee: LocalSigner) -> None:
    auth = _auth(payer, payee, 1)
    signature = sign_authorization(payer, token.domain, auth)
    inflated = TransferWithAuthorization(auth.from_, auth.to, 999_999, auth.valid_after, auth.valid_before, auth.nonce)
    assert "FiatTokenV2: invalid signature" in _revert_reason(token, inflated, signature, payee.address)


@pytest.mark.parametrize("split", [True, False], ids=["v_r_s", "bytes_signature"])
def test_cancelled_authorization_reverts(
    token: DevToken, payer: LocalSigner, payee: LocalSigner, relayer: LocalSigner, split: bool
) -> None:
    auth = _auth(payer, payee)
    signature = sign_authorization(payer, token.domain, auth)
    cancel = CancelAuthorization(payer.address, auth.nonce)
    token.cancel_authorization(relayer, cancel, sign_authorization(payer, token.domain, cancel), split=split)
    assert token.authorization_state(payer.address, auth.nonce) is True
    assert "FiatTokenV2: authorization is used or canceled" in _revert_reason(token, auth, signature, relayer.address)
    assert token.balance_of(payee.address) == 0


def test_insufficient_balance_uses_fiat_token_string(token: DevToken, payer: LocalSigner, payee: LocalSigner) -> None:
    auth = _auth(payer, payee, 1_000_001)
    reason = _revert_reason(token, auth, sign_authorization(payer, token.domain, auth), payee.address)
    assert "ERC20: transfer amount exceeds balance" in reason


def test_receive_with_authorization_only_by_payee(
    token: DevToken, payer: LocalSigner, payee: LocalSigner, relayer: LocalSigner
) -> None:
    base = _auth(payer, payee, 777)
    auth = ReceiveWithAuthorization(base.from_, base.to, base.value, base.valid_after, base.valid_before, base.nonce)
    signature = sign_authorization(payer, token.domain, auth)
    fn = token.contract.get_function_by_signature(
        "receiveWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)"
    )
    call = fn(auth.from_, auth.to, auth.value, auth.valid_after, auth.valid_before, auth.nonce, signature)
    with pytest.raises(ContractLogicError, match="FiatTokenV2: caller must be the payee"):
        call.call({"from": relayer.address})
    # A receive signature is not a transfer signature: the type hash differs.
    assert "FiatTokenV2: invalid signature" in _revert_reason(token, base, signature, relayer.address)
    token.chain.send(payee, {"to": token.address, "data": call._encode_transaction_data()})
    assert token.balance_of(payee.address) == 777


def test_mint_is_owner_only(chain: DevChain, token: DevToken, payer: LocalSigner) -> None:
    selector = "0x" + keccak(text="OwnableUnauthorizedAccount(address)")[:4].hex()
    with pytest.raises(ContractLogicError) as info:
        token.contract.functions.mint(payer.address, 1).call({"from": payer.address})
    assert str(info.value.data).startswith(selector)
    assert token.balance_of(payer.address) == 1_000_000
