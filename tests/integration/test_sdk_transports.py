"""The official SDKs as installed from PyPI (they run on httpx2) pay through our transports with no
inner transport given: the transport sends each request with the library it came from."""

from __future__ import annotations

import secrets

import anthropic
import httpx2
import openai

from payrouter.client import AsyncPaymentTransport, PaymentTransport, SpendingPolicy, receipt_of
from payrouter.sandbox.dev import Sandbox
from wallets import LocalSigner

from .conftest import Observer


def _agent(box: Sandbox) -> LocalSigner:
    agent = LocalSigner.generate()
    box.token.mint(agent.address, 5_000_000)
    return agent


def _messages() -> list[anthropic.types.MessageParam]:
    return [{"role": "user", "content": f"hello {secrets.token_hex(3)}"}]


def test_anthropic_sdk_on_an_httpx2_client(box: Sandbox, observer: Observer) -> None:
    agent = _agent(box)
    transport = PaymentTransport(agent, SpendingPolicy(max_per_call=10**6))
    with anthropic.Anthropic(
        base_url=box.router_url,
        api_key="unused",
        http_client=httpx2.Client(transport=transport),  # type: ignore[arg-type]
    ) as client:
        raw = client.messages.with_raw_response.create(model="auto", max_tokens=40, messages=_messages())
        message = raw.parse()
        with client.messages.stream(model="auto", max_tokens=40, messages=_messages()) as stream:
            streamed = "".join(stream.text_stream)
    assert message.content and message.content[0].type == "text" and message.content[0].text
    assert streamed
    receipt = receipt_of(raw.http_response)  # type: ignore[arg-type]
    assert receipt is not None and receipt.success and receipt.transaction.startswith("0x")
    spent = 5_000_000 - observer.balances(agent.address)[0]
    assert spent > receipt.amount > 0, "two calls paid, the first one by the receipt's amount"


async def test_async_anthropic_and_openai_sdks_on_httpx2_clients(box: Sandbox, observer: Observer) -> None:
    agent = _agent(box)
    transport = AsyncPaymentTransport(agent, SpendingPolicy(max_per_call=10**6))
    async with (
        httpx2.AsyncClient(transport=transport) as http,  # type: ignore[arg-type]
        anthropic.AsyncAnthropic(base_url=box.router_url, api_key="unused", http_client=http) as claude,
        openai.AsyncOpenAI(base_url=f"{box.router_url}/v1", api_key="unused", http_client=http) as gpt,
    ):
        message = await claude.messages.create(model="auto", max_tokens=40, messages=_messages())
        completion = await gpt.chat.completions.create(model="auto", max_tokens=40, messages=_messages())  # type: ignore[arg-type]
    assert message.content and completion.choices[0].message.content
    assert observer.balances(agent.address)[0] < 5_000_000
