"""Prompt features for the learned router: hashed word n-grams plus format signals.

Everything is cheap and deterministic (crc32 hashing, no vocabulary file): extracting the
features of a 2 KB prompt takes tens of microseconds.
"""

from __future__ import annotations

import re
import zlib

__all__ = ["FEATURE_BITS", "extract_question", "format_signature", "prompt_features"]

FEATURE_BITS = 18
_MASK = (1 << FEATURE_BITS) - 1
_WORD = re.compile(r"[a-z0-9_]+|[^\sa-z0-9_]")
_CHOICE = re.compile(r"^[A-H]\)", re.MULTILINE)


def extract_question(text: str) -> str:
    """The part of a prompt that varies: the last block after any few-shot examples."""
    stripped = text.strip()
    cut = stripped.rfind("\n\n")
    return stripped[cut + 2 :] if cut >= 0 else stripped


def _h(token: str) -> int:
    return zlib.crc32(token.encode()) & _MASK


def _format_tokens(text: str, question: str) -> list[str]:
    choices = len(_CHOICE.findall(question))
    length = len(question)
    tokens = [
        f"fmt:choices={min(choices, 6)}",
        f"fmt:len={min(length.bit_length(), 14)}",
        f"fmt:shots={min(text.count(chr(10) + chr(10)), 12)}",
    ]
    if "_" in question:
        tokens.append("fmt:blank")
    if "def " in question or "function" in question.lower() or "```" in question:
        tokens.append("fmt:code")
    if re.search(r"\d", question):
        tokens.append("fmt:digits")
    return tokens


def format_signature(text: str) -> str:
    """A coarse prompt-format class (number of choices, blank, code, few-shot count).

    Prompts of one benchmark share a signature, so per-signature base rates carry most of what
    is known about a model on that kind of task; the text features refine them.
    """
    question = extract_question(text)
    choices = min(len(_CHOICE.findall(question)), 6)
    shots = min(text.count("\n\n"), 12)
    code = "def " in question or "function" in question.lower() or "```" in question
    return f"c{choices}|b{int('_' in question)}|k{int(code)}|s{shots}"


def prompt_features(text: str) -> list[int]:
    """Sorted, de-duplicated feature indices (in ``[0, 2**FEATURE_BITS)``) for a prompt."""
    question = extract_question(text)
    words = _WORD.findall(question.lower())
    tokens = ["bias"]
    tokens += _format_tokens(text, question)
    tokens += [f"w:{w}" for w in words]
    tokens += [f"b:{a} {b}" for a, b in zip(words, words[1:], strict=False)]
    return sorted({_h(t) for t in tokens})
