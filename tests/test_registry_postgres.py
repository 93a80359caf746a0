"""The registry contract (tests/registry_contract.py) on a real PostgreSQL server started by the tests."""

from __future__ import annotations

import pytest

from tests.registry_contract import *  # noqa: F401,F403  (the contract tests run here)

pytestmark = pytest.mark.postgres


@pytest.fixture
def backend(postgres_server) -> str:
    return "postgres"
