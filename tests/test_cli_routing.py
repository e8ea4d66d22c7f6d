"""``payrouter router`` and the routing benches as a user runs them: routing data named on the
command line (a clear error when it is not there), a train/hold-out split, progress while the
work runs, and a readable table."""

from __future__ import annotations

import csv
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.routing import synthetic

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "payrouter"
PYTHON = sys.executable


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("PAYROUTER_PROGRESS", "CI")}
    return subprocess.run(
        [str(CLI), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**clean, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.write(tmp_path_factory.mktemp("routing") / "all.csv", 240, seed=3)


@pytest.mark.parametrize(
    "command",
    [
        ("router", "train", "--out", "r.npz", "--data"),
        ("router", "cv", "--reference", "strong", "--data"),
        ("router", "eval", "--router", "r.npz", "--reference", "strong", "--data"),
        ("router", "holdout", "--train-out", "a.csv", "--test-out", "b.csv", "--data"),
    ],
)
def test_missing_routing_data_is_one_clear_line(command: tuple[str, ...], tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "train.csv"
    if command[1] == "eval":  # eval reads the router file first: give it a real one
        out = str(tmp_path / "x.npz")
        trained = run("router", "train", "--data", str(synthetic.write(tmp_path / "t.csv", 60, 1)), "--out", out)
        assert trained.returncode == 0, trained.stderr
        command = tuple(out if c == "r.npz" else c for c in command)
    result = run(*command, str(missing))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"routing data not found: {missing}" in result.stderr
    assert "RouterBench-format CSV" in result.stderr and "M|score" in result.stderr


@pytest.mark.parametrize("bench", ["bench/routing.py", "bench/routing_ceiling.py"])
def test_routing_benches_need_their_data_named(bench: str, tmp_path: Path) -> None:
    unnamed = subprocess.run([PYTHON, bench], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert unnamed.returncode == 2 and "--data" in unnamed.stderr and "Traceback" not in unnamed.stderr
    missing = subprocess.run(
        [PYTHON, bench, "--data", str(tmp_path / "x.csv")], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert f"routing data not found: {tmp_path / 'x.csv'}" in missing.stderr


def test_holdout_train_and_eval_print_a_table(data: Path, tmp_path: Path) -> None:
    train, held = tmp_path / "train.csv", tmp_path / "heldout.csv"
    split = run("router", "holdout", "--data", str(data), "--train-out", str(train), "--test-out", str(held))
    assert split.returncode == 0, split.stderr
    assert "192 rows" in split.stdout and "48 rows" in split.stdout
    train_prompts = {r["prompt"] for r in synthetic_rows(train)}
    held_prompts = {r["prompt"] for r in synthetic_rows(held)}
    assert len(train_prompts) == 192 and len(held_prompts) == 48 and not train_prompts & held_prompts
    again = run("router", "holdout", "--data", str(data), "--train-out", str(train), "--test-out", str(held))
    assert again.returncode == 2 and "exists" in again.stderr

    trained = run("router", "train", "--data", str(train), "--out", str(tmp_path / "r.npz"))
    assert trained.returncode == 0, trained.stderr
    assert "trained on 192 prompts x 3 models" in trained.stdout

    evaluated = run("router", "eval", "--router", str(tmp_path / "r.npz"), "--data", str(held), "--reference", "strong")
    assert evaluated.returncode == 0, evaluated.stderr
    out = evaluated.stdout
    assert out.startswith("held-out evaluation on 48 rows; reference strong: accuracy 1.000")
    assert re.search(r"^payrouter +\d\.\d{3} / \d\.\d{3} / \d\.\d{3} +(\d+%|never) +\d\.\d{3}$", out, re.M), out
    assert re.search(r"^weak +\d\.\d{3} +0\.000100$", out, re.M), out
    assert not re.search(r"\d\.\d{7,}", out) and "{" not in out  # no raw dicts, no 16-digit floats

    # rows the router was trained on are refused, and the message says what to do instead
    on_train = run("router", "eval", "--router", str(tmp_path / "r.npz"), "--data", str(train), "--reference", "strong")
    assert on_train.returncode == 2 and "Traceback" not in on_train.stderr
    assert "held out of training" in on_train.stderr and "router holdout" in on_train.stderr


def synthetic_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_cv_folds_must_be_at_least_two(data: Path) -> None:
    for folds in ("1",):
        result = run("router", "cv", "--data", str(data), "--reference", "strong", "--folds", folds)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "folds must be >= 2" in result.stderr, result.stderr


def test_cv_reports_progress_as_plain_lines_off_a_terminal(data: Path) -> None:
    result = run("router", "cv", "--data", str(data), "--reference", "strong", "--folds", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "\r" not in result.stderr and "\x1b" not in result.stderr
    assert "cross-validating 240 prompts: 0/3" in lines
    for fold in (1, 2, 3):
        assert any(line.startswith(f"cross-validating 240 prompts: {fold}/3 (") for line in lines), lines
    assert any(line.startswith("cross-validating 240 prompts: done in ") for line in lines)
    assert result.stdout.startswith("3-fold cross-validation on 240 rows; reference strong")


def test_train_and_cv_draw_a_live_line_on_a_terminal(data: Path, tmp_path: Path) -> None:
    """stderr on a pseudo-terminal: the line is redrawn in place (a bar for cv's folds)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("PAYROUTER_PROGRESS", "CI")}
    for args in (
        ["router", "cv", "--data", str(data), "--reference", "strong", "--folds", "2", "--json"],
        ["router", "train", "--data", str(data), "--out", str(tmp_path / "r.npz")],
    ):
        leader, follower = pty.openpty()
        try:
            proc = subprocess.run(
                [str(CLI), *args], stdout=subprocess.PIPE, stderr=follower, cwd=ROOT, env=clean, timeout=300
            )
        finally:
            os.close(follower)
        chunks = []
        try:
            while chunk := os.read(leader, 65536):
                chunks.append(chunk)
        except OSError:
            pass  # EIO: the terminal has no writer left
        finally:
            os.close(leader)
        drawn = b"".join(chunks).decode()
        assert proc.returncode == 0, drawn
        assert "\r\x1b[2K" in drawn
        if args[1] == "cv":
            assert "[############------------] 1/2" in drawn and "[########################] 2/2" in drawn
            assert proc.stdout.startswith(b"{")  # --json keeps stdout clean
        else:
            assert "training on 240 prompts x 3 models" in drawn


def test_the_readme_routing_block_runs_as_written(tmp_path: Path) -> None:
    """The README's hold-out/train/eval/cv block, unchanged, on a synthetic CSV named as it says
    (the model names of the README's reference)."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("```bash no-test\nDATA=routerbench.csv")
    block = readme[start:].split("\n", 1)[1].split("\n```", 1)[0]
    data = synthetic.rows(150, seed=5)
    names = {"strong": "gpt-4-1106-preview", "mid": "claude-v1", "weak": "mistralai/mistral-7b-chat"}
    renamed = [{_rename(k, names): v for k, v in row.items()} for row in data]
    with (tmp_path / "routerbench.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(renamed[0]))
        writer.writeheader()
        writer.writerows(renamed)
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    clean = {k: v for k, v in os.environ.items() if k not in ("PAYROUTER_PROGRESS", "CI")}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block], capture_output=True, text=True, cwd=tmp_path, env=clean, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "120 rows -> train.csv (train), 30 rows -> heldout.csv (held out)" in result.stdout
    assert "held-out evaluation on 30 rows; reference gpt-4-1106-preview" in result.stdout
    assert "5-fold cross-validation on 150 rows" in result.stdout
    assert "tfidf_knn" in result.stdout and (tmp_path / "router.npz").exists()


def _rename(column: str, names: dict[str, str]) -> str:
    model, sep, field = column.partition("|")
    return names.get(model, model) + sep + field if sep else column
