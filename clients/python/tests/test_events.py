"""Events: the daemon's stream of what happens, through the SDK (sync and async)."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest

from thaw_client import AsyncClient, Client, Unauthorized

from .conftest import Base, Daemon


def until_stopped(events: Any, name: str) -> List[Dict[str, Any]]:
    """The events of VM ``name`` up to its ``vm.stopped``."""
    seen = []
    for e in events:
        if e.get("vm") == name:
            seen.append(e)
            if e["type"] == "vm.stopped":
                return seen
    raise AssertionError(f"the stream ended before {name} stopped: {seen}")


def test_events_report_a_clone_from_restore_to_stop(client: Client, base: Base) -> None:
    with client.events() as events:
        vm = client.restore(base.tag)
        vm.stop()
        seen = until_stopped(events, vm.name)
    kinds = [e["type"] for e in seen]
    assert kinds == ["vm.created", "vm.ready", "vm.stopped"], seen
    ready = seen[1]
    assert ready["source"] in ("pool", "spawn") and ready["ms"] >= 0
    assert seen[2]["reason"] == "stopped"
    ids = [e["id"] for e in seen]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert all(e["time_unix_ms"] > 0 for e in seen)


@pytest.mark.anyio
async def test_async_events_over_tls(daemon: Daemon, base: Base) -> None:
    async with AsyncClient(host=daemon.https, token=daemon.token, ca=daemon.ca) as client:
        async with await client.events() as events:
            vm = await client.restore(base.tag)
            await vm.stop()
            kinds = []
            async for e in events:
                if e.get("vm") == vm.name:
                    kinds.append(e["type"])
                    if e["type"] == "vm.stopped":
                        break
        assert kinds == ["vm.created", "vm.ready", "vm.stopped"]


def test_events_with_a_wrong_token_are_refused(daemon: Daemon) -> None:
    with Client(host=daemon.https, token="not-the-token", ca=daemon.ca) as client:
        with pytest.raises(Unauthorized):
            client.events()
