"""The registry contract (tests/registry_contract.py) on SQLite, plus SQLite-only behaviour."""

from __future__ import annotations

import pytest

from tests.registry_contract import *  # noqa: F401,F403  (the contract tests run here)


@pytest.fixture
def backend() -> str:
    return "sqlite"
