"""The request log writer: whole JSON lines, off the caller's thread, shared safely by processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from payrouter.request_log import RequestLog


def test_off_writes_nothing(tmp_path: Path) -> None:
    log = RequestLog(None)
    assert not log.enabled
    log.write({"event": "call"})
    log.close()
    assert list(tmp_path.iterdir()) == []


def test_events_become_lines_in_order(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    log = RequestLog(path)
    assert log.enabled
    events = [{"event": "call", "n": i, "charged": 10**20 + i, "tx": None} for i in range(500)]
    for event in events:
        log.write(event)
    log.close()
    assert [json.loads(line) for line in path.read_text().splitlines()] == events
    # appending: a restarted service keeps what was written before
    again = RequestLog(path)
    again.write({"event": "refusal"})
    again.close()
    assert json.loads(path.read_text().splitlines()[-1]) == {"event": "refusal"}


def test_dash_is_standard_output() -> None:
    code = "from payrouter.request_log import RequestLog; log = RequestLog('-'); log.write({'a': 1}); log.close()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == '{"a":1}\n'


def test_processes_sharing_one_file_never_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"
    code = (
        "import sys; from payrouter.request_log import RequestLog; log = RequestLog(sys.argv[1]); "
        "[log.write({'who': sys.argv[2], 'n': i, 'pad': 'x' * (i % 3000)}) for i in range(3000)]; log.close()"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), who]) for who in ("a", "b", "c")]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 9000
    for who in "abc":
        assert [e["n"] for e in lines if e["who"] == who] == list(range(3000))
