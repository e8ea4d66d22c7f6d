"""Finding a payment on chain, on a private anvil (its clock is moved here): the transfer that
pays an authorization is the one right after its ``AuthorizationUsed``, never another transfer
of the same transaction; and searches are bounded by time, window by window back from the head."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from payrouter.chain import AUTHORIZATION_USED_TOPIC, TRANSFER_TOPIC, ChainClient, ChainError
from payrouter.devchain import DevChain, DevToken
from payrouter.facilitator.onchain import find_settlement, pays, used_to_pay
from payrouter.x402.requirements import Requirements
from payrouter.x402.wire import PaymentPayload
from tests.mined_together import mined_together
from wallets import LocalSigner, TransferWithAuthorization, new_nonce, sign_authorization
from wallets.channels import MULTICALL3_ADDRESS

AMOUNT = 700


@pytest.fixture(scope="module")
def own_chain() -> Iterator[DevChain]:
    with DevChain.start() as chain:
        chain.install_at("Multicall3", [], MULTICALL3_ADDRESS)
        yield chain


@pytest.fixture(scope="module")
def own_token(own_chain: DevChain) -> DevToken:
    return own_chain.deploy_token()


def _signed(token: DevToken, payer: LocalSigner, to: str, value: int) -> tuple[TransferWithAuthorization, bytes]:
    # far in the future: this chain's clock is moved hours ahead by a test below
    auth = TransferWithAuthorization(payer.address, to, value, 0, 2**40, new_nonce())
    return auth, sign_authorization(payer, token.domain, auth)


def _payment(auth: TransferWithAuthorization, signature: bytes) -> PaymentPayload:
    return PaymentPayload(2, "exact", "eip155:31337", None, auth, signature, {})


@pytest.mark.parametrize("spent_first", [True, False], ids=["spent-then-paid", "paid-then-spent"])
async def test_a_transfer_pays_only_the_authorization_it_follows(
    own_chain: DevChain, own_token: DevToken, spent_first: bool
) -> None:
    """A payer's multicall spends the nonce of a payment we hold (a transfer to itself) and pays
    another authorization to pay_to, of the same amount, in the same transaction: the held
    payment is not paid (one transfer must not settle many payments)."""
    payer, pay_to = LocalSigner.generate(), LocalSigner.generate().address
    own_token.mint(payer.address, 10 * AMOUNT)
    held = _signed(own_token, payer, pay_to, AMOUNT)  # the payment a request of ours holds
    spent = TransferWithAuthorization(payer.address, payer.address, 1, 0, held[0].valid_before, held[0].nonce)
    other = _signed(own_token, payer, pay_to, AMOUNT)
    order = [(spent, sign_authorization(payer, own_token.domain, spent)), other]
    receipt = mined_together(own_chain, own_token, order if spent_first else order[::-1])
    assert receipt["status"] == 1
    logs = [{**dict(entry), "topics": ["0x" + bytes(t).hex() for t in entry["topics"]]} for entry in receipt["logs"]]
    for entry in logs:
        entry["data"] = "0x" + bytes(entry["data"]).hex()
        entry["logIndex"] = hex(entry["logIndex"])

    def paid(auth: TransferWithAuthorization) -> bool:
        nonce = "0x" + auth.nonce.hex()
        return pays(logs, asset=own_token.address, payer=payer.address, nonce=nonce, pay_to=pay_to, amount=AMOUNT)

    assert not paid(held[0]) and paid(other[0])
    requirements = Requirements("eip155:31337", AMOUNT, own_token.address, pay_to, 300)
    client = ChainClient(own_chain.rpc_url)
    try:
        assert await find_settlement(client, _payment(*held), requirements) is None
        found = await find_settlement(client, _payment(*other), requirements)
    finally:
        await client.close()
    assert found == "0x" + bytes(receipt["transactionHash"]).hex()


async def test_logs_since_reads_back_window_by_window_to_the_time_asked(
    own_chain: DevChain, own_token: DevToken
) -> None:
    """Three mints an hour apart (chain time), empty blocks between: a search since the second
    finds the second and the third, oldest first, however small its windows."""
    holder = LocalSigner.generate().address
    start = int(own_chain.rpc("eth_getBlockByNumber", ["latest", False])["timestamp"], 16)
    first_block = int(own_chain.rpc("eth_blockNumber", []), 16) + 1
    minted_at = []
    for hour in (1, 2, 3):
        minted_at.append(start + 3600 * hour)
        own_chain.rpc("evm_setNextBlockTimestamp", [minted_at[-1]])
        own_token.mint(holder, hour)
        for _ in range(5):
            own_chain.rpc("evm_mine", [])
    holder_topic = "0x" + "0" * 24 + holder[2:].lower()
    topics = [TRANSFER_TOPIC, None, holder_topic]
    client = ChainClient(own_chain.rpc_url)
    try:
        head = int(own_chain.rpc("eth_blockNumber", []), 16)
        everything = await client.logs_between(own_token.address, topics, first_block, head)
        found = {span: await client.logs_since(own_token.address, topics, minted_at[1], span) for span in (1, 3, 1000)}
    finally:
        await client.close()
    assert [int(e["data"], 16) for e in everything] == [1, 2, 3]
    assert [int(e["data"], 16) for e in found[1]] == [2, 3]
    assert [int(e["data"], 16) for e in found[3]] == [2, 3]
    assert [int(e["data"], 16) for e in found[1000]] == [1, 2, 3]  # one window back to block 0


async def test_a_node_without_the_used_log_in_its_block_leaves_it_undecided(
    own_chain: DevChain, own_token: DevToken
) -> None:
    """The log found by one query must be in the block's logs read next (a node behind the one
    that answered first, a reorganisation): if not, nothing is decided (ChainError), never
    "not paid" (which would close a paid record for good)."""
    payer, pay_to = LocalSigner.generate(), LocalSigner.generate().address
    own_token.mint(payer.address, AMOUNT)
    auth, sig = _signed(own_token, payer, pay_to, AMOUNT)
    receipt = mined_together(own_chain, own_token, [(auth, sig)])
    nonce = "0x" + auth.nonce.hex()
    terms = {"asset": own_token.address, "payer": payer.address, "nonce": nonce, "pay_to": pay_to}
    client = ChainClient(own_chain.rpc_url)
    try:
        topics = [AUTHORIZATION_USED_TOPIC, "0x" + "0" * 24 + payer.address[2:].lower(), nonce]
        (used,) = await client.logs_since(own_token.address, topics, 0)
        assert await used_to_pay(client, used, amount=AMOUNT, **terms)
        assert not await used_to_pay(client, used, amount=AMOUNT + 1, **terms)
        elsewhere = {**used, "blockNumber": hex(receipt["blockNumber"] - 1)}  # as a lagging node would
        with pytest.raises(ChainError):
            await used_to_pay(client, elsewhere, amount=AMOUNT, **terms)
    finally:
        await client.close()


def test_log_indexes_as_ints_or_missing() -> None:
    """Some clients give ``logIndex`` as an int: 9 and 10 are adjacent; a missing one pairs
    with nothing."""
    payer, pay_to, asset = (LocalSigner.generate().address for _ in range(3))
    nonce = "0x" + "ab" * 32
    used = {"address": asset, "topics": [AUTHORIZATION_USED_TOPIC, _topic(payer), nonce], "data": "0x"}
    transfer = {"address": asset, "topics": [TRANSFER_TOPIC, _topic(payer), _topic(pay_to)], "data": hex(AMOUNT)}
    terms = {"asset": asset, "payer": payer, "nonce": nonce, "pay_to": pay_to, "amount": AMOUNT}
    assert pays([{**used, "logIndex": 9}, {**transfer, "logIndex": 10}], **terms)  # type: ignore[arg-type]
    assert pays([{**used, "logIndex": "0x9"}, {**transfer, "logIndex": "0xa"}], **terms)  # type: ignore[arg-type]
    assert not pays([{**used, "logIndex": 9}, {**transfer, "logIndex": 11}], **terms)  # type: ignore[arg-type]
    assert not pays([{**used, "logIndex": None}, {**transfer, "logIndex": 0}], **terms)  # type: ignore[arg-type]


def _topic(address: str) -> str:
    return "0x" + "0" * 24 + address[2:].lower()
