"""The pytest plugin: the example suite of 20 tests, the marker, and cleanup on failure."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from .conftest import Base, Daemon, empty_pool, wait_for_pool

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def plugin_env(daemon: Daemon) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THAW_")}
    env["THAW_HOST"] = daemon.unix
    return env


def test_the_plugin_is_registered_for_pytest() -> None:
    eps = entry_points()
    group = eps.select(group="pytest11") if hasattr(eps, "select") else eps.get("pytest11", [])
    assert "thaw_client.pytest_plugin" in [ep.value for ep in group], (
        "install the package: python3 -m pip install './clients/python[test]'"
    )


def test_example_suite_gets_a_fresh_clone_per_test(daemon: Daemon, base: Base) -> None:
    with daemon.client() as c:
        c.set_pool(base.tag, 4)
        try:
            wait_for_pool(c, base.tag, 4)
            start = time.monotonic()
            run = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLES)],
                cwd=EXAMPLES,
                env=plugin_env(daemon),
                capture_output=True,
                text=True,
                timeout=600,
            )
            print(f"example suite (pool of 4): {time.monotonic() - start:.1f} s")
        finally:
            empty_pool(c, base.tag)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "20 passed" in run.stdout
        left = [vm.name for vm in c.vms() if vm.name.startswith("test_each_test")]
        assert left == [], "the fixture stops every clone"


def test_marker_picks_the_snapshot_and_a_failing_test_still_stops_its_clone(
    daemon: Daemon, base: Base, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k in [k for k in os.environ if k.startswith("THAW_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("THAW_HOST", daemon.unix)
    names = pytester.path / "names"
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.thaw(snapshot="{base.tag}")
        def test_fails_inside_a_clone(thaw_vm):
            open({str(names)!r}, "a").write(thaw_vm.name + "\\n")
            assert thaw_vm.exec(["true"]).exit_code == 0
            assert False, "on purpose"

        def test_without_a_snapshot(thaw_vm):
            pass
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, errors=1)
    result.stdout.fnmatch_lines(["*thaw_vm needs a snapshot: mark the test*"])
    (name,) = names.read_text().split()
    assert name.startswith("test_fails_inside_a_clone-")
    with daemon.client() as c:
        assert name not in [vm.name for vm in c.vms()]


def test_unknown_snapshot_fails_the_test_in_one_line(
    daemon: Daemon, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THAW_HOST", daemon.unix)
    pytester.makeini("[pytest]\nthaw_snapshot = no-such-snapshot\n")
    pytester.makepyfile("def test_x(thaw_vm):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*thaw: cannot restore a clone of 'no-such-snapshot': no snapshot tagged "
            "no-such-snapshot (HTTP 404)*"
        ]
    )
    assert "During handling" not in result.stdout.str()
