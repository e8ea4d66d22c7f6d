"""Token estimates for chat requests."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pricing import estimate_chat_input_tokens, estimate_text_tokens
from pricing.tokens import IMAGE_TOKENS


def test_text_estimates() -> None:
    assert estimate_text_tokens("") == 0
    assert estimate_text_tokens("abcd") == 1
    assert estimate_text_tokens("abcde") == 2
    assert estimate_text_tokens("你好世界") == 4
    # real tokenizers give ~9 tokens for this sentence; the estimate must not be far below
    assert estimate_text_tokens("The quick brown fox jumps over the lazy dog.") >= 9


def test_chat_estimates_count_overheads_parts_and_tools() -> None:
    one = [{"role": "user", "content": "hello there"}]
    assert estimate_chat_input_tokens(one) == 3 + 4 + 3
    assert estimate_chat_input_tokens(one + one) == 3 + 2 * (4 + 3)
    parts = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hello there"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ],
        }
    ]
    assert estimate_chat_input_tokens(parts) == 3 + 4 + 3 + IMAGE_TOKENS
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    assert estimate_chat_input_tokens(one, [tool]) > estimate_chat_input_tokens(one)
    named = [{"role": "user", "content": "hello there", "name": "alice"}]
    assert estimate_chat_input_tokens(named) > estimate_chat_input_tokens(one)
    assert estimate_chat_input_tokens([{"role": "assistant", "content": None}]) == 7


@given(st.text(), st.text())
def test_estimates_grow_with_text(a: str, b: str) -> None:
    assert estimate_text_tokens(a + b) >= max(estimate_text_tokens(a), estimate_text_tokens(b))
    assert estimate_chat_input_tokens([{"role": "user", "content": a + b}]) >= estimate_chat_input_tokens(
        [{"role": "user", "content": a}]
    )
