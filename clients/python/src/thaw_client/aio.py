"""The asynchronous client: ``AsyncClient`` mirrors ``Client``, ``AsyncVm`` mirrors ``Vm``."""

from __future__ import annotations

import inspect
from types import TracebackType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Type, TypeVar, Union

import httpx

from . import _api, models
from .config import resolve
from .errors import NotFound, ThawError

T = TypeVar("T")

Output = Optional[Callable[[bytes], Any]]


class AsyncFiles:
    """``vm.files`` of an ``AsyncVm``: see ``thaw_client.Files``."""

    def __init__(self, vm: "AsyncVm") -> None:
        self._vm = vm

    async def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """See ``Files.write``."""
        await self._vm._client._send("PUT", _api.files_path(self._vm.name, path, mode), data)

    async def read(self, path: str) -> bytes:
        """See ``Files.read``."""
        return await self._vm._client._send("GET", _api.files_path(self._vm.name, path), None)


class AsyncVm:
    """A VM by name; ``async with`` stops it on exit. See ``thaw_client.Vm``."""

    def __init__(self, client: "AsyncClient", name: str, report: Any = None) -> None:
        self._client = client
        self.name = name
        self.report = report
        self.files = AsyncFiles(self)

    def __repr__(self) -> str:
        return f"AsyncVm({self.name!r})"

    async def __aenter__(self) -> "AsyncVm":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        try:
            await self.stop()
        except NotFound:
            pass

    async def exec(
        self,
        argv: Sequence[str],
        on_stdout: Output = None,
        on_stderr: Output = None,
        stdin: Optional[bytes] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        timeout: Optional[int] = None,
    ) -> models.ExecResult:
        """See ``Vm.exec``; the callbacks may also be coroutine functions."""
        call = _api.exec_stream(self.name, argv, stdin, env, cwd, timeout)
        return await self._client._exec(call, on_stdout, on_stderr)

    async def snapshot(self, tag: str, stop: bool = False, pin: bool = False) -> models.SnapshotReport:
        """See ``Vm.snapshot``."""
        return await self._client._run(_api.snapshot(self.name, tag, stop, pin))

    async def park(self, remote: Optional[str] = None, wait: bool = False) -> models.Parked:
        """See ``Vm.park``."""
        return await self._client._run(_api.park(self.name, remote, wait))

    async def reset(
        self, to: Optional[str] = None, timeout: Optional[int] = None
    ) -> models.ResetReport:
        """See ``Vm.reset``."""
        return await self._client._run(_api.reset(self.name, to, timeout))

    async def resume(self) -> None:
        """See ``Vm.resume``."""
        await self._client._run(_api.resume(self.name))

    async def info(self) -> models.VmInfo:
        """See ``Vm.info``."""
        for vm in await self._client.vms():
            if vm.name == self.name:
                return vm
        raise NotFound(f"no VM named {self.name}", 404)

    async def set_ttl(self, ttl: Union[float, str]) -> models.VmInfo:
        """See ``Vm.set_ttl``."""
        return await self._client._run(_api.set_ttl(self.name, ttl))

    async def stop(self) -> None:
        """See ``Vm.stop``."""
        await self._client._run(_api.stop(self.name))


class AsyncEvents:
    """``Events`` for async code: ``async with await client.events() as events:
    async for e in events: ...`` (subscribed when ``client.events()`` returns)."""

    def __init__(self, stream: Any, response: httpx.Response) -> None:
        self._stream = stream
        self._response = response
        self._lines = response.aiter_lines()

    @classmethod
    async def open(cls, client: "AsyncClient") -> "AsyncEvents":
        stream = client._http.stream("GET", _api.EVENTS_PATH, timeout=_api.EVENTS_TIMEOUT)
        try:
            response = await stream.__aenter__()
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise _api.unavailable(client.endpoint, e) from None
        if response.status_code >= 400:
            await response.aread()
            error = _api.refusal(response)
            await stream.__aexit__(None, None, None)
            raise error
        return cls(stream, response)

    def __aiter__(self) -> "AsyncEvents":
        return self

    async def __anext__(self) -> Dict[str, Any]:
        async for line in self._lines:
            event = _api.sse_event(line)
            if event is not None:
                return event
        raise StopAsyncIteration

    async def __aenter__(self) -> "AsyncEvents":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """End the subscription (closes its connection)."""
        await self._stream.__aexit__(None, None, None)


