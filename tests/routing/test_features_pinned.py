"""The prompt features are pinned: the shipped router's weights are indexed by them, so a change
to the feature code that moves any index silently degrades every prediction."""

from __future__ import annotations

import hashlib
import json

import pytest

from payrouter.routing.features import features_and_signature, format_signature, prompt_features

# (prompt, format signature, sha256 of the feature list's JSON (first 16 hex), feature count),
# computed by the feature code the default router was trained with
PINNED = [
    ("benchmark me", "c0|b0|k0|s0", "f869bc2264ad822f", 7),
    ("Which is prime?\nA) 4\nB) 6\nC) 7\nD) 9", "c4|b0|k0|s0", "60804aabe659f322", 33),
    (
        "Example: x_1 = 3\n\nExample: y = 4\n\ndef add(a, b):\n    '''Return the sum.'''\n    ```python\n",
        "c0|b0|k1|s2",
        "6f06f5063136c9b0",
        37,
    ),
    (
        "Fill the blank: The capital of France is ____. This function call returns 42.",
        "c0|b1|k1|s0",
        "bcae4d0f0d70a2bb",
        38,
    ),
]


@pytest.mark.parametrize(("prompt", "signature", "digest", "count"), PINNED)
def test_features_and_signature_are_what_the_router_was_trained_on(
    prompt: str, signature: str, digest: str, count: int
) -> None:
    features, sig = features_and_signature(prompt)
    assert sig == signature == format_signature(prompt)
    assert features == prompt_features(prompt)
    assert len(features) == count
    assert hashlib.sha256(json.dumps(features).encode()).hexdigest()[:16] == digest
