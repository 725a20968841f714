"""Where Client() looks for the daemon: THAW_HOST, THAW_TOKEN(_FILE), THAW_CA, THAW_HOME."""

from __future__ import annotations

from pathlib import Path

import pytest

from thaw_client import ThawError
from thaw_client.config import resolve


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in (
        "THAW_HOST",
        "THAW_TOKEN",
        "THAW_TOKEN_FILE",
        "THAW_CA",
        "THAW_HOME",
        "XDG_DATA_HOME",
    ):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", "/home/u")


def test_default_is_the_local_socket_as_thaw_finds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve().socket == "/home/u/.local/share/thaw/thawd.sock"
    monkeypatch.setenv("XDG_DATA_HOME", "/xdg")
    assert resolve().socket == "/xdg/thaw/thawd.sock"
    monkeypatch.setenv("THAW_HOME", "/th")
    assert resolve().socket == "/th/thawd.sock"


def test_thaw_host_and_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("THAW_HOST", "unix:///run/thaw.sock")
    assert resolve().socket == "/run/thaw.sock"
    monkeypatch.setenv("THAW_HOST", "https://h.example:7420/")
    (tmp_path / "t").write_text("secret\n")
    monkeypatch.setenv("THAW_TOKEN_FILE", str(tmp_path / "t"))
    ep = resolve()
    assert (ep.socket, ep.base_url, ep.token) == (None, "https://h.example:7420", "secret")
    monkeypatch.setenv("THAW_TOKEN", "direct")
    assert resolve().token == "direct"


def test_bad_settings_say_what_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THAW_HOST", "tcp://h:1")
    with pytest.raises(ThawError, match="THAW_HOST=tcp://h:1 is not unix:///path"):
        resolve()
    monkeypatch.setenv("THAW_HOST", "https://h:1")
    monkeypatch.setenv("THAW_CA", "/nonexistent/ca.pem")
    with pytest.raises(ThawError, match="cannot load the CA certificate THAW_CA=/nonexistent"):
        resolve()
    monkeypatch.delenv("THAW_CA")
    monkeypatch.setenv("THAW_TOKEN_FILE", "/nonexistent/token")
    with pytest.raises(ThawError, match="cannot read THAW_TOKEN_FILE /nonexistent/token"):
        resolve()
