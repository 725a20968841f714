"""The synchronous client: ``Client`` and the ``Vm`` handles it returns."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Type, TypeVar, Union

import httpx

from . import _api, models
from .config import resolve
from .errors import NotFound, ThawError

T = TypeVar("T")

Output = Optional[Callable[[bytes], Any]]


class Files:
    """``vm.files``: files copied into and out of the guest, streamed in chunks by thawd."""

    def __init__(self, vm: "Vm") -> None:
        self._vm = vm

    def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write ``data`` to ``path`` in the guest (created or replaced, with ``mode``)."""
        self._vm._client._send("PUT", _api.files_path(self._vm.name, path, mode), data)

    def read(self, path: str) -> bytes:
        """The bytes of ``path`` in the guest."""
        return self._vm._client._send("GET", _api.files_path(self._vm.name, path), None)


class Vm:
    """A VM the daemon answers for, by name.

    As a context manager (``with client.restore("base") as vm:``) it is stopped on exit,
    also when the block raises.
    """

    def __init__(self, client: "Client", name: str, report: Any = None) -> None:
        self._client = client
        self.name = name
        """The VM's name."""
        self.report = report
        """The boot or restore report this handle came from (``None`` for ``client.vm``)."""
        self.files = Files(self)

    def __repr__(self) -> str:
        return f"Vm({self.name!r})"

    def __enter__(self) -> "Vm":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        try:
            self.stop()
        except NotFound:
            pass  # already stopped inside the block

    def exec(
        self,
        argv: Sequence[str],
        on_stdout: Output = None,
        on_stderr: Output = None,
        stdin: Optional[bytes] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        timeout: Optional[int] = None,
    ) -> models.ExecResult:
        """Run ``argv`` in the guest (no shell) and return its exit code and output (bytes).

        The output streams: ``on_stdout``/``on_stderr`` get each piece as the guest
        writes it, before the command ends. A non-zero exit is a result, not an
        exception. ``stdin`` (bytes) is the command's input, ``env`` variables added to
        its environment, ``cwd`` the guest directory it runs in. ``timeout`` (seconds,
        default 60) bounds it: past it the guest process is killed and ``ExecTimeout``
        is raised.
        """
        call = _api.exec_stream(self.name, argv, stdin, env, cwd, timeout)
        return self._client._exec(call, on_stdout, on_stderr)

    def snapshot(self, tag: str, stop: bool = False, pin: bool = False) -> models.SnapshotReport:
        """Snapshot the VM as ``tag``; with ``stop`` the VM ends (no RAM copy). Its RAM
        image is kept once, in the store, unless ``pin`` keeps a plain copy too."""
        return self._client._run(_api.snapshot(self.name, tag, stop, pin))

    def park(self, remote: Optional[str] = None, wait: bool = False) -> models.Parked:
        """Park the VM: it ends into a snapshot tagged with its name; with ``remote``
        (``s3://BUCKET/PREFIX``) the snapshot is then uploaded, in the background (the
        answer's ``operation``) or, with ``wait``, before this returns.
        ``client.wake(name)`` brings it back."""
        return self._client._run(_api.park(self.name, remote, wait))

    def reset(self, to: Optional[str] = None, timeout: Optional[int] = None) -> models.ResetReport:
        """Put the VM back to snapshot ``to`` (default: the one it came from), same name."""
        return self._client._run(_api.reset(self.name, to, timeout))

    def resume(self) -> None:
        """Resume a paused VM (a clone restored ``paused``)."""
        self._client._run(_api.resume(self.name))

    def info(self) -> models.VmInfo:
        """The VM as the daemon lists it now; ``NotFound`` when it is gone."""
        for vm in self._client.vms():
            if vm.name == self.name:
                return vm
        raise NotFound(f"no VM named {self.name}", 404)

    def set_ttl(self, ttl: Union[float, str]) -> models.VmInfo:
        """Stop and remove the VM ``ttl`` from now (seconds, or ``"10m"``)."""
        return self._client._run(_api.set_ttl(self.name, ttl))

    def stop(self) -> None:
        """Stop the VM and forget it."""
        self._client._run(_api.stop(self.name))


class Events:
    """A subscription to the daemon's events (``GET /v1/events``), made when it is
    created: every event after ``client.events()`` returns is seen. Iterate it for each
    event as a dict (``type``, ``id``, ``time_unix_ms`` and the type's fields: see
    docs/api.md); ``close()`` it, or leave its ``with`` block, to end the subscription.
    Iteration ends when the daemon stops.
    """

    def __init__(self, client: "Client") -> None:
        self._stream = client._http.stream("GET", _api.EVENTS_PATH, timeout=_api.EVENTS_TIMEOUT)
        try:
            self._response = self._stream.__enter__()
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise _api.unavailable(client.endpoint, e) from None
        if self._response.status_code >= 400:
            self._response.read()
            error = _api.refusal(self._response)
            self.close()
            raise error
        self._lines = self._response.iter_lines()

    def __iter__(self) -> "Events":
        return self

    def __next__(self) -> Dict[str, Any]:
        for line in self._lines:
            event = _api.sse_event(line)
            if event is not None:
                return event
        raise StopIteration

    def __enter__(self) -> "Events":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """End the subscription (closes its connection)."""
        self._stream.__exit__(None, None, None)


