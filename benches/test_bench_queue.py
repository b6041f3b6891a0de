"""The queue runner's pick with 1,000 and with 100,000 messages queued.

A pick asks the queue for the messages whose next attempt is due (an index
scan on ``messages.next_attempt``). Here almost every message waits for a
later retry and QUEUE_RUN_MAX of them are due: the pick must cost the same
whatever the number waiting, and a delivery run over the big queue must not
need more memory than over the small one. ``benches/report.py`` prints the
pick times side by side and the memory figures.
"""

from __future__ import annotations

import asyncio
import os
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smtpedge import Config
from smtpedge.delivery.runner import QueueRunner
from smtpedge.esmtp import MailParams, Recipient
from smtpedge.queue import Queue, make_record

SIZES = [1_000, int(os.environ.get("BENCH_QUEUE_BIG", "100000"))]
DUE = 50
CONTENT = b"Subject: queued\r\n\r\n" + b"x" * 1500 + b"\r\n"


def fill(directory: Path, count: int, due: int) -> None:
    """``count`` messages to a local user, all but ``due`` of them waiting
    for a retry an hour away."""
    queue = Queue(directory)
    try:
        later = time.time() + 3600
        batch = 5000
        for start in range(0, count, batch):
            records = [make_record("bench@example.org", [Recipient("root@localhost")], CONTENT,
                                   MailParams(), (), {})
                       for _ in range(min(batch, count - start))]  # fmt: skip
            failed = queue._add_many(records)
            assert not failed, failed
        queue.make_due(None, later)
        for qid in queue.due(later, due):
            queue.make_due(qid, 0.0)
    finally:
        queue.close()


@pytest.fixture(scope="module", params=SIZES, ids=[f"{n}-queued" for n in SIZES])
def filled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[int, Path]]:  # fmt: skip
    count: int = request.param
    directory = tmp_path_factory.mktemp(f"queue-{count}")
    fill(directory, count, DUE)
    yield count, directory


def test_runner_pick(benchmark: Any, filled: tuple[int, Path]) -> None:
    count, directory = filled
    benchmark.group = "queue runner pick"
    benchmark.extra_info["queued"] = count
    queue = Queue(directory)
    try:
        assert len(queue) == count
        now = time.time()
        ids = benchmark(queue.due, now, DUE)
        assert len(ids) == DUE
    finally:
        queue.close()


def test_runner_memory(benchmark: Any, tmp_path: Path) -> None:
    """Deliver DUE messages to a maildir with 1,000 and with 100,000 waiting
    beside them; Python's allocation peak of each run (SQLite's own page
    cache is bounded apart from this, by its cache_size)."""
    peaks = {}
    for count in [10, *SIZES]:  # the first run pays for lazy imports and caches
        directory = tmp_path / str(count)
        fill(directory, count, DUE)
        config = Config.from_mapping({"spool_directory": str(directory)})

        async def run(config: Config) -> int:
            runner = QueueRunner(config)
            try:
                return await runner.run_once()
            finally:
                await runner.close()

        tracemalloc.start()
        taken = asyncio.run(run(config))
        peaks[count] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert taken == min(DUE, count)
        queue = Queue(directory)
        assert len(queue) == count - min(DUE, count)
        queue.close()
    small, big = SIZES
    benchmark.group = "queue runner memory"
    benchmark.extra_info.update({f"peak_mb_{n}": peaks[n] / 2**20 for n in SIZES})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\nrunner peak allocation: {peaks[small] / 2**20:.2f} MB with {small} queued, "
          f"{peaks[big] / 2**20:.2f} MB with {big} queued")  # fmt: skip
    assert peaks[big] < 2 * peaks[small] + 2**20, peaks
