"""OpenAI <-> Anthropic Messages translation."""

from __future__ import annotations

import json

from payrouter.upstream.anthropic import to_anthropic, to_openai_completion

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def test_request_translation() -> None:
    request = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Use metric units."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "21 C, sunny"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "And this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
        ],
        "tools": TOOLS,
        "tool_choice": "required",
        "temperature": 0.2,
        "stop": "END",
    }
    body = to_anthropic(request, "claude-x", 256)
    assert body["model"] == "claude-x" and body["max_tokens"] == 256
    assert body["system"] == "Be brief.\n\nUse metric units."
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["user", "assistant", "user"]  # tool result and the next user turn merge
    assert body["messages"][1]["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}}
    ]
    merged = body["messages"][2]["content"]
    assert merged[0] == {"type": "tool_result", "tool_use_id": "call_1", "content": "21 C, sunny"}
    assert merged[2] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    assert body["tools"][0]["input_schema"]["properties"]["city"]["type"] == "string"
    assert body["tool_choice"] == {"type": "any"} and body["stop_sequences"] == ["END"] and body["temperature"] == 0.2


def test_response_translation_with_tools_and_cache() -> None:
    data = {
        "id": "msg_1",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
        ],
        "stop_reason": "tool_use",
        "usage": {
            "input_tokens": 10,
            "output_tokens": 7,
            "cache_read_input_tokens": 90,
            "cache_creation_input_tokens": 5,
        },
    }
    completion = to_openai_completion(data, "claude-x")
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking."
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert completion["usage"]["prompt_tokens"] == 105 and completion["usage"]["completion_tokens"] == 7
    assert completion["usage"]["prompt_tokens_details"] == {"cached_tokens": 90, "cache_creation_tokens": 5}
    assert to_openai_completion({**data, "stop_reason": "max_tokens"}, "m")["choices"][0]["finish_reason"] == "length"