class Client:
    """A connection to thawd.

    ``host``, ``token`` and ``ca`` default to ``THAW_HOST`` (``unix:///path`` or
    ``https://HOST:PORT``; default ``unix://$THAW_HOME/thawd.sock``), ``THAW_TOKEN``
    (or the file ``THAW_TOKEN_FILE``) and ``THAW_CA`` (a PEM file to trust). ``timeout``
    is how long to wait for an answer (seconds; boots and restores wait for the guest).
    """

    def __init__(
        self,
        host: Optional[str] = None,
        token: Optional[str] = None,
        ca: Optional[str] = None,
        timeout: float = 600.0,
    ) -> None:
        self.endpoint = resolve(host, token, ca)
        ep = self.endpoint
        transport = httpx.HTTPTransport(uds=ep.socket) if ep.socket else None
        self._timeout = httpx.Timeout(timeout, connect=10.0)
        self._http = httpx.Client(
            base_url=ep.base_url,
            transport=transport,
            verify=ep.verify,
            headers=_api.headers(ep),
            timeout=self._timeout,
        )

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def _run(self, call: _api.Call[T]) -> T:
        timeout = self._timeout
        if call.timeout is not None and self._timeout.read is not None:
            timeout = httpx.Timeout(max(call.timeout, self._timeout.read), connect=10.0)
        try:
            response = self._http.request(call.method, call.path, json=call.body, timeout=timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise _api.unavailable(self.endpoint, e) from None
        return _api.answer(call, response)

    def _exec(self, call: _api.StreamCall, on_stdout: Output, on_stderr: Output) -> models.ExecResult:
        frames = _api.ExecFrames()
        timeout = httpx.Timeout(max(call.timeout, self._timeout.read or 0), connect=10.0)
        try:
            with self._http.stream("POST", call.path, json=call.body, timeout=timeout) as r:
                if r.status_code >= 400:
                    r.read()
                    raise _api.refusal(r)
                for line in r.iter_lines():
                    piece = frames.feed(line)
                    if piece is not None:
                        callback = on_stdout if piece[0] == "stdout" else on_stderr
                        if callback is not None:
                            callback(piece[1])
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise _api.unavailable(self.endpoint, e) from None
        return frames.result()

    def _send(self, method: str, path: str, content: Optional[bytes]) -> Any:
        try:
            r = self._http.request(method, path, content=content)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise _api.unavailable(self.endpoint, e) from None
        if r.status_code >= 400:
            raise _api.refusal(r)
        return r.content

    def health(self) -> models.Health:
        """The daemon's version, pid and VM count."""
        return self._run(_api.health())

    def vms(self, labels: Optional[Mapping[str, str]] = None) -> List[models.VmInfo]:
        """Every VM the daemon answers for; with ``labels``, those that have them all."""
        return self._run(_api.vms(labels))

    def events(self) -> Events:
        """Subscribe to the daemon's events (VMs created, ready, stopped, died; snapshots
        taken and removed; pools refilled; push/pull progress): ``with client.events()
        as events: for e in events: ...``."""
        return Events(self)

    def vm(self, name: str) -> Vm:
        """A handle on an existing VM (not checked until used)."""
        return Vm(self, name)

    def snapshots(self) -> List[models.SnapshotInfo]:
        """Every snapshot."""
        return self._run(_api.snapshots())

    def remove_snapshot(self, tag: str, recursive: bool = False) -> List[str]:
        """Remove snapshot ``tag`` (with ``recursive``, its children too); the tags removed."""
        return self._run(_api.remove_snapshot(tag, recursive))

    def parked(self) -> List[models.ParkRecord]:
        """The VMs parked on the daemon's host, and where their uploads are."""
        return self._run(_api.parked())

    def wake(self, name: str, from_: Optional[str] = None, timeout: Optional[int] = None) -> Vm:
        """Wake the VM parked as ``name``, under that name (RAM and disks as parked, the
        clock set): from the daemon's host, else fetched from ``from_``
        (``s3://BUCKET/PREFIX``)."""
        report = self._run(_api.wake(name, from_, timeout))
        return Vm(self, report.name, report)

    def pools(self) -> List[models.PoolStatus]:
        """Every configured warm pool."""
        return self._run(_api.pools())

    def set_pool(
        self, tag: str, size: int, mode: str = "running", warm_ports: Optional[bool] = None
    ) -> models.PoolStatus:
        """Keep ``size`` clones of ``tag`` ready (``running`` or ``paused``); 0 empties it."""
        return self._run(_api.set_pool(tag, size, mode, warm_ports))

    def boot(self, name: str, **options: Any) -> Vm:
        """Boot a VM named ``name`` and wait until its guest is ready.

        ``options`` are the API's boot fields (``memory_mib``, ``cpus``, ``kernel``,
        ``ports=[{"host": 0, "guest": 80}]``, ...; see docs/api.md); without ``kernel``
        the default guest boots.
        """
        report = self._run(_api.boot(name, options))
        return Vm(self, report.name, report)

    def restore(
        self,
        tag: str,
        name: Optional[str] = None,
        ttl: Union[float, str, None] = None,
        labels: Optional[Mapping[str, str]] = None,
        **options: Any,
    ) -> Vm:
        """A new clone of snapshot ``tag``, ready; from its warm pool when one is ready.

        ``name`` defaults to ``TAG-N``. ``options`` are the API's other restore fields
        (``exec_after``, ``ready_port``, ``paused``, ``timeout_secs``, ...).
        ``ttl`` (seconds, or a string like ``"10m"``): the daemon stops and removes the
        clone when it passes. ``labels``: shown by ``vms()`` and matched by
        ``vms(labels=...)``.
        """
        report = self._run(_api.restore(tag, name, ttl, labels, options))
        return Vm(self, report.name, report)


__all__ = ["Client", "Vm", "Files", "Events"]
