"""Prompt features for the learned router: hashed word n-grams plus format signals.

Everything is cheap and deterministic (crc32 hashing, no vocabulary file): extracting the
features of a 2 KB prompt takes tens of microseconds.
"""

from __future__ import annotations

import re
import zlib

__all__ = ["FEATURE_BITS", "extract_question", "features_and_signature", "format_signature", "prompt_features"]

FEATURE_BITS = 18
_MASK = (1 << FEATURE_BITS) - 1
_WORD = re.compile(r"[a-z0-9_]+|[^\sa-z0-9_]")
_CHOICE = re.compile(r"^[A-H]\)", re.MULTILINE)
_DIGIT = re.compile(r"\d")


def extract_question(text: str) -> str:
    """The part of a prompt that varies: the last block after any few-shot examples."""
    stripped = text.strip()
    cut = stripped.rfind("\n\n")
    return stripped[cut + 2 :] if cut >= 0 else stripped


def _format_tokens(question: str, choices: int, shots: int, code: bool) -> list[str]:
    tokens = [
        f"fmt:choices={choices}",
        f"fmt:len={min(len(question).bit_length(), 14)}",
        f"fmt:shots={shots}",
    ]
    if "_" in question:
        tokens.append("fmt:blank")
    if code:
        tokens.append("fmt:code")
    if _DIGIT.search(question):
        tokens.append("fmt:digits")
    return tokens


def _format(text: str, question: str) -> tuple[int, int, bool]:
    choices = min(len(_CHOICE.findall(question)), 6)
    shots = min(text.count("\n\n"), 12)
    code = "def " in question or "function" in question.lower() or "```" in question
    return choices, shots, code


def _signature(question: str, choices: int, shots: int, code: bool) -> str:
    return f"c{choices}|b{int('_' in question)}|k{int(code)}|s{shots}"


def format_signature(text: str) -> str:
    """A coarse prompt-format class (number of choices, blank, code, few-shot count).

    Prompts of one benchmark share a signature, so per-signature base rates carry most of what
    is known about a model on that kind of task; the text features refine them.
    """
    question = extract_question(text)
    return _signature(question, *_format(text, question))


def prompt_features(text: str) -> list[int]:
    """Sorted, de-duplicated feature indices (in ``[0, 2**FEATURE_BITS)``) for a prompt."""
    return features_and_signature(text)[0]


def features_and_signature(text: str) -> tuple[list[int], str]:
    """`prompt_features` and `format_signature` of ``text`` in one pass (the router needs both
    for every prediction)."""
    question = extract_question(text)
    shape = _format(text, question)
    words = _WORD.findall(question.lower())
    tokens = ["bias", *_format_tokens(question, *shape)]
    tokens += [f"w:{w}" for w in words]
    tokens += [f"b:{a} {b}" for a, b in zip(words, words[1:], strict=False)]
    crc = zlib.crc32
    return sorted({crc(t.encode()) & _MASK for t in tokens}), _signature(question, *shape)
