"""Where the daemon is and how to reach it: ``THAW_HOST``, ``THAW_TOKEN``, ``THAW_CA``."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union
from urllib.parse import urlsplit

from .errors import ThawError


def thaw_home() -> Path:
    """``$THAW_HOME``, else ``$XDG_DATA_HOME/thaw``, else ``~/.local/share/thaw`` (as thaw does)."""
    home = os.environ.get("THAW_HOME")
    if home:
        return Path(home)
    data = os.environ.get("XDG_DATA_HOME")
    if data:
        return Path(data) / "thaw"
    return Path(os.environ.get("HOME") or "/root") / ".local" / "share" / "thaw"


def default_host() -> str:
    """The local daemon's socket: ``unix://$THAW_HOME/thawd.sock``."""
    return "unix://" + str(thaw_home() / "thawd.sock")


@dataclass(frozen=True)
class Endpoint:
    """A resolved daemon address: a Unix socket, or a base URL with optional TLS trust."""

    host: str
    """What the user gave (or the default), for messages."""
    socket: Optional[str]
    """The socket path for ``unix://`` hosts."""
    base_url: str
    token: Optional[str]
    verify: Union[bool, ssl.SSLContext]


def _token(token: Optional[str]) -> Optional[str]:
    if token is not None:
        return token
    if os.environ.get("THAW_TOKEN"):
        return os.environ["THAW_TOKEN"]
    path = os.environ.get("THAW_TOKEN_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as e:
            raise ThawError(f"cannot read THAW_TOKEN_FILE {path}: {e.strerror}") from None
    return None


def _verify(ca: Optional[str]) -> Union[bool, ssl.SSLContext]:
    ca = ca if ca is not None else os.environ.get("THAW_CA") or None
    if ca is None:
        return True
    try:
        return ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as e:
        raise ThawError(f"cannot load the CA certificate THAW_CA={ca}: {e}") from None


def resolve(
    host: Optional[str] = None, token: Optional[str] = None, ca: Optional[str] = None
) -> Endpoint:
    """Resolve the arguments, falling back to the environment, then to the local socket.

    ``host`` is ``unix:///path/thawd.sock``, ``https://HOST:PORT`` or (for a daemon run
    with ``--insecure`` on loopback) ``http://HOST:PORT``.
    """
    host = host or os.environ.get("THAW_HOST") or default_host()
    tok = _token(token)
    url = urlsplit(host)
    if url.scheme == "unix":
        path = url.path or url.netloc
        if not path:
            raise ThawError(f"THAW_HOST={host} names no socket (unix:///path/thawd.sock)")
        return Endpoint(host, path, "http://thawd", tok, True)
    if url.scheme in ("https", "http") and url.netloc:
        verify = _verify(ca) if url.scheme == "https" else True
        return Endpoint(host, None, host.rstrip("/"), tok, verify)
    raise ThawError(f"THAW_HOST={host} is not unix:///path/thawd.sock or https://HOST:PORT")
