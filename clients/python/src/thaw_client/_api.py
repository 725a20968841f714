"""The requests both clients send, and how their answers are read.

A ``Call`` is one request and the function that turns its JSON answer into a model;
``Client`` and ``AsyncClient`` differ only in how they send it.
"""

from __future__ import annotations

import base64
import json
import math
import os
from dataclasses import dataclass
from typing import (
    Any,
    Callable,
    Dict,
    Generic,
    List,
    Mapping,
    Optional,
    Sequence,
    Type,
    TypeVar,
    Union,
)
from urllib.parse import quote, urlencode

import httpx

from . import models
from .config import Endpoint
from .errors import DaemonUnavailable, ExecTimeout, ThawError, error_for



T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    body: Optional[Dict[str, Any]]
    parse: Callable[[Any], T]
    timeout: Optional[float] = None
    """Seconds to wait for the answer beyond the client's default, for long operations."""


def seg(name: str) -> str:
    """A name or tag as one path segment."""
    return quote(name, safe="")


def _list(cls: Type[T]) -> Callable[[Any], List[T]]:
    return lambda data: [models.from_json(cls, d) for d in data]


def _one(cls: Type[T]) -> Callable[[Any], T]:
    return lambda data: models.from_json(cls, data)


def health() -> Call[models.Health]:
    return Call("GET", "/v1/health", None, _one(models.Health))


def vms(labels: Optional[Mapping[str, str]] = None) -> Call[List[models.VmInfo]]:
    query = urlencode([("label", f"{k}={v}") for k, v in (labels or {}).items()])
    path = f"/v1/vms?{query}" if query else "/v1/vms"
    return Call("GET", path, None, _list(models.VmInfo))


def snapshots() -> Call[List[models.SnapshotInfo]]:
    return Call("GET", "/v1/snapshots", None, _list(models.SnapshotInfo))


def pools() -> Call[List[models.PoolStatus]]:
    return Call("GET", "/v1/pools", None, _list(models.PoolStatus))


def set_pool(tag: str, size: int, mode: str, warm_ports: Optional[bool]) -> Call[models.PoolStatus]:
    body: Dict[str, Any] = {"size": size, "mode": mode}
    if warm_ports is not None:
        body["warm_ports"] = warm_ports
    return Call("PUT", f"/v1/snapshots/{seg(tag)}/pool", body, _one(models.PoolStatus))


def remove_snapshot(tag: str, recursive: bool) -> Call[List[str]]:
    q = "?recursive=true" if recursive else ""
    return Call("DELETE", f"/v1/snapshots/{seg(tag)}{q}", None, lambda d: list(d["removed"]))


def boot(name: str, options: Mapping[str, Any]) -> Call[models.BootReport]:
    body = {"name": name, **{k: v for k, v in options.items() if v is not None}}
    return Call("POST", "/v1/vms", body, _one(models.BootReport))


def ttl_wire(ttl: Union[float, str]) -> str:
    """A time to live as the API takes it: seconds (rounded up) as ``"600s"``; a string
    (``"10m"``) as it is."""
    if isinstance(ttl, str):
        return ttl
    return f"{max(1, math.ceil(ttl))}s"


def set_ttl(name: str, ttl: Union[float, str]) -> Call[models.VmInfo]:
    return Call("POST", f"/v1/vms/{seg(name)}/ttl", {"ttl": ttl_wire(ttl)}, _one(models.VmInfo))


def restore(
    tag: str,
    name: Optional[str],
    ttl: Union[float, str, None],
    labels: Optional[Mapping[str, str]],
    options: Mapping[str, Any],
) -> Call[models.RestoreReport]:
    body = {k: v for k, v in options.items() if v is not None}
    if name is not None:
        body["name"] = name
    # Sent only when asked for, so a daemon without them says so (422).
    if ttl is not None:
        body["ttl"] = ttl_wire(ttl)
    if labels is not None:
        body["labels"] = dict(labels)
    return Call(
        "POST",
        f"/v1/snapshots/{seg(tag)}/restore",
        body,
        lambda data: models.from_json(models.RestoreReport, data[0]),
    )


