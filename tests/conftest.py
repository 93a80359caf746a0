"""Shared pytest set-up.

Service fixtures live in ``tests/fixtures/<area>.py`` and are loaded here as
plugins.  A test that needs a service that is missing *skips with a reason* on a
developer machine, but *fails* under CI (``CI=true``), where the fixtures start
every service themselves: see :func:`need_service`.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = [
    "tests.fixtures.registry",
    "tests.fixtures.data",
    "tests.fixtures.science",
    "tests.fixtures.submit",
    "tests.fixtures.verify",
]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need_service(available: bool, reason: str) -> None:
    """Skip (locally) or fail (in CI) when a service a test needs is not available."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"service unavailable in CI: {reason}", pytrace=False)
    pytest.skip(reason)
