"""The code blocks of a Markdown file, as tests/test_readme.py runs them.

A fenced block whose info string is ``bash``, ``sh`` or ``python`` is run; one whose info string
goes on with ``no-test`` (```` ```bash no-test ````) is shown to readers only: a long-running
server, docker, data that is not in the repository (CONTRACTS.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

RUN_LANGUAGES = ("bash", "sh", "python")
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$")


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, the rest of its info string, its text and where it starts."""

    language: str
    info: str
    code: str
    line: int

    @property
    def runs(self) -> bool:
        """Whether the README test runs it."""
        return self.language in RUN_LANGUAGES and "no-test" not in self.info.split()

    @property
    def name(self) -> str:
        """``LINE:first line``, for test ids and messages."""
        first = next((line for line in self.code.splitlines() if line.strip()), "")
        return f"{self.line}:{first[:60]}"


def read_blocks(path: Path) -> list[Block]:
    """Every fenced block of the Markdown file at ``path``, in order (unclosed: to the end)."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, info = opening["fence"], opening["info"].strip()
        start = i + 1
        i += 1
        while i < len(lines) and not re.match(rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$", lines[i]):
            i += 1
        language, _, rest = info.partition(" ")
        blocks.append(Block(language.lower(), rest.strip(), "\n".join(lines[start:i]) + "\n", start))
        i += 1
    return blocks
