"""Typed answers of the thawd API (docs/openapi.json).

Every model names its schema in ``SCHEMA``; a field's JSON key is its name unless its
metadata says ``json``. ``tests/test_models.py`` checks each field against the schema, so
a change of the API that the models do not follow fails there. Fields the daemon adds
later are ignored; optional fields missing from an answer are ``None``.
"""

from __future__ import annotations

import base64
import dataclasses

from dataclasses import dataclass, field
from typing import (
    Any,
    ClassVar,
    Dict,
    List,
    Optional,
    Type,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)


T = TypeVar("T")


def json_key(f: dataclasses.Field) -> str:  # type: ignore[type-arg]
    """The JSON key a model field reads."""
    return str(f.metadata.get("json", f.name))


def _decode(tp: Any, value: Any) -> Any:
    origin = get_origin(tp)
    if origin is Union:
        if value is None:
            return None
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        return _decode(inner, value)
    if origin in (list, List):
        (item,) = get_args(tp)
        return [_decode(item, v) for v in value]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_json(tp, value)
    if tp is bytes:
        return base64.b64decode(value)
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def from_json(cls: Type[T], data: Dict[str, Any]) -> T:
    """Build model ``cls`` from a decoded JSON object."""
    hints = get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        kwargs[f.name] = _decode(hints[f.name], data.get(json_key(f)))
    return cls(**kwargs)


@dataclass(frozen=True)
class PortForward:
    """A host port (on 127.0.0.1) forwarded to a guest TCP port."""

    SCHEMA: ClassVar[str] = "PortForward"
    host: int
    guest: int


@dataclass(frozen=True)
class VncPorts:
    """Where a VM's display listens."""

    SCHEMA: ClassVar[str] = "VncPorts"
    port: int
    websocket: Optional[int]


@dataclass(frozen=True)
class Origin:
    """How a VM came to be: ``booted``, or ``restored`` from ``snapshot``."""

    SCHEMA: ClassVar[str] = "Origin"
    kind: str
    snapshot: Optional[str]


@dataclass(frozen=True)
class Health:
    """``GET /v1/health``."""

    SCHEMA: ClassVar[str] = "Health"
    status: str
    version: str
    pid: int
    vms: int


@dataclass(frozen=True)
class VmInfo:
    """A VM as ``GET /v1/vms`` lists it (``state``: running, paused, dead, unresponsive)."""

    SCHEMA: ClassVar[str] = "VmInfo"
    name: str
    pid: Optional[int]
    state: str
    qemu_status: Optional[str]
    origin: Optional[Origin]
    memory_mib: Optional[int]
    cpus: Optional[int]
    created_unix_ms: Optional[int]
    ports: List[PortForward]
    vnc: Optional[VncPorts]
    labels: Dict[str, str]
    expires_unix_ms: Optional[int]
    expires_in_secs: Optional[int]
    """Seconds left of its time to live; ``None`` without one."""


@dataclass(frozen=True)
class BootReport:
    """A booted VM, once its guest is ready."""

    SCHEMA: ClassVar[str] = "BootReport"
    name: str
    pid: int
    boot_ms: float
    ports: List[PortForward]
    vnc: Optional[VncPorts]


@dataclass(frozen=True)
class Breakdown:
    """Where a restore's time went, in ms; ``source`` is ``pool`` or ``spawn``."""

    SCHEMA: ClassVar[str] = "Breakdown"
    source: str
    spawn_ms: float
    take_ms: float
    state_load_ms: float
    resume_ms: float
    agent_ms: float
    agent_sync_ms: Optional[float]
    clock_ms: Optional[float]
    #: ``port`` (the guest's clock channel) or ``agent`` (qemu-ga).
    clock_via: Optional[str]
    check_ms: Optional[float]


@dataclass(frozen=True)
class RestoreReport:
    """A clone, once ready: the answer of a restore."""

    SCHEMA: ClassVar[str] = "CloneReport"
    name: str
    pid: int
    restore_ms: float
    ready_ms: float
    ports: List[PortForward]
    breakdown: Breakdown
    vnc: Optional[VncPorts]
    paused: Optional[bool]


@dataclass(frozen=True)
class ResetReport(RestoreReport):
    """A VM put back to ``snapshot``, same name and host ports: the clone's report and
    the snapshot (as the API's ``ResetReport`` extends ``CloneReport``)."""

    SCHEMA: ClassVar[str] = "ResetReport"
    snapshot: str


@dataclass(frozen=True)
class SnapshotReport:
    """A snapshot just taken."""

    SCHEMA: ClassVar[str] = "SnapshotReport"
    tag: str
    pause_ms: float
    state_bytes: int
    ram_bytes: int
    ram_copy: str
    parent: Optional[str]
    total_ms: float
    stored_added_bytes: Optional[int]
    store_bytes: Optional[int]
    pinned: Optional[bool]


@dataclass(frozen=True)
class Uploaded:
    """What a parked VM's finished upload did."""

    SCHEMA: ClassVar[str] = "Uploaded"
    chunks_moved: int
    chunks_present: int
    bytes_moved: int
    file_bytes: int


@dataclass(frozen=True)
class ParkRecord:
    """A parked VM and where its upload is (``state``: ``parking``, ``pushing``,
    ``parked`` or ``failed``, with ``error``)."""

    SCHEMA: ClassVar[str] = "ParkRecord"
    name: str
    tag: str
    state: str
    remote: Optional[str]
    bytes_done: int
    bytes_total: int
    error: Optional[str]
    upload: Optional[Uploaded]
    worker_pid: Optional[int]
    parked_at: int
    updated_at: int


@dataclass(frozen=True)
class Parked:
    """The answer of a park: the snapshot taken with the VM stopped, the park record and,
    while the upload runs in the background, its operation's id."""

    SCHEMA: ClassVar[str] = "Parked"
    name: str
    snapshot: SnapshotReport
    park: ParkRecord
    operation: Optional[str]


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot as ``GET /v1/snapshots`` lists it (``problem``: why it cannot restore)."""

    SCHEMA: ClassVar[str] = "SnapshotInfo"
    tag: str
    created_unix_ms: Optional[int]
    source_vm: Optional[str]
    memory_mib: Optional[int]
    cpus: Optional[int]
    qemu_version: Optional[str]
    accel: Optional[str]
    disk_bytes: int
    problem: Optional[str]
    parent: Optional[str]
    children: List[str]
    layout: Optional[str]
    local: bool


@dataclass(frozen=True)
class PoolStatus:
    """A snapshot's warm pool: ``ready`` clones waiting, ``filling`` being started."""

    SCHEMA: ClassVar[str] = "PoolStatus"
    tag: str
    size: int
    mode: str
    warm_ports: Optional[bool]
    ready: int
    filling: int
    last_error: Optional[str]


@dataclass(frozen=True)
class ExecResult:
    """A finished command: its exit code and its output, byte-exact."""

    SCHEMA: ClassVar[str] = "ExecOutput"
    exit_code: int
    stdout: bytes = field(metadata={"json": "stdout_base64"})
    stderr: bytes = field(metadata={"json": "stderr_base64"})


MODELS = (
    PortForward,
    VncPorts,
    Origin,
    Health,
    VmInfo,
    BootReport,
    Breakdown,
    RestoreReport,
    ResetReport,
    SnapshotReport,
    SnapshotInfo,
    PoolStatus,
    ExecResult,
)
"""Every model, for the schema check."""
