"""Bad input raises one clear exception: unknown snapshot, wrong token, daemon down."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from thaw_client import Client, DaemonUnavailable, NotFound, Unauthorized

from .conftest import Base, Daemon, free_port


def test_unknown_snapshot_is_not_found(client: Client, base: Base) -> None:
    with pytest.raises(NotFound) as e:
        client.restore("no-such-snapshot")
    assert e.value.status == 404
    assert e.value.message == "no snapshot tagged no-such-snapshot"
    with pytest.raises(NotFound, match="no-such-vm"):
        client.vm("no-such-vm").exec(["true"])


@pytest.mark.parametrize("token", ["wrong-token", None])
def test_wrong_or_missing_token_is_unauthorized(
    daemon: Daemon, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("THAW_TOKEN", raising=False)
    monkeypatch.delenv("THAW_TOKEN_FILE", raising=False)
    with Client(host=daemon.https, token=token, ca=daemon.ca) as c:
        with pytest.raises(Unauthorized) as e:
            c.vms()
    assert e.value.status == 401
    assert e.value.message == "a valid token is needed (Authorization: Bearer TOKEN)"


def test_missing_socket_names_where_it_looked(tmp_path: Path) -> None:
    sock = tmp_path / "thawd.sock"
    with Client(host=f"unix://{sock}") as c, pytest.raises(DaemonUnavailable) as e:
        c.health()
    assert str(e.value) == (
        f"no thaw daemon: the socket {sock} does not exist (start thawd, or set THAW_HOST)"
    )


def test_stale_socket_says_nothing_answers(tmp_path: Path) -> None:
    sock = tmp_path / "thawd.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock))  # bound, never listening: what a killed daemon leaves
    with Client(host=f"unix://{sock}") as c, pytest.raises(DaemonUnavailable) as e:
        c.vms()
    assert str(e.value).startswith(f"no thaw daemon answers on the socket {sock}: ")
    assert "\n" not in str(e.value)


def test_closed_port_and_untrusted_certificate(daemon: Daemon) -> None:
    host = f"https://127.0.0.1:{free_port()}"
    with Client(host=host, token="t") as c, pytest.raises(DaemonUnavailable) as e:
        c.health()
    assert str(e.value).startswith(f"no thaw daemon answers at {host}: ")
    with Client(host=daemon.https, token=daemon.token, ca=None) as c:
        with pytest.raises(DaemonUnavailable, match="set THAW_CA to its CA's PEM file"):
            c.health()
