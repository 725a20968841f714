"""Twenty tiny tests, each in its own fresh clone of the ``base`` snapshot.

Each test checks it got a clone nobody used before it: its own name, and no trace of
what the previous tests wrote in their guests.
"""

import pytest

SEEN = []
MARK = "/tmp/thaw-example-mark"


@pytest.mark.parametrize("n", range(20))
def test_each_test_gets_a_fresh_clone(thaw_vm, n):
    assert thaw_vm.name not in SEEN
    SEEN.append(thaw_vm.name)

    before = thaw_vm.exec(["cat", MARK])
    assert before.exit_code != 0, f"{MARK} left by an earlier test: {before.stdout!r}"

    wrote = thaw_vm.exec(["sh", "-c", f"echo {thaw_vm.name} > {MARK} && cat {MARK}"])
    assert (wrote.exit_code, wrote.stdout) == (0, f"{thaw_vm.name}\n".encode())
