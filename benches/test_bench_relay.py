"""Relay throughput: smtp-source into an MTA that relays everything to one
smarthost, Postfix's smtp-sink; smtpedge (``manualroute``, the queue runner
inside ``smtpedge serve``) against Postfix (``default_transport`` to the same
sink), both durable, on the same machine in one run.

Each round sends RELAY_MESSAGES messages of 2 KB over 20 reused sessions and
ends when the sink has taken them all, so the time covers the whole path:
accept, queue, deliver. ``benches/report.py`` prints messages per second and
the ratio. Also here: the queue runner alone (``QueueRunner.run_once`` in
this process, the way ``smtpedge queue run`` works) draining a filled queue
into the sink, with its CPU time per delivery.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from procs import Postfix, Sink, cpu_seconds, run_source, smtpedge
from smtpedge import Config
from smtpedge.delivery.runner import QueueRunner
from smtpedge.esmtp import MailParams, Recipient
from smtpedge.queue import Queue, make_record

MESSAGES = int(os.environ.get("BENCH_RELAY_MESSAGES", "2000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CONTENT = b"Subject: relayed\r\n\r\n" + b"x" * 2000 + b"\r\n"


def router(port: int) -> dict[str, Any]:
    return {"name": "smarthost", "driver": "manualroute", "domains": ["! +local_domains"],
            "route_data": [f"[127.0.0.1]:{port}"], "transport": "remote_smtp"}  # fmt: skip


def router_toml(port: int) -> str:
    return ('[[routers]]\nname = "smarthost"\ndriver = "manualroute"\n'
            'domains = ["! +local_domains"]\n'
            f'route_data = ["[127.0.0.1]:{port}"]\ntransport = "remote_smtp"\n')  # fmt: skip


@pytest.fixture(params=["smtpedge", "postfix"])
def relay(request: pytest.FixtureRequest) -> Iterator[tuple[str, int, Sink, list[int]]]:
    name: str = request.param
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as d:
        tmp = Path(d)
        sink = Sink(tmp)
        try:
            if name == "smtpedge":
                edge = smtpedge(tmp, router_toml(sink.port), event_loop="asyncio")
                try:
                    yield name, edge.port, sink, [edge.proc.pid]
                finally:
                    edge.stop()
            else:
                with Postfix(next_hop=("127.0.0.1", sink.port)) as postfix:
                    yield name, postfix.port, sink, [postfix.proc.pid]
        finally:
            sink.stop()


def test_relay_throughput(benchmark: Any, relay: tuple[str, int, Sink, list[int]]) -> None:
    _, port, sink, pids = relay

    def one_round() -> None:
        target = sink.received() + MESSAGES
        run_source(port, MESSAGES, reuse=True)
        sink.wait_received(target)

    benchmark.group = "relay through the whole path"
    benchmark.extra_info["messages"] = MESSAGES
    cpu0 = cpu_seconds(pids)
    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    cpu = cpu_seconds(pids) - cpu0
    benchmark.extra_info["server_cpu_us_per_message"] = cpu / (MESSAGES * ROUNDS) * 1e6
    assert sink.received() == MESSAGES * ROUNDS


def test_queue_run(benchmark: Any, tmp_path: Path) -> None:
    """The queue runner alone: RELAY_MESSAGES queued messages delivered to
    the sink, its CPU time (every thread of this process) per delivery."""
    sink = Sink(tmp_path)
    config = Config.from_mapping({"spool_directory": str(tmp_path / "data"),
                                  "routers": [router(sink.port)]})  # fmt: skip
    cpu: list[float] = []

    def fill() -> tuple[tuple[Any, ...], dict[str, Any]]:
        queue = Queue(config.spool_path)
        try:
            records = [make_record("bench@example.org", [Recipient("sink@example.net")], CONTENT,
                                   MailParams(), (), {}) for _ in range(MESSAGES)]  # fmt: skip
            assert not queue._add_many(records)
        finally:
            queue.close()
        return (), {}

    async def drain() -> int:
        runner = QueueRunner(config)
        try:
            return await runner.run_once()
        finally:
            await runner.close()

    def run() -> None:
        before = time.process_time()
        assert asyncio.run(drain()) == MESSAGES
        cpu.append(time.process_time() - before)

    try:
        benchmark.group = "queue runner, deliveries"
        benchmark.extra_info["messages"] = MESSAGES
        benchmark.pedantic(run, setup=fill, rounds=ROUNDS, iterations=1)
        assert sink.received() == MESSAGES * ROUNDS
        queue = Queue(config.spool_path)
        assert len(queue) == 0
        queue.close()
    finally:
        sink.stop()
    benchmark.extra_info["runner_cpu_us_per_delivery"] = sum(cpu) / (MESSAGES * ROUNDS) * 1e6
