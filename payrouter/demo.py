"""The demo: one real payment for one priced request on a local chain.

Until the payment gate lands this is payrouter's main job end to end without HTTP: price a
chat request from the example table, have an agent sign an EIP-3009 authorization for
exactly that amount, verify it off-chain, settle it on anvil, and show the balances move.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from payrouter.devchain import DevChain
from pricing import estimate_chat_input_tokens, load_price_table, quote_route
from wallets import TransferWithAuthorization, new_nonce, recover_authorizer, sign_authorization

__all__ = ["run_demo"]

_EXAMPLE_TABLE = Path(__file__).resolve().parent.parent / "examples" / "prices.toml"
_REQUEST = {
    "model": "gpt-4o-mini",
    "max_tokens": 256,
    "messages": [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Summarise the x402 payment flow in three sentences."},
    ],
}


def _usd(amount: int, decimals: int) -> str:
    whole, frac = divmod(amount, 10**decimals)
    return f"{whole}.{frac:0{decimals}d}"


def run_demo(table_path: Path = _EXAMPLE_TABLE, out: Callable[[str], None] = print) -> int:
    """Run the demo, writing progress lines through ``out``; return a process exit code."""
    table = load_price_table(table_path)
    decimals = table.asset.decimals
    input_tokens = estimate_chat_input_tokens(_REQUEST["messages"])  # type: ignore[arg-type]
    quote = quote_route(table, str(_REQUEST["model"]), input_tokens, int(_REQUEST["max_tokens"]))  # type: ignore[call-overload]
    out(
        f"quote   {quote.model_id}: {quote.input_tokens} input + {quote.output_tokens} output tokens -> "
        f"{quote.amount} atomic units (${_usd(quote.amount, decimals)}; upstream cost {quote.upstream_cost})"
    )
    started = time.perf_counter()
    with DevChain.start() as chain:
        token = chain.deploy_token(table.asset.name, "USDC", table.asset.version)
        agent, operator, gas_wallet = chain.new_account(), chain.new_account(), chain.new_account()
        token.mint(agent.address, 5 * 10**decimals)
        out(f"chain   anvil {chain.network} at {chain.rpc_url}; token {token.address} ({token.domain.name} v2)")
        out(f"ready   in {(time.perf_counter() - started) * 1000:.0f} ms")

        def balances(label: str) -> None:
            out(f"{label} agent {token.balance_of(agent.address)}  operator {token.balance_of(operator.address)}")

        balances("before ")
        auth = TransferWithAuthorization(
            from_=agent.address,
            to=operator.address,
            value=quote.amount,
            valid_after=0,
            valid_before=int(time.time()) + table.max_timeout_seconds,
            nonce=new_nonce(),
        )
        signature = sign_authorization(agent, token.domain, auth)
        if recover_authorizer(token.domain, auth, signature) != agent.address:
            out("verify  FAILED: signature does not recover to the agent")
            return 1
        out(f"verify  signature by {agent.address} ok")
        t0 = time.perf_counter()
        receipt = token.transfer_with_authorization(gas_wallet, auth, signature)
        out(
            f"settle  tx {receipt['transactionHash'].to_0x_hex()} in block {receipt['blockNumber']}, "
            f"gas {receipt['gasUsed']}, {(time.perf_counter() - t0) * 1000:.1f} ms"
        )
        balances("after  ")
        if token.balance_of(operator.address) != quote.amount:
            out("check   FAILED: the operator did not receive exactly the quote")
            return 1
        out("check   operator received exactly the quoted amount; replay is refused on chain:")
        try:
            token.transfer_with_authorization_call(auth, signature).call({"from": gas_wallet.address})
        except Exception as exc:  # web3 raises ContractLogicError with the revert text
            out(f"replay  {exc.args[0] if exc.args else exc}")
        else:
            out("replay  FAILED: the same authorization would settle twice")
            return 1
    out("stopped anvil")
    return 0
