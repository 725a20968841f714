"""AsyncClient: the main path, over TLS with a token."""

from __future__ import annotations

import pytest

from thaw_client import AsyncClient, NotFound

from .conftest import Base, Daemon
from .test_client import BINARY, SCRIPT


@pytest.mark.anyio
async def test_async_restore_exec_and_stop(daemon: Daemon, base: Base) -> None:
    async with AsyncClient(host=daemon.https, token=daemon.token, ca=daemon.ca) as client:
        assert (await client.health()).status == "ok"
        got = []

        async def on_stdout(data: bytes) -> None:
            got.append(data)

        async with await client.restore(base.tag) as vm:
            result = await vm.exec(["sh", "-c", SCRIPT], on_stdout=on_stdout)
            assert (result.exit_code, result.stdout, result.stderr) == (3, BINARY, b"to stderr")
            assert b"".join(got) == BINARY
            await vm.files.write("/tmp/a", b"async bytes", mode=0o640)
            assert await vm.files.read("/tmp/a") == b"async bytes"
            st = await vm.exec(["stat", "-c", "%a", "/tmp/a"])
            assert st.stdout == b"640\n"
            assert (await vm.info()).origin.snapshot == base.tag
        with pytest.raises(NotFound):
            await vm.info()
        with pytest.raises(NotFound, match="no snapshot tagged nope"):
            await client.restore("nope")
