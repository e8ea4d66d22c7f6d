"""A test run leaves nothing behind: its keys in the shared Redis, the agent's budget and channels."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import redis

from payrouter.client import FileBudgetStore, FileChannelStore
from tests.redis_keys import REDIS_URL, RUN_ID, delete_run_keys, is_run_key, run_token


def test_the_session_clean_up_deletes_this_runs_keys_and_no_others() -> None:
    mine = f"payrouter-test-hygiene-{run_token()}"
    other_run = f"payrouter-test-hygiene-{secrets.token_hex(3)}{secrets.token_hex(2)}"
    lookalike = f"payrouter-other-{secrets.token_hex(4)}"  # the run id inside a key, not at the name's end
    with redis.Redis.from_url(REDIS_URL) as r:
        r.set(f"{mine}:a", 1)
        r.hset(f"{mine}:{{j}}:rec:x", "f", 1)
        r.set(f"{other_run}:a", 1)
        r.set(f"{lookalike}:rec:{RUN_ID}beef", 1)
        try:
            assert is_run_key(f"{mine}:a") and not is_run_key(f"{other_run}:a")
            assert delete_run_keys() >= 2
            assert r.exists(f"{mine}:a", f"{mine}:{{j}}:rec:x") == 0
            assert r.exists(f"{other_run}:a", f"{lookalike}:rec:{RUN_ID}beef") == 2
        finally:
            r.delete(f"{other_run}:a", f"{lookalike}:rec:{RUN_ID}beef")


def test_the_agents_default_files_are_this_runs_temporary_ones() -> None:
    home = Path.home() / ".payrouter"
    budget, channels = FileBudgetStore(), FileChannelStore()
    assert budget.path == Path(os.environ["PAYROUTER_BUDGET_FILE"]) and home not in budget.path.parents
    assert channels.directory == Path(os.environ["PAYROUTER_CHANNELS_DIR"]) and home not in channels.directory.parents


def test_a_bench_stopped_by_sigterm_runs_its_clean_up(tmp_path: Path) -> None:
    """bench.hygiene.exit_on_sigterm: ``timeout``/``kill`` reach the bench's ``finally`` (which stops
    its servers and deletes its Redis namespace) instead of killing it on the spot."""
    marker = tmp_path / "cleaned"
    code = (
        "import time\nfrom bench.hygiene import exit_on_sigterm\nexit_on_sigterm()\n"
        f"try:\n    print('ready', flush=True)\n    time.sleep(60)\nfinally:\n    open({str(marker)!r}, 'w').close()\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 128 + signal.SIGTERM
    proc.stdout.close()
    assert marker.exists()
