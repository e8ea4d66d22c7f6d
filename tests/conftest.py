from __future__ import annotations

from collections.abc import Iterator

import pytest

from payrouter.devchain import DevChain, DevToken
from tests.cluster import redis_cluster  # noqa: F401  (a fixture for every test)
from tests.private_redis import private_redis  # noqa: F401  (a fixture for every test)


@pytest.fixture(scope="session")
def chain() -> Iterator[DevChain]:
    with DevChain.start() as dev_chain:
        yield dev_chain


@pytest.fixture(scope="session")
def token(chain: DevChain) -> DevToken:
    return chain.deploy_token()
