"""Can the gas wallet pay for settlements? Checked when ``payrouter serve`` starts and by ``/healthz``.

A local facilitator settles every ``exact`` payment (and sends channel deposits, claims and
refunds) from the operator's gas wallet. A node takes a transaction only when the wallet holds
its gas limit times its fee cap, so a wallet that cannot cover one settlement makes every paid
call run the model (the operator pays the upstream) and then fail to settle.

Every gas wallet is checked (``gas_key`` and ``gas_keys``). Policy: below one settlement a wallet is ``empty`` (``serve`` refuses to start, ``/healthz``
is 503); below `LOW_SETTLEMENTS` settlements it is ``low`` (``serve`` logs a warning, ``/healthz``
says so and stays 200); otherwise ``ok``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from payrouter.chain import ChainClient, ChainError
from payrouter.facilitator.local import SETTLE_GAS_LIMIT

__all__ = ["LOW_SETTLEMENTS", "GasFunds", "format_eth", "gas_funds", "worst"]

LOW_SETTLEMENTS = 100
_WEI_PER_ETH = 10**18


def format_eth(wei: int) -> str:
    """``wei`` in ETH, exactly (no float)."""
    whole, frac = divmod(wei, _WEI_PER_ETH)
    return f"{whole}.{frac:018d}".rstrip("0").rstrip(".") + " ETH"


@dataclass(frozen=True, slots=True)
class GasFunds:
    """What the gas wallet holds against what settlements need, at the current fee.

    Attributes:
        address: the gas wallet.
        balance_wei: its native balance.
        per_settlement_wei: what one settlement needs up front (gas limit x fee cap).
        settlements: how many settlements the balance covers.
        state: ``empty`` (not one), ``low`` (fewer than `LOW_SETTLEMENTS`) or ``ok``.
    """

    address: str
    balance_wei: int
    per_settlement_wei: int
    settlements: int
    state: Literal["ok", "low", "empty"]

    def describe(self) -> str:
        """One sentence for the operator: address, balance, and what is needed."""
        needed = LOW_SETTLEMENTS * self.per_settlement_wei
        text = (
            f"gas wallet {self.address} holds {format_eth(self.balance_wei)} ({self.balance_wei} wei): enough for "
            f"{self.settlements} settlements; one needs up to {self.per_settlement_wei} wei "
            f"({SETTLE_GAS_LIMIT} gas at the current fee), {LOW_SETTLEMENTS} need {format_eth(needed)}"
        )
        if self.state != "ok":
            text += f"; send the chain's native coin (ETH) to {self.address}"
        return text

    def as_json(self) -> dict[str, object]:
        """The ``/healthz`` form (amounts as integer strings of wei)."""
        return {
            "address": self.address,
            "balance_wei": str(self.balance_wei),
            "per_settlement_wei": str(self.per_settlement_wei),
            "settlements": self.settlements,
            "state": self.state,
        }


async def gas_funds(chain: ChainClient, addresses: Sequence[str]) -> list[GasFunds]:
    """Read every address's balance and the current fee cap in one round trip.

    Raises:
        ChainError: the node could not be asked.
    """
    replies = await chain.batch(
        [
            ("eth_getBlockByNumber", ["latest", False]),
            ("eth_maxPriorityFeePerGas", []),
            *(("eth_getBalance", [address, "latest"]) for address in addresses),
        ]
    )
    block, tip, balances = replies[0], replies[1], []
    if isinstance(block, ChainError):
        raise block
    for balance in replies[2:]:
        if isinstance(balance, ChainError):
            raise balance
        balances.append(int(balance, 16))
    priority = int(tip, 16) if isinstance(tip, str) else 10**9
    # the same fee cap GasSender sends with (ChainClient.fee_per_gas)
    max_fee = 2 * int(block.get("baseFeePerGas") or "0x0", 16) + priority
    per = SETTLE_GAS_LIMIT * max(max_fee, 1)
    funds = []
    for address, wei in zip(addresses, balances, strict=True):
        count = wei // per
        state: Literal["ok", "low", "empty"] = "empty" if count < 1 else "low" if count < LOW_SETTLEMENTS else "ok"
        funds.append(GasFunds(address, wei, per, count, state))
    return funds


def worst(funds: Sequence[GasFunds]) -> Literal["ok", "low", "empty"]:
    """The state of the least funded wallet (``ok`` for none)."""
    states = {f.state for f in funds}
    return "empty" if "empty" in states else "low" if "low" in states else "ok"
