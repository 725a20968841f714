"""Exceptions raised by the client: one class per kind of failure, each with one line."""

from __future__ import annotations

from typing import Optional


class ThawError(Exception):
    """An operation failed.

    ``message`` is the one line saying what was wrong (the API's ``error`` field when the
    daemon answered); ``status`` is the HTTP status, or ``None`` when no answer came.
    """

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        if self.status is None:
            return self.message
        return f"{self.message} (HTTP {self.status})"


class NotFound(ThawError):
    """No such VM, snapshot or route (404)."""


class Unauthorized(ThawError):
    """The daemon wants a valid token (401): set ``THAW_TOKEN`` or ``THAW_TOKEN_FILE``."""


class DaemonUnavailable(ThawError):
    """No daemon answers where the client looked (socket missing, connection refused, TLS)."""


class ExecTimeout(ThawError):
    """A command ran past its ``timeout``; the guest process was killed."""


def error_for(status: int, message: str) -> ThawError:
    """The exception for an error answer with this status and one-line message."""
    if status == 404:
        return NotFound(message, status)
    if status == 401:
        return Unauthorized(message, status)
    return ThawError(message, status)
