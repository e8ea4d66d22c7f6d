"""Decoding payment headers: strict limits and shapes."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payrouter.x402.errors import PaymentRejected
from payrouter.x402.wire import MAX_PAYMENT_HEADER_BYTES, decode_header, encode_header, parse_payment


def test_round_trip() -> None:
    obj = {"x402Version": 2, "a": [1, "b"]}
    assert decode_header(encode_header(obj)) == obj


@given(st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode())))
def test_garbage_is_only_ever_a_payment_rejection(text: str) -> None:
    with pytest.raises(PaymentRejected):
        parse_payment(decode_header(text), 2)


@given(
    st.dictionaries(
        st.sampled_from(["x402Version", "accepted", "payload", "scheme"]),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=5),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
            max_leaves=8,
        ),
    )
)
def test_random_json_is_only_ever_a_payment_rejection(obj: dict[str, object]) -> None:
    with pytest.raises(PaymentRejected):
        parse_payment(obj, 2)


def test_limits_and_shapes() -> None:
    with pytest.raises(PaymentRejected, match="limit"):
        decode_header("A" * (MAX_PAYMENT_HEADER_BYTES + 1))
    with pytest.raises(PaymentRejected, match="base64"):
        decode_header("***")
    with pytest.raises(PaymentRejected, match="JSON"):
        decode_header(base64.b64encode(b"\xff\xfe").decode())
    with pytest.raises(PaymentRejected, match="object"):
        decode_header(base64.b64encode(b'"x"').decode())
    base = {"x402Version": 2, "accepted": {"scheme": "exact", "network": "eip155:1"}, "payload": {}}
    for broken, fragment in [
        ({**base, "x402Version": True}, "x402Version"),
        ({**base, "accepted": []}, "accepted"),
        ({**base, "accepted": {"scheme": 1}}, "scheme"),
        ({**base, "payload": None}, "payload"),
        ({**base, "payload": {"signature": "abc"}}, "signature"),
        ({**base, "payload": {"signature": "0xzz"}}, "signature"),
        ({**base, "payload": {"signature": "0x00", "authorization": {"from": "0x1"}}}, "authorization"),
    ]:
        with pytest.raises(PaymentRejected, match=fragment):
            parse_payment(json.loads(json.dumps(broken)), 2)
