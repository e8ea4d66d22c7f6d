"""The agent CLI with payment channels: ``chat --scheme``, ``wallet channels``, ``wallet refund``,
against the stand-in batch-settlement server served over real HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from payrouter.cli import main
from payrouter.devchain import free_port
from tests.client.batch_server import BatchServer
from wallets import LocalSigner

CHAT = {"model": "m", "choices": [{"message": {"role": "assistant", "content": "hi"}}]}


@pytest.fixture
def served() -> Iterator[tuple[BatchServer, str]]:
    server = BatchServer(
        "eip155:31337",
        "0x" + "44" * 20,
        LocalSigner.generate().address,
        LocalSigner.generate().address,
        offer_exact=True,
        paid_body=CHAT,
    )
    port = free_port()
    web = uvicorn.Server(uvicorn.Config(server.asgi, host="127.0.0.1", port=port, log_level="error", interface="asgi3"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not web.started:
        assert time.monotonic() < deadline, "the stand-in server did not start"
        time.sleep(0.01)
    yield server, f"http://127.0.0.1:{port}"
    web.should_exit = True
    thread.join(10)


def test_chat_pays_by_channel_then_lists_and_refunds(
    served: tuple[BatchServer, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server, url = served
    agent = LocalSigner.generate()
    monkeypatch.setenv("PAYROUTER_PRIVATE_KEY", agent.unsafe_export_private_key())
    monkeypatch.setenv("PAYROUTER_CHANNELS_DIR", str(tmp_path / "channels"))
    monkeypatch.setenv("PAYROUTER_BUDGET_FILE", str(tmp_path / "spend.json"))
    monkeypatch.setenv("PAYROUTER_SCHEME", "auto")
    assert main(["chat", "hello", "--router", url, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["scheme"] == "batch-settlement" and out["charged"] == "700" and out["amount"] == "700"
    assert out["max_amount"] == "1000" and out["deposit"] == "5000" and out["channel_id"].startswith("0x")
    channel_id = out["channel_id"]
    assert main(["chat", "again", "--router", url, "--json", "--scheme", "batch-settlement"]) == 0
    assert json.loads(capsys.readouterr().out)["deposit"] == "0"

    assert main(["chat", "exact please", "--router", url, "--json", "--scheme", "exact"]) == 0
    exact = json.loads(capsys.readouterr().out)
    assert "channel_id" not in exact and exact["amount"] == "1000"

    assert main(["wallet", "channels", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["channel_id"] == channel_id and row["payer"] == agent.address
    assert (row["balance"], row["charged"], row["remaining"]) == ("5000", "1400", "3600")
    assert row["url"] == f"{url}/v1/chat/completions"
    assert main(["wallet", "channels"]) == 0
    assert channel_id in capsys.readouterr().out

    assert main(["wallet", "refund", "--json"]) == 0
    refunded = json.loads(capsys.readouterr().out)
    assert refunded == {"channel_id": channel_id, "refunded": "3600", "remaining": "0", "transaction": "0xrefund"}
    assert server.seen[-1]["payload"]["type"] == "refund"
    assert main(["wallet", "refund"]) == 0
    assert "nothing to refund" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no channel"):
        main(["wallet", "refund", "--channel", "0x" + "00" * 32])
    monkeypatch.delenv("PAYROUTER_SCHEME")  # channels are opt-in: the default pays exact
    assert main(["chat", "plain", "--router", url, "--json"]) == 0
    assert "channel_id" not in json.loads(capsys.readouterr().out)
