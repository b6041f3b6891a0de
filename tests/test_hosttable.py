"""Per-client state shared by worker processes."""

from __future__ import annotations

import os

import pytest

from smtpedge.config import RateLimit
from smtpedge.receiving.hosttable import LocalHostTable, SharedHostTable
from smtpedge.receiving.limits import ConnectionLimits


@pytest.mark.parametrize("make", [LocalHostTable, SharedHostTable])
def test_table_round_trip(make: type) -> None:
    t = make()
    assert t.get("192.0.2.1") is None
    t.update("192.0.2.1", 2, 1.5, 100.0)
    t.update("2001:db8::1", 1, 0.0, 0.0)
    t.update("not-an-address", 1, 0.0, 0.0)
    assert t.get("192.0.2.1") == (2, 1.5, 100.0)
    assert t.get("2001:db8::1") == (1, 0.0, 0.0)
    assert t.get("not-an-address") == (1, 0.0, 0.0)
    assert t.get("192.0.2.2") is None
    t.update("192.0.2.1", -5, 2.0, 101.0)
    assert t.get("192.0.2.1") == (0, 2.0, 101.0), "counts never go below zero"


def test_shared_table_is_shared_across_fork() -> None:
    t = SharedHostTable(slots=1024)
    limits = ConnectionLimits(0, 2, None, t)
    assert limits.admit("192.0.2.9") is None
    pid = os.fork()
    if pid == 0:  # the other worker
        ok = limits.admit("192.0.2.9") is None and limits.admit("192.0.2.9") is not None
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert limits.count("192.0.2.9") == 2
    assert limits.admit("192.0.2.9") is not None, "the child's connection counts here too"
    limits.release("192.0.2.9")
    assert limits.admit("192.0.2.9") is None


def test_shared_table_compacts_when_full() -> None:
    t = SharedHostTable(slots=64)
    t.update("10.0.0.1", 1, 0.0, 0.0)  # an open connection survives compaction
    for i in range(200):
        t.update(f"10.1.{i // 250}.{i % 250}", 0, 1.0, float(i))
    assert t.get("10.0.0.1") == (1, 0.0, 0.0)
    assert t.get("10.1.0.199") == (0, 1.0, 199.0), "the newest rates are kept"


def test_a_dead_workers_counts_are_forgotten_and_no_one_elses() -> None:
    t = SharedHostTable(slots=64, workers=3)
    for worker, n in ((0, 2), (1, 5), (2, 1)):
        t.worker = worker
        t.update("192.0.2.7", n, 0.5, 9.0)
    assert t.get("192.0.2.7") == (8, 0.5, 9.0)
    t.forget_worker(1)
    assert t.get("192.0.2.7") == (3, 0.5, 9.0), "the survivors' connections still count"
    t.worker = 1  # the worker started in its place counts from zero
    t.update("192.0.2.7", -1, 0.5, 9.0)
    assert t.get("192.0.2.7") == (3, 0.5, 9.0)


def test_a_lock_holder_killed_mid_update_does_not_wedge_the_table() -> None:
    t = SharedHostTable(slots=64)
    pid = os.fork()
    if pid == 0:
        t.lock.__enter__()
        os.kill(os.getpid(), 9)  # dies holding the lock
    os.waitpid(pid, 0)
    with t.lock:  # the kernel released it
        t.update("192.0.2.8", 1, 0.0, 0.0)
    assert t.get("192.0.2.8") == (1, 0.0, 0.0)


def test_shared_ratelimit() -> None:
    t = SharedHostTable(slots=1024)
    limits = ConnectionLimits(0, 0, RateLimit(2, 60, True), t)
    assert limits.admit("192.0.2.5") is None
    limits.release("192.0.2.5")
    assert limits.admit("192.0.2.5") is None
    refusal = limits.admit("192.0.2.5")
    assert refusal is not None and "rate" in refusal


def test_the_lock_excludes_other_workers() -> None:
    """Workers that read, change and write back the same entry under the lock
    lose no update: the lock excludes across processes."""
    t = SharedHostTable(slots=64, workers=2)
    t.update("192.0.2.3", 0, 0.0, 1.0)
    rounds = 3000
    pids = []
    for worker in (0, 1):
        pid = os.fork()
        if pid == 0:
            t.worker = worker
            for _ in range(rounds):
                with t.lock:
                    state = t.get("192.0.2.3")
                    assert state is not None
                    t.update("192.0.2.3", 1, state[1] + 1.0, 1.0)
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert t.get("192.0.2.3") == (2 * rounds, 2.0 * rounds, 1.0)
