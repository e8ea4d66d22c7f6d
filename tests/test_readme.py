"""The README is the tested truth: every ```bash, ```sh and ```python block in it runs, in order,
as a reader would run it, against a `payrouter dev` sandbox started the way the README says.

The blocks see what a reader has after following the README: a working directory laid out like the
repository (``.venv/bin/payrouter``, ``examples/``, ...; files the blocks write land in a temporary
folder), the sandbox running, and the variables the README tells readers to export:
``PAYROUTER_URL`` (the router) and ``PAYROUTER_PRIVATE_KEY`` (one of its funded agent keys), plus
``PAYROUTER_RPC_URL`` (the sandbox's chain). Blocks fenced ```` ```bash no-test ```` are not run.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.readme_blocks import Block, read_blocks

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCKS = [b for b in read_blocks(README) if b.runs]
BLOCK_TIMEOUT = 240


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """(working directory, environment) of a reader with `payrouter dev` running."""
    work = tmp_path_factory.mktemp("readme")
    for entry in ROOT.iterdir():
        if entry.name not in (".git",):
            (work / entry.name).symlink_to(entry)
    env = {**os.environ, "PAYROUTER_SANDBOX_FILE": str(work / "sandbox.json"), "NO_COLOR": "1"}
    env.pop("PYTHONPATH", None)
    log = (work / "sandbox.log").open("w")  # a file, not a pipe: a chatty sandbox cannot block on it
    sandbox = subprocess.Popen(
        [str(work / ".venv/bin/payrouter"), "dev", "--json", "--port", "0", "--agents", "2"],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,
    )
    try:
        assert sandbox.stdout is not None
        ready_in_time, _, _ = select.select([sandbox.stdout], [], [], 120)
        assert ready_in_time, f"payrouter dev not ready in 120 s: {(work / 'sandbox.log').read_text()[-3000:]}"
        line = sandbox.stdout.readline()
        assert line, f"payrouter dev exited: {(work / 'sandbox.log').read_text()[-3000:]}"
        ready = json.loads(line)
        env |= {
            "PAYROUTER_URL": ready["router_url"],
            "PAYROUTER_PRIVATE_KEY": ready["agent_private_keys"][0],
            "PAYROUTER_RPC_URL": ready["rpc_url"],
            "KEYSTORE_PASSWORD": "correct horse battery staple",
        }
        yield work, env
    finally:
        sandbox.send_signal(signal.SIGTERM)
        try:
            sandbox.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(sandbox.pid, signal.SIGKILL)
            sandbox.wait(10)
        if sandbox.stdout is not None:
            sandbox.stdout.close()
        log.close()


def _run(block: Block, work: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if block.language == "python":
        script = work / f"readme_{block.line}.py"
        script.write_text(block.code)
        command = [str(work / ".venv/bin/python"), str(script)]
    else:
        command = ["bash", "-e", "-o", "pipefail", "-c", block.code]
    return subprocess.run(
        command, cwd=work, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT, stdin=subprocess.DEVNULL
    )


@pytest.mark.parametrize("block", BLOCKS, ids=[b.name for b in BLOCKS])
def test_readme_block_runs(block: Block, reader: tuple[Path, dict[str, str]]) -> None:
    work, env = reader
    done = _run(block, work, env)
    assert done.returncode == 0, (
        f"README.md line {block.line} ({block.language}) exited {done.returncode}\n"
        f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"
    )


def test_the_readme_has_runnable_blocks_of_each_kind() -> None:
    languages = {b.language for b in BLOCKS}
    assert {"bash", "python"} <= languages and len(BLOCKS) >= 5


def test_commands_use_the_set_up_cli() -> None:
    """Set-up installs the CLI as ``.venv/bin/payrouter``: a bare ``payrouter`` command is not found."""
    bare = re.compile(r"(?:^|[|;&(]\s*|&&\s*|\$\(\s*)payrouter\s")
    offenders = [
        f"README.md:{b.line + i}: {line.strip()}"
        for b in read_blocks(README)
        if b.language in ("bash", "sh")
        for i, line in enumerate(b.code.splitlines())
        if bare.search(line.split("#", 1)[0].strip())
    ]
    assert offenders == []