class AsyncClient:
    """``Client`` for asyncio/trio code: the same arguments and methods, awaited."""

    def __init__(
        self,
        host: Optional[str] = None,
        token: Optional[str] = None,
        ca: Optional[str] = None,
        timeout: float = 600.0,
    ) -> None:
        self.endpoint = resolve(host, token, ca)
        ep = self.endpoint
        transport = httpx.AsyncHTTPTransport(uds=ep.socket) if ep.socket else None
        self._timeout = httpx.Timeout(timeout, connect=10.0)
        self._http = httpx.AsyncClient(
            base_url=ep.base_url,
            transport=transport,
            verify=ep.verify,
            headers=_api.headers(ep),
            timeout=self._timeout,
        )

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def _run(self, call: _api.Call[T]) -> T:
        timeout = self._timeout
        if call.timeout is not None and self._timeout.read is not None:
            timeout = httpx.Timeout(max(call.timeout, self._timeout.read), connect=10.0)
        try:
            response = await self._http.request(
                call.method, call.path, json=call.body, timeout=timeout
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise _api.unavailable(self.endpoint, e) from None
        return _api.answer(call, response)

    async def _exec(
        self, call: _api.StreamCall, on_stdout: Output, on_stderr: Output
    ) -> models.ExecResult:
        frames = _api.ExecFrames()
        timeout = httpx.Timeout(max(call.timeout, self._timeout.read or 0), connect=10.0)
        try:
            async with self._http.stream(
                "POST", call.path, json=call.body, timeout=timeout
            ) as r:
                if r.status_code >= 400:
                    await r.aread()
                    raise _api.refusal(r)
                async for line in r.aiter_lines():
                    piece = frames.feed(line)
                    if piece is not None:
                        callback = on_stdout if piece[0] == "stdout" else on_stderr
                        if callback is not None:
                            done = callback(piece[1])
                            if inspect.isawaitable(done):
                                await done
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise _api.unavailable(self.endpoint, e) from None
        return frames.result()

    async def _send(self, method: str, path: str, content: Optional[bytes]) -> Any:
        try:
            r = await self._http.request(method, path, content=content)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise _api.unavailable(self.endpoint, e) from None
        if r.status_code >= 400:
            raise _api.refusal(r)
        return r.content

    async def health(self) -> models.Health:
        return await self._run(_api.health())

    async def vms(self, labels: Optional[Mapping[str, str]] = None) -> List[models.VmInfo]:
        return await self._run(_api.vms(labels))

    async def events(self) -> AsyncEvents:
        """See ``Client.events``."""
        return await AsyncEvents.open(self)

    def vm(self, name: str) -> AsyncVm:
        return AsyncVm(self, name)

    async def snapshots(self) -> List[models.SnapshotInfo]:
        return await self._run(_api.snapshots())

    async def remove_snapshot(self, tag: str, recursive: bool = False) -> List[str]:
        return await self._run(_api.remove_snapshot(tag, recursive))

    async def parked(self) -> List[models.ParkRecord]:
        return await self._run(_api.parked())

    async def wake(
        self, name: str, from_: Optional[str] = None, timeout: Optional[int] = None
    ) -> AsyncVm:
        """See ``Client.wake``."""
        report = await self._run(_api.wake(name, from_, timeout))
        return AsyncVm(self, report.name, report)

    async def pools(self) -> List[models.PoolStatus]:
        return await self._run(_api.pools())

    async def set_pool(
        self, tag: str, size: int, mode: str = "running", warm_ports: Optional[bool] = None
    ) -> models.PoolStatus:
        return await self._run(_api.set_pool(tag, size, mode, warm_ports))

    async def boot(self, name: str, **options: Any) -> AsyncVm:
        report = await self._run(_api.boot(name, options))
        return AsyncVm(self, report.name, report)

    async def restore(
        self,
        tag: str,
        name: Optional[str] = None,
        ttl: Union[float, str, None] = None,
        labels: Optional[Mapping[str, str]] = None,
        **options: Any,
    ) -> AsyncVm:
        """See ``Client.restore``."""
        report = await self._run(_api.restore(tag, name, ttl, labels, options))
        return AsyncVm(self, report.name, report)


__all__ = ["AsyncClient", "AsyncVm", "AsyncFiles", "AsyncEvents"]
