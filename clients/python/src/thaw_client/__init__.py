"""thaw's Python client: drive thawd (boot, snapshot, restore, exec, pools) from code.

    from thaw_client import Client

    client = Client()                      # THAW_HOST / THAW_TOKEN / THAW_CA, or the local socket
    with client.restore("base") as vm:     # a fresh clone, stopped when the block ends
        print(vm.exec(["uname", "-a"]).stdout.decode())

``AsyncClient`` offers the same, awaited. The pytest plugin (``thaw_client.pytest_plugin``,
registered as ``thaw``) gives each test a fresh clone as the ``thaw_vm`` fixture.
"""

from .aio import AsyncClient, AsyncEvents, AsyncVm
from .client import Client, Events, Files, Vm
from .errors import DaemonUnavailable, ExecTimeout, NotFound, ThawError, Unauthorized
from .models import (
    BootReport,
    Breakdown,
    ExecResult,
    Health,
    Parked,
    ParkRecord,
    PoolStatus,
    PortForward,
    ResetReport,
    RestoreReport,
    SnapshotInfo,
    SnapshotReport,
    VmInfo,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncEvents",
    "Events",
    "AsyncVm",
    "BootReport",
    "Breakdown",
    "Client",
    "DaemonUnavailable",
    "ExecResult",
    "Files",
    "Health",
    "NotFound",
    "Parked",
    "ParkRecord",
    "PoolStatus",
    "PortForward",
    "ResetReport",
    "RestoreReport",
    "SnapshotInfo",
    "SnapshotReport",
    "ThawError",
    "ExecTimeout",
    "Unauthorized",
    "Vm",
    "VmInfo",
]
