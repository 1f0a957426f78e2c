"""Fixtures for the real Dovecot and Postfix of tests/servers.py.

Module scoped: each test module gets fresh servers and a fresh map, so what
one module logs or grants cannot leak into another.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/ has no __init__.py, so pytest puts it on sys.path for its conftest.
import servers


@pytest.fixture(scope="module")
def server_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    missing = servers.missing_requirements()
    if missing:
        reason = "real Dovecot/Postfix unavailable: " + "; ".join(missing)
        # CI installs both, so there a missing server is a broken setup.
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    root = servers.make_server_root()
    try:
        yield root
    finally:
        logs = tmp_path_factory.mktemp("server-logs")
        servers.remove_server_root(root, keep_logs_in=logs)


@pytest.fixture(scope="module")
def dovecot(server_root: Path) -> Iterator[servers.DovecotServer]:
    server = servers.DovecotServer(server_root / "dovecot")
    try:
        yield server.start()
    finally:
        leftovers = server.stop()
    assert not leftovers, f"{server.name} processes outlived its master: {leftovers}"


@pytest.fixture(scope="module")
def postfix(server_root: Path) -> Iterator[servers.PostfixServer]:
    server = servers.PostfixServer(
        server_root / "postfix", map_path=server_root / "map" / "popbs"
    )
    try:
        yield server.start()
    finally:
        leftovers = server.stop()
    assert not leftovers, f"{server.name} processes outlived its master: {leftovers}"
