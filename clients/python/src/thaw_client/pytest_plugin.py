"""pytest plugin (entry point ``thaw``): a fresh thaw clone per test.

    @pytest.mark.thaw(snapshot="base")
    def test_uname(thaw_vm):
        assert thaw_vm.exec(["uname"]).stdout == b"Linux\\n"

The snapshot comes from the test's ``thaw`` marker (on the test, its class or module),
else from the ini option ``thaw_snapshot``. ``thaw_vm`` restores a clone of it (from the
snapshot's warm pool when the daemon keeps one ready: ``client.set_pool(tag, size)`` or
``PUT /v1/snapshots/{tag}/pool``), named after the test, and stops it after the test,
also when the test fails. The daemon is found as ``Client()`` finds it (``THAW_HOST``,
``THAW_TOKEN``, ``THAW_CA``, else the local socket).
"""

from __future__ import annotations

import re
import secrets
from typing import Iterator, Optional

import pytest

from .client import Client, Vm
from .errors import NotFound, ThawError


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "thaw_snapshot",
        "the snapshot the thaw_vm fixture clones when the test has no thaw marker",
        default=None,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "thaw(snapshot): the snapshot the thaw_vm fixture clones for this test"
    )


def _snapshot(request: pytest.FixtureRequest) -> str:
    marker = request.node.get_closest_marker("thaw")
    tag: Optional[str] = None
    if marker is not None:
        tag = marker.kwargs.get("snapshot") or (marker.args[0] if marker.args else None)
    if tag is None:
        tag = request.config.getini("thaw_snapshot") or None
    if not tag:
        pytest.fail(
            'thaw_vm needs a snapshot: mark the test @pytest.mark.thaw(snapshot="TAG") '
            "or set thaw_snapshot = TAG in the pytest ini file",
            pytrace=False,
        )
    return str(tag)


def _clone_name(test: str) -> str:
    """The test's name as a VM name, made unique: ``test_x[3]`` -> ``test_x-3-1a2b3c``."""
    slug = re.sub(r"[^A-Za-z0-9._]+", "-", test).strip(".-_")[:48] or "test"
    return f"{slug}-{secrets.token_hex(3)}"


@pytest.fixture(scope="session")
def thaw_client() -> Iterator[Client]:
    """One ``Client`` for the session (``THAW_HOST``/``THAW_TOKEN``/``THAW_CA``)."""
    failure = None
    try:
        client = Client()
    except ThawError as e:
        failure = f"thaw: {e}"
    if failure is not None:  # outside the except: one line, no chained traceback
        pytest.fail(failure, pytrace=False)
    with client:
        yield client


@pytest.fixture
def thaw_vm(request: pytest.FixtureRequest, thaw_client: Client) -> Iterator[Vm]:
    """A fresh clone of the test's snapshot, stopped after the test (pass or fail)."""
    tag = _snapshot(request)
    failure = None
    try:
        vm = thaw_client.restore(tag, name=_clone_name(request.node.name))
    except ThawError as e:
        failure = f"thaw: cannot restore a clone of {tag!r}: {e}"
    if failure is not None:
        pytest.fail(failure, pytrace=False)
    try:
        yield vm
    finally:
        try:
            vm.stop()
        except NotFound:
            pass  # the test stopped it itself
