"""The main path against the live daemon, over the Unix socket and over TLS with a token."""

from __future__ import annotations

import os
import uuid
from typing import List

import pytest

from thaw_client import Client, ExecTimeout, NotFound, ThawError

from .conftest import Base, Daemon, empty_pool, wait_for_pool, wait_until

BINARY = b"\xff\x00\x01binary\n\x80"
SCRIPT = r"printf '\377\000\001binary\n\200'; printf 'to stderr' >&2; exit 3"


def names(client: Client) -> List[str]:
    return [vm.name for vm in client.vms()]


def test_boot_and_snapshot_through_the_sdk(daemon: Daemon, base: Base) -> None:
    assert base.boot.name == "sdk-base" and base.boot.boot_ms > 0
    assert base.snapshot.tag == base.tag and base.snapshot.ram_bytes > 0
    # Kept once, in the store (no `pin`).
    assert base.snapshot.pinned is False
    with daemon.client() as c:
        (snap,) = [s for s in c.snapshots() if s.tag == base.tag]
        assert snap.source_vm == "sdk-base" and snap.problem is None
        assert "sdk-base" not in names(c), "a snapshot with stop=True ends the VM"


def test_restore_exec_and_stop(client: Client, base: Base) -> None:
    vm = client.restore(base.tag)
    assert vm.report.breakdown.source in ("pool", "spawn")
    (info,) = [v for v in client.vms() if v.name == vm.name]
    assert info.state == "running" and info.origin is not None
    assert info.origin.snapshot == base.tag
    out: List[bytes] = []
    err: List[bytes] = []
    result = vm.exec(["sh", "-c", SCRIPT], on_stdout=out.append, on_stderr=err.append)
    assert (result.exit_code, result.stdout, result.stderr) == (3, BINARY, b"to stderr")
    assert (b"".join(out), b"".join(err)) == (BINARY, b"to stderr")
    vm.stop()
    assert vm.name not in names(client)


def test_named_clone_snapshot_and_reset(client: Client, base: Base) -> None:
    with client.restore(base.tag, name=f"reset-{client.endpoint.socket is None}") as vm:
        assert vm.name.startswith("reset-")
        vm.exec(["sh", "-c", "echo before > /tmp/mark"])
        report = vm.reset()
        assert (report.name, report.snapshot) == (vm.name, base.tag)
        gone = vm.exec(["cat", "/tmp/mark"])
        assert gone.exit_code != 0, "reset goes back to the snapshot: the file is gone"


def test_context_manager_stops_the_vm_also_on_exception(client: Client, base: Base) -> None:
    with pytest.raises(RuntimeError, match="inside"):
        with client.restore(base.tag) as vm:
            name = vm.name
            assert name in names(client)
            raise RuntimeError("inside the block")
    assert name not in names(client)


def test_pool_gives_ready_clones(daemon: Daemon, base: Base) -> None:
    with daemon.client() as c:
        status = c.set_pool(base.tag, 1, mode="running")
        assert (status.tag, status.size, status.mode) == (base.tag, 1, "running")
        try:
            wait_for_pool(c, base.tag, 1)
            with c.restore(base.tag) as vm:
                assert vm.report.breakdown.source == "pool"
                assert vm.exec(["true"]).exit_code == 0
        finally:
            empty_pool(c, base.tag)


class Stop(Exception):
    pass


def test_exec_streams_and_a_callback_that_raises_ends_the_command(
    client: Client, base: Base
) -> None:
    """The first line arrives while the command still runs: the callback raises then,
    the client hangs up, and the guest command is killed before it could finish (its
    last act, writing /tmp/after, never happens). Buffered output would arrive only
    after that file was written."""
    script = (
        "rm -f /tmp/after; echo first; i=0; "
        "while [ $i -lt 30 ]; do sleep 0.2; echo tick; i=$((i+1)); done; "
        "echo done > /tmp/after"
    )
    seen: List[bytes] = []

    def on_stdout(data: bytes) -> None:
        seen.append(data)
        raise Stop()

    with client.restore(base.tag) as vm:
        with pytest.raises(Stop):
            vm.exec(["sh", "-c", script], on_stdout=on_stdout)
        assert seen[0].startswith(b"first\n")
        # Longer than the command would have needed to finish.
        later = vm.exec(["sh", "-c", "sleep 8; [ -e /tmp/after ] && echo ran || echo killed"])
        assert later.stdout == b"killed\n"


