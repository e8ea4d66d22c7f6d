"""batch-settlement payloads the agent signs, checked by independent verifiers: the official x402
SDK's facilitator checks and eth-account recovery; and a deposit executed by the real contract
on anvil, its balance read back through the client's own ``channels()`` reader."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from web3 import Web3
from x402.mechanisms.evm.batch_settlement.constants import VOUCHER_TYPES
from x402.mechanisms.evm.batch_settlement.facilitator.deposit_eip3009 import (
    build_eip3009_deposit_collector_data,
    verify_eip3009_deposit_authorization,
)
from x402.mechanisms.evm.batch_settlement.facilitator.utils import (
    validate_channel_config,
    verify_batch_settlement_voucher_typed_data,
)
from x402.mechanisms.evm.batch_settlement.types import (
    DepositPayload,
    RefundPayload,
    VoucherPayload,
    is_deposit_payload,
    is_refund_payload,
    is_voucher_payload,
)
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id, get_batch_settlement_eip712_domain
from x402.mechanisms.evm.signers import FacilitatorWeb3Signer
from x402.schemas import PaymentRequirements

from payrouter.artifacts import load_artifact
from payrouter.client.vouchers import (
    ChannelResponseError,
    config_for_offer,
    deposit_payload,
    read_channel_reply,
    read_corrective_state,
    read_onchain_channel,
    refund_payload,
    voucher_payload,
)
from payrouter.devchain import DevChain, DevToken
from wallets import LocalSigner, TypedDataError
from wallets.channels import BATCH_SETTLEMENT_ADDRESS, ERC3009_DEPOSIT_COLLECTOR_ADDRESS

CHAIN_ID = 31337


def _offer(token: str, pay_to: str, authorizer: str, amount: int = 1_000, **extra: Any) -> dict[str, Any]:
    return {
        "scheme": "batch-settlement",
        "network": f"eip155:{CHAIN_ID}",
        "amount": str(amount),
        "asset": token,
        "payTo": pay_to,
        "maxTimeoutSeconds": 300,
        "extra": {
            "receiverAuthorizer": authorizer,
            "withdrawDelay": 900,
            "name": "USD Coin",
            "version": "2",
            "assetTransferMethod": "eip3009",
            **extra,
        },
    }


def _sdk_requirements(offer: dict[str, Any]) -> PaymentRequirements:
    return PaymentRequirements.model_validate(offer)


def _recover_voucher(channel_id: str, max_claimable: int, signature: str) -> str:
    signable = encode_typed_data(
        domain_data=get_batch_settlement_eip712_domain(CHAIN_ID),
        message_types=VOUCHER_TYPES,
        message_data={"channelId": bytes.fromhex(channel_id[2:]), "maxClaimableAmount": max_claimable},
    )
    return str(Account.recover_message(signable, signature=bytes.fromhex(signature[2:])))


def test_voucher_payload_verifies_with_the_sdk() -> None:
    payer, receiver, authorizer = LocalSigner.generate(), LocalSigner.generate(), LocalSigner.generate()
    offer = _offer("0x" + "44" * 20, receiver.address, authorizer.address)
    config = config_for_offer(offer, payer.address)
    payload = voucher_payload(payer, config, CHAIN_ID, 12_345)
    assert is_voucher_payload(payload) and not is_deposit_payload(payload)
    parsed = VoucherPayload.from_dict(payload)
    assert parsed.channel_config is not None and parsed.voucher is not None
    assert validate_channel_config(parsed.channel_config, parsed.voucher.channel_id, _sdk_requirements(offer)) is None
    assert parsed.voucher.channel_id == compute_channel_id(parsed.channel_config, CHAIN_ID)
    assert parsed.voucher.max_claimable_amount == "12345"
    assert payload["channelConfig"]["withdrawDelay"] == 900  # a JSON integer, as the SDK requires
    assert verify_batch_settlement_voucher_typed_data(
        None,  # type: ignore[arg-type]  # an ECDSA payerAuthorizer needs no chain access
        parsed.voucher.channel_id,
        "12345",
        payer.address,
        payer.address,
        parsed.voucher.signature,
        CHAIN_ID,
    )
    assert _recover_voucher(parsed.voucher.channel_id, 12_345, parsed.voucher.signature) == payer.address


def test_refund_payload_carries_a_zero_charge_voucher() -> None:
    payer, receiver, authorizer = LocalSigner.generate(), LocalSigner.generate(), LocalSigner.generate()
    config = config_for_offer(_offer("0x" + "44" * 20, receiver.address, authorizer.address), payer.address)
    full = refund_payload(payer, config, CHAIN_ID, 3_900)
    assert is_refund_payload(full) and "amount" not in full
    parsed = RefundPayload.from_dict(refund_payload(payer, config, CHAIN_ID, 3_900, amount=500))
    assert parsed.amount == "500" and parsed.voucher is not None
    assert parsed.voucher.max_claimable_amount == "3900"
    assert _recover_voucher(parsed.voucher.channel_id, 3_900, parsed.voucher.signature) == payer.address


def test_offer_terms_are_checked() -> None:
    payer = LocalSigner.generate().address
    good = _offer("0x" + "44" * 20, "0x" + "22" * 20, "0x" + "33" * 20)
    extras: list[tuple[dict[str, Any], str]] = [
        ({"withdrawDelay": "900"}, "withdrawDelay"),
        ({"withdrawDelay": 899}, "withdrawDelay"),
        ({"receiverAuthorizer": "0x" + "00" * 20}, "receiverAuthorizer"),
    ]
    for extra, message in extras:
        bad = {**good, "extra": {**good["extra"], **extra}}
        with pytest.raises(TypedDataError, match=message):
            config_for_offer(bad, payer)


def test_channel_replies_are_checked() -> None:
    def header(data: dict[str, Any]) -> str:
        return base64.b64encode(json.dumps(data).encode()).decode()

    state = {"channelId": "0x" + "ab" * 32, "chargedCumulativeAmount": "3900", "balance": "100000"}
    reply = read_channel_reply(
        header({"success": True, "extra": {"chargedAmount": "700", "channelState": state}}), 1_000
    )
    assert (reply.charged, reply.cumulative, reply.channel_id) == (700, 3_900, "0x" + "ab" * 32)
    assert read_channel_reply(header({"success": True}), 1_000).charged == 0  # missing: nothing charged
    for charged in ("1001", 700, "-1", "7e2"):
        with pytest.raises(ChannelResponseError):
            read_channel_reply(header({"success": True, "extra": {"chargedAmount": charged}}), 1_000)
    with pytest.raises(ChannelResponseError):
        read_channel_reply("not base64 json", 1_000)


def test_corrective_state_needs_a_recoverable_error() -> None:
    accepts = [
        {
            "scheme": "batch-settlement",
            "extra": {
                "channelState": {"chargedCumulativeAmount": "5", "balance": "9"},
                "voucherState": {"signedMaxClaimable": "7", "signature": "0x" + "11" * 65},
            },
        }
    ]
    assert read_corrective_state({"error": "invalid_batch_settlement_evm_channel_busy", "accepts": accepts}) is None
    state = read_corrective_state(
        {"error": "invalid_batch_settlement_evm_cumulative_amount_mismatch", "accepts": accepts}
    )
    assert state is not None and (state.charged, state.balance, state.signed_max) == (5, 9, 7)
    assert state.signature == bytes.fromhex("11" * 65)
    below = read_corrective_state(
        {"error": "invalid_batch_settlement_evm_cumulative_amount_below_claimed", "accepts": accepts}
    )
    assert below is not None and below.charged == 5


# ------------------------------------------------------------------ on anvil


class _Facilitator(FacilitatorWeb3Signer):
    @property
    def w3(self) -> Web3:
        return self._w3


def test_a_deposit_the_client_signs_is_accepted_by_the_contract(chain: DevChain, token: DevToken) -> None:
    chain.install_batch_settlement()
    payer, receiver, authorizer = chain.new_account(), chain.new_account(), chain.new_account()
    token.mint(payer.address, 1_000_000)
    offer = _offer(token.address, receiver.address, authorizer.address, amount=2_000)
    config = config_for_offer(offer, payer.address)
    channel_id = config.channel_id(chain.chain_id)
    assert read_onchain_channel(chain.rpc_url, channel_id).balance == 0

    payload = deposit_payload(
        payer, config, chain.chain_id, 2_000, 250_000, token.domain.name, token.domain.version, 300
    )
    assert is_deposit_payload(payload)
    parsed = DepositPayload.from_dict(payload)
    auth = parsed.deposit.authorization.erc3009_authorization  # type: ignore[union-attr]
    assert auth is not None and auth.valid_after == "0" and int(auth.valid_before) > time.time()
    facilitator = _Facilitator(chain.new_account().unsafe_export_private_key(), chain.rpc_url)
    counterfactual, rejected = verify_eip3009_deposit_authorization(
        facilitator, parsed, _sdk_requirements(offer), chain.chain_id
    )
    assert (counterfactual, rejected) == (None, None)

    # the contract executes it: the collector redeems the payer's ReceiveWithAuthorization
    settlement = chain.w3.eth.contract(
        address=Web3.to_checksum_address(BATCH_SETTLEMENT_ADDRESS), abi=load_artifact("BatchSettlement")["abi"]
    )
    config_tuple = (
        config.payer,
        config.payer_authorizer,
        config.receiver,
        config.receiver_authorizer,
        config.token,
        config.withdraw_delay,
        config.salt,
    )
    data = build_eip3009_deposit_collector_data(parsed)
    call = settlement.functions.deposit(config_tuple, 250_000, ERC3009_DEPOSIT_COLLECTOR_ADDRESS, data)
    receipt = chain.send(chain.new_account(), {"to": BATCH_SETTLEMENT_ADDRESS, "data": call._encode_transaction_data()})
    assert receipt["status"] == 1
    onchain = read_onchain_channel(chain.rpc_url, channel_id)
    assert (onchain.balance, onchain.total_claimed) == (250_000, 0)
    assert token.balance_of(payer.address) == 750_000
    assert settlement.functions.getChannelId(config_tuple).call() == channel_id
