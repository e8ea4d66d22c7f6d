from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from payrouter.devchain import DevChain, DevToken
from tests.cluster import redis_cluster  # noqa: F401  (a fixture for every test)
from tests.private_redis import private_redis  # noqa: F401  (a fixture for every test)
from tests.redis_keys import delete_run_keys

# The agent SDK's and CLI's default budget file and channel folder (~/.payrouter) would fill with
# test runs: this run's live in a temporary folder, inherited by every process the tests start.
_AGENT_HOME = tempfile.mkdtemp(prefix="payrouter-test-agent-")
os.environ["PAYROUTER_BUDGET_FILE"] = os.path.join(_AGENT_HOME, "spend.json")
os.environ["PAYROUTER_CHANNELS_DIR"] = os.path.join(_AGENT_HOME, "channels")
os.environ["PAYROUTER_SANDBOX_FILE"] = os.path.join(_AGENT_HOME, "sandbox.json")  # where `payrouter dev` says it runs


@pytest.fixture(scope="session", autouse=True)
def _run_hygiene() -> Iterator[None]:
    """At the end of the session: delete every key this run left in the shared Redis (names made
    with `tests.redis_keys.run_token`)."""
    yield
    delete_run_keys()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Delete the agent folder above, whatever ran: a run that selects no test (``-k``) never
    sets up a session fixture."""
    shutil.rmtree(_AGENT_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def chain() -> Iterator[DevChain]:
    with DevChain.start() as dev_chain:
        yield dev_chain


@pytest.fixture(scope="session")
def token(chain: DevChain) -> DevToken:
    return chain.deploy_token()
