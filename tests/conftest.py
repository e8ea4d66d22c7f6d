from __future__ import annotations

from collections.abc import Iterator

import pytest

from payrouter.devchain import DevChain, DevToken


@pytest.fixture(scope="session")
def chain() -> Iterator[DevChain]:
    with DevChain.start() as dev_chain:
        yield dev_chain


@pytest.fixture(scope="session")
def token(chain: DevChain) -> DevToken:
    return chain.deploy_token()