def stop(name: str) -> Call[None]:
    return Call("DELETE", f"/v1/vms/{seg(name)}", None, lambda d: None)


def resume(name: str) -> Call[None]:
    return Call("POST", f"/v1/vms/{seg(name)}/resume", None, lambda d: None)


def snapshot(name: str, tag: str, stop: bool, pin: bool = False) -> Call[models.SnapshotReport]:
    body = {"tag": tag, "stop": stop, "pin": pin}
    return Call("POST", f"/v1/vms/{seg(name)}/snapshot", body, _one(models.SnapshotReport))


def park(name: str, remote: Optional[str], wait: bool) -> Call[models.Parked]:
    body: Dict[str, Any] = {"wait": wait}
    if remote is not None:
        body["remote"] = remote
    # An upload waited for takes as long as the snapshot is large.
    timeout = 3600.0 if wait else None
    return Call("POST", f"/v1/vms/{seg(name)}/park", body, _one(models.Parked), timeout)


def parked() -> Call[List[models.ParkRecord]]:
    return Call("GET", "/v1/parked", None, _list(models.ParkRecord))


def wake(name: str, from_: Optional[str], timeout: Optional[int]) -> Call[models.RestoreReport]:
    body: Dict[str, Any] = {"name": name}
    if from_ is not None:
        body["from"] = from_
    if timeout is not None:
        body["timeout_secs"] = timeout
    return Call(
        "POST",
        "/v1/wake",
        body,
        lambda data: models.from_json(models.RestoreReport, data[0]),
        3600.0,
    )


def reset(name: str, to: Optional[str], timeout: Optional[int]) -> Call[models.ResetReport]:
    body: Dict[str, Any] = {}
    if to is not None:
        body["to"] = to
    if timeout is not None:
        body["timeout_secs"] = timeout
    return Call("POST", f"/v1/vms/{seg(name)}/reset", body, _one(models.ResetReport))


@dataclass(frozen=True)
class StreamCall:
    """A streaming exec request: where it goes, its body, how long to wait for a frame."""

    path: str
    body: Dict[str, Any]
    timeout: float


def exec_stream(
    name: str,
    argv: Sequence[str],
    stdin: Optional[bytes],
    env: Optional[Mapping[str, str]],
    cwd: Optional[str],
    timeout: Optional[int],
) -> StreamCall:
    """``POST /v1/vms/{name}/exec/stream``: the output comes as NDJSON frames."""
    if isinstance(argv, (str, bytes)):
        raise ThawError("exec takes the command as a list: ['sh', '-c', '...']")
    body: Dict[str, Any] = {"command": list(argv)}
    if env:
        body["env"] = [f"{k}={v}" for k, v in env.items()]
    if cwd is not None:
        body["cwd"] = cwd
    if timeout is not None:
        body["timeout_secs"] = timeout
    if stdin is not None:
        body["stdin_base64"] = base64.b64encode(stdin).decode("ascii")
    wait = float(timeout if timeout is not None else 60) + 30.0
    return StreamCall(f"/v1/vms/{seg(name)}/exec/stream", body, wait)