def test_exec_stdin_env_cwd_and_timeout(client: Client, base: Base) -> None:
    with client.restore(base.tag) as vm:
        data = bytes(range(256)) * 1000
        r = vm.exec(["cat"], stdin=data)
        assert (r.exit_code, r.stdout) == (0, data)
        r = vm.exec(["sh", "-c", 'echo "$A|$B|$PWD"'], env={"A": "1", "B": "x y"}, cwd="/proc")
        assert r.stdout == b"1|x y|/proc\n"
        with pytest.raises(ExecTimeout, match="timed out after 2 s; the guest process was killed"):
            vm.exec(["sh", "-c", "echo $$ > /tmp/pid; exec sleep 100"], timeout=2)
        gone = vm.exec(["sh", "-c", "[ -e /proc/$(cat /tmp/pid) ] && echo alive || echo gone"])
        assert gone.stdout == b"gone\n"
        with pytest.raises(ThawError, match="no directory /nope in the guest"):
            vm.exec(["true"], cwd="/nope")


def test_files_write_and_read(client: Client, base: Base) -> None:
    with client.restore(base.tag) as vm:
        data = os.urandom(3 << 20)
        vm.files.write("/tmp/blob", data, mode=0o600)
        assert vm.exec(["stat", "-c", "%a %s", "/tmp/blob"]).stdout == b"600 3145728\n"
        assert vm.files.read("/tmp/blob") == data
        with pytest.raises(NotFound, match="no such file in the guest: /tmp/none"):
            vm.files.read("/tmp/none")
        with pytest.raises(ThawError, match="is a directory"):
            vm.files.read("/tmp")


def test_ttl_and_labels(client: Client, base: Base) -> None:
    mine = {"sdk-run": uuid.uuid4().hex}
    vm = client.restore(base.tag, ttl=600, labels=mine)
    info = vm.info()
    assert info.labels == mine
    assert info.expires_in_secs is not None and 0 < info.expires_in_secs <= 600
    assert [v.name for v in client.vms(labels=mine)] == [vm.name]
    assert client.vms(labels={"sdk-run": "none-has-this"}) == []
    assert vm.set_ttl("1s").expires_in_secs in (0, 1)
    wait_until(f"{vm.name} to expire", lambda: vm.name not in names(client))
    with pytest.raises(ThawError, match="bad ttl") as e:
        client.restore(base.tag, ttl="soon")
    assert e.value.status == 400
    with pytest.raises(ThawError, match="bad label key") as e:
        client.restore(base.tag, labels={"a b": "1"})
    assert e.value.status == 400


def test_park_and_wake_here(client: Client, base: Base) -> None:
    name = f"park-{uuid.uuid4().hex[:8]}"
    vm = client.restore(base.tag, name=name)
    vm.exec(["sh", "-c", "echo parked-word > /tmp/word"])
    parked = vm.park()
    assert (parked.name, parked.snapshot.tag, parked.park.state) == (name, name, "parked")
    assert parked.operation is None and parked.park.remote is None
    assert name not in names(client), "park ends the VM"
    assert [p.state for p in client.parked() if p.name == name] == ["parked"]
    with pytest.raises(NotFound):
        client.wake(f"never-{name}")
    with client.wake(name) as woken:
        assert woken.name == name
        assert woken.exec(["cat", "/tmp/word"]).stdout == b"parked-word\n"
        assert name not in [p.name for p in client.parked()], "wake clears the record"
    client.remove_snapshot(name)
