"""Fixtures for the client's tests, which run against the real daemon and test authorization
server that tests/integration/clients_python.rs starts. It passes, in the environment:

    CREDBROKER_TEST_SOCKET          the daemon's broker socket
    CREDBROKER_TEST_PROVIDER_STATE  the test provider's state dir (issued/, revoked/)
    CREDBROKER_TEST_TOKEN           agent-1, audience postgres, scope postgres.read
    CREDBROKER_TEST_TOKEN_NOSCOPE   agent-noscope: audience postgres, without postgres.read
    CREDBROKER_TEST_TOKEN_WRONG_AUD agent-1 for another audience (s3)
    CREDBROKER_TEST_REPORT          a file the tests append what they saw to, one JSON a line
                                    (secret values and lease ids), for the Rust side to check
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

GRANT = "orders-db-read"


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.skip(f"{name} is not set: run these tests through tests/integration/clients_python.rs")
    return value


@pytest.fixture
def socket() -> str:
    return _env("CREDBROKER_TEST_SOCKET")


@pytest.fixture
def token() -> str:
    return _env("CREDBROKER_TEST_TOKEN")


@pytest.fixture
def token_noscope() -> str:
    return _env("CREDBROKER_TEST_TOKEN_NOSCOPE")


@pytest.fixture
def token_wrong_aud() -> str:
    return _env("CREDBROKER_TEST_TOKEN_WRONG_AUD")


class Provider:
    """The test provider's durable state: a credential is a file in issued/ until revoked."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def issued(self, lease_id: str) -> bool:
        return (self.root / "issued" / f"{lease_id}.json").exists()

    def revoked(self, lease_id: str) -> bool:
        return (self.root / "revoked" / f"{lease_id}.json").exists()

    def revoked_ids(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "revoked").glob("*.json"))

    def outstanding(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "issued").glob("*.json"))


@pytest.fixture
def provider() -> Provider:
    return Provider(Path(_env("CREDBROKER_TEST_PROVIDER_STATE")))


@pytest.fixture
def report():
    """Records what a test saw (secret values, lease ids) for the Rust side's checks."""
    path = os.environ.get("CREDBROKER_TEST_REPORT")

    def write(**entry: object) -> None:
        if path:
            with open(path, "a") as f:
                f.write(json.dumps(entry) + "\n")

    return write