class ExecFrames:
    """Reads the frames of a streamed exec: ``feed`` each line; it returns the piece of
    output it carried (``("stdout", bytes)``), and ``result`` gives the end."""

    def __init__(self) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.exit_code: Optional[int] = None

    def feed(self, line: Union[str, bytes]) -> Optional[tuple]:
        if not line.strip():
            return None
        try:
            frame = json.loads(line)
        except ValueError:
            raise ThawError(f"the daemon sent an exec frame that is not JSON: {line[:80]!r}")
        for stream, buf in (("stdout", self.stdout), ("stderr", self.stderr)):
            if stream in frame:
                data = base64.b64decode(frame[stream])
                buf.extend(data)
                return (stream, data)
        if "exit_code" in frame:
            self.exit_code = int(frame["exit_code"])
            return None
        if "error" in frame:
            if frame.get("timed_out"):
                raise ExecTimeout(str(frame["error"]))
            raise ThawError(str(frame["error"]))
        return None

    def result(self) -> models.ExecResult:
        if self.exit_code is None:
            raise ThawError("the daemon ended the exec stream before the command ended")
        return models.ExecResult(self.exit_code, bytes(self.stdout), bytes(self.stderr))


def files_path(name: str, path: str, mode: Optional[int] = None) -> str:
    """``/v1/vms/{name}/files?path=...`` (``mode`` as octal)."""
    if not path.startswith("/"):
        raise ThawError(f"the guest path must be absolute: {path!r}")
    query: Dict[str, str] = {"path": path}
    if mode is not None:
        query["mode"] = format(mode, "o")
    return f"/v1/vms/{seg(name)}/files?{urlencode(query)}"


def refusal(response: httpx.Response) -> ThawError:
    """The exception for an error answer whose body was read."""
    try:
        message = str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        message = response.text.strip() or response.reason_phrase
    return error_for(response.status_code, message)


def answer(call: Call[T], response: httpx.Response) -> T:
    """The parsed answer, or the exception for an error status."""
    if response.status_code >= 400:
        try:
            message = str(response.json()["error"])
        except (ValueError, KeyError, TypeError):
            message = response.text.strip() or response.reason_phrase
        raise error_for(response.status_code, message)
    try:
        data = response.json()
    except ValueError:
        raise ThawError(
            f"{call.method} {call.path}: the daemon answered {response.status_code} "
            "with a body that is not JSON",
            response.status_code,
        ) from None
    return call.parse(data)


def unavailable(endpoint: Endpoint, exc: Exception) -> DaemonUnavailable:
    """One line saying where the client looked and why nothing answered there."""
    where = endpoint.host
    if endpoint.socket is not None:
        if not os.path.exists(endpoint.socket):
            return DaemonUnavailable(
                f"no thaw daemon: the socket {endpoint.socket} does not exist "
                "(start thawd, or set THAW_HOST)"
            )
        reason = _reason(exc)
        return DaemonUnavailable(
            f"no thaw daemon answers on the socket {endpoint.socket}: {reason} "
            "(start thawd, or set THAW_HOST)"
        )
    reason = _reason(exc)
    if "CERTIFICATE_VERIFY_FAILED" in reason:
        return DaemonUnavailable(
            f"the thaw daemon at {where} has a certificate this client does not trust "
            "(set THAW_CA to its CA's PEM file)"
        )
    return DaemonUnavailable(
        f"no thaw daemon answers at {where}: {reason} (is thawd running with --listen?)"
    )


def _reason(exc: Exception) -> str:
    seen = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    text = getattr(seen, "strerror", None) or str(seen) or type(seen).__name__
    return " ".join(str(text).split())


def headers(endpoint: Endpoint) -> Dict[str, str]:
    h = {"user-agent": "thaw-client-python"}
    if endpoint.token:
        h["authorization"] = f"Bearer {endpoint.token}"
    return h


EVENTS_PATH = "/v1/events"
# No read deadline: the daemon writes a comment line every 15 s while nothing happens.
EVENTS_TIMEOUT = httpx.Timeout(None, connect=10.0)


def sse_event(line: Union[str, bytes]) -> Optional[Dict[str, Any]]:
    """The event a Server-Sent Events line carries (its ``data:`` JSON), else None
    (``event:``/``id:`` lines, keep-alive comments, blank separators)."""
    text = line.decode() if isinstance(line, bytes) else line
    if not text.startswith("data:"):
        return None
    value = json.loads(text[5:].strip())
    return value if isinstance(value, dict) else None
