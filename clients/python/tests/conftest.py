"""A live thawd for the SDK's tests: one daemon per session in a private $THAW_HOME,
serving the Unix socket and TCP with TLS (a CA and certificate made here with openssl) and
a bearer token; a ``base`` snapshot of the default guest booted once through the SDK.

thawd is ``$THAW_THAWD``, else ``target/debug/thawd`` of this repository, else on PATH.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from thaw_client import Client, DaemonUnavailable, SnapshotReport, ThawError
from thaw_client.models import BootReport

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[3]
BASE = "base"
"""The snapshot every test clones."""
DEADLINE = 180.0
"""Seconds before a wait is taken for a deadlock (a guard, not a timing assertion)."""


def thawd_binary() -> str:
    if os.environ.get("THAW_THAWD"):
        return os.environ["THAW_THAWD"]
    built = REPO / "target" / "debug" / "thawd"
    if built.exists():
        return str(built)
    found = shutil.which("thawd")
    if found is None:
        pytest.fail(
            "thawd not found: set THAW_THAWD, or build it (cargo build -p thaw-daemon)",
            pytrace=False,
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certificates(d: Path) -> Path:
    """A private CA and a certificate it signs for 127.0.0.1/localhost; returns the CA."""
    openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=thaw-sdk-test-ca",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.pem"),
    )
    openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        str(d / "key.pem"),
        "-out",
        str(d / "req.csr"),
    )
    (d / "ext.cnf").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    openssl(
        "x509",
        "-req",
        "-in",
        str(d / "req.csr"),
        "-CA",
        str(d / "ca.pem"),
        "-CAkey",
        str(d / "ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(d / "ext.cnf"),
        "-out",
        str(d / "cert.pem"),
    )
    return d / "ca.pem"


@dataclass
class Daemon:
    home: Path
    socket: Path
    https: str
    token: str
    ca: str
    log: Path
    process: subprocess.Popen

    @property
    def unix(self) -> str:
        return f"unix://{self.socket}"

    def client(self, transport: str = "unix") -> Client:
        if transport == "unix":
            return Client(host=self.unix)
        return Client(host=self.https, token=self.token, ca=self.ca)

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])


def wait_until(what: str, ready, daemon: "Daemon | None" = None, state=lambda: "") -> None:
    """Poll ``ready`` until true; ``state`` says what was seen when giving up."""
    start = time.monotonic()
    while not ready():
        if daemon is not None and daemon.process.poll() is not None:
            pytest.fail(f"thawd exited while waiting for {what}:\n{daemon.log_tail()}")
        if time.monotonic() - start > DEADLINE:
            pytest.fail(f"gave up waiting for {what} after {DEADLINE:.0f} s {state()}")
        time.sleep(0.1)


def empty_pool(client: Client, tag: str) -> None:
    """Empty the pool of ``tag`` and wait until no clone is being prepared for it.

    thawd counts a fill started before a reconfiguration towards the new size, then
    discards it without a replacement: a pool emptied and resized at once can stay one
    short. Waiting here keeps one test's pool from shortening the next test's.
    """
    client.set_pool(tag, 0)
    wait_until(
        f"the pool of {tag} to be idle",
        lambda: all(p.ready == 0 and p.filling == 0 for p in client.pools() if p.tag == tag),
        state=lambda: str(client.pools()),
    )


def wait_for_pool(client: Client, tag: str, ready: int) -> None:
    """Until ``ready`` clones of ``tag`` wait in its pool."""
    wait_until(
        f"{ready} ready clones in the pool of {tag}",
        lambda: any(p.tag == tag and p.ready >= ready for p in client.pools()),
        state=lambda: str(client.pools()),
    )


def _answers(daemon: Daemon) -> bool:
    try:
        with daemon.client("unix") as c:
            c.health()
        return True
    except DaemonUnavailable:
        return False


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = tmp_path_factory.mktemp("thawd")
    ca = make_certificates(d)
    token = secrets.token_urlsafe(24)
    tokens = d / "tokens"
    tokens.write_text(f"sdk:{hashlib.sha256(token.encode()).hexdigest()}\n")
    tokens.chmod(0o600)
    home = d / "home"
    home.mkdir()
    port = free_port()
    log = d / "thawd.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("THAW_")}
    env.update(THAW_HOME=str(home), THAW_LOG="info")
    for k in ("THAW_CACHE", "THAW_QEMU"):
        if os.environ.get(k):
            env[k] = os.environ[k]
    argv = [
        thawd_binary(),
        "--listen",
        f"127.0.0.1:{port}",
        "--tls-cert",
        str(d / "cert.pem"),
        "--tls-key",
        str(d / "key.pem"),
        "--tokens",
        str(tokens),
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=out)
    daemon = Daemon(
        home, home / "thawd.sock", f"https://127.0.0.1:{port}", token, str(ca), log, process
    )
    try:
        wait_until("thawd's socket", lambda: _answers(daemon), daemon)
        yield daemon
    finally:
        _shutdown(daemon)


def _shutdown(daemon: Daemon) -> None:
    """Stop every VM the daemon answers for (they outlive it otherwise), then thawd."""
    if daemon.process.poll() is None:
        try:
            with daemon.client() as c:
                for p in c.pools():
                    c.set_pool(p.tag, 0)
                for vm in c.vms():
                    c.vm(vm.name).stop()
        except ThawError as e:
            print(f"cleaning up thawd's VMs failed: {e}")
        daemon.process.send_signal(signal.SIGTERM)
        try:
            daemon.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.process.kill()
            daemon.process.wait()
    _end_lazy_server(daemon.home)


def _end_lazy_server(home: Path) -> None:
    """End the home's lazy snapshot server (restores of snapshots kept once in the
    store start it; it would exit by itself once idle) and detach its mount."""
    for pid_file in home.glob("lazy/ns-*/server.pid"):
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    subprocess.run(["umount", "-l", str(home / "lazy" / "mnt")], stderr=subprocess.DEVNULL, check=False)


@dataclass
class Base:
    """The session's snapshot, made by booting the default guest through the SDK."""

    tag: str
    boot: BootReport
    snapshot: SnapshotReport


@pytest.fixture(scope="session")
def base(daemon: Daemon) -> Base:
    with daemon.client() as c:
        vm = c.boot("sdk-base")
        report = vm.snapshot(BASE, stop=True)
        assert isinstance(vm.report, BootReport)
        return Base(BASE, vm.report, report)


@pytest.fixture(params=["unix", "tls"])
def client(request: pytest.FixtureRequest, daemon: Daemon, base: Base) -> Iterator[Client]:
    """A client of the session's daemon over the Unix socket, then over TLS with a token."""
    with daemon.client(request.param) as c:
        yield c


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
