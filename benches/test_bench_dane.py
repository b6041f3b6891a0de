"""The cost of DANE per delivery: the queue runner delivers DANE_MESSAGES
messages by MX, through the DNS lab (nsd and a validating unbound), to one
``smtpedge serve`` with a DANE-EE record, once with DANE (TLSA lookup and
chain check for every message) and once with opportunistic TLS only
(``hosts_try_dane = []``); a new connection per message in both runs
(``connection_cache_time`` is tiny), so each pays its handshake.
``benches/report.py`` prints deliveries per second and the ratio."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from procs import free_port
from smtpedge import Config
from smtpedge.delivery.runner import QueueRunner
from smtpedge.esmtp import MailParams, Recipient
from smtpedge.queue import Queue, make_record

MESSAGES = int(os.environ.get("BENCH_DANE_MESSAGES", "300"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CONTENT = b"Subject: dane\r\n\r\n" + b"x" * 2000 + b"\r\n"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    from dnslab import DNSLab
    from pki import issue, make_ca, write_pair
    from serverutil import ServeProcess

    tmp = tmp_path_factory.mktemp("dane-bench")
    ca = make_ca("bench CA", kind="ec")
    leaf = issue(ca, "mx.bench.lab", kind="ec", dns=["mx.bench.lab"])
    form = serialization.PublicFormat.SubjectPublicKeyInfo
    spki = leaf.cert.public_key().public_bytes(serialization.Encoding.DER, form)
    port = free_port()
    zone = (f"@ MX 10 mx\nmx A 127.0.0.61\n"
            f"_{port}._tcp.mx TLSA 3 1 1 {hashlib.sha256(spki).hexdigest()}\n")  # fmt: skip
    with DNSLab({"bench.lab": (zone, "signed")}) as dns:
        cert, key = write_pair(tmp, "mx", leaf, ca)
        hop = ServeProcess(tmp / "hop", port=port, local_interfaces=["127.0.0.61"],
                           tls_certificate=[str(cert)],
                           tls_privatekey=[str(key)], local_domains=["bench.lab"],
                           primary_hostname="mx.bench.lab",
                           routers=[{"name": "all", "driver": "accept",
                                     "transport": "local_delivery"}])  # fmt: skip
        try:
            yield dns.resolver, port
        finally:
            hop.stop()


@pytest.mark.parametrize("mode", ["dane", "opportunistic"])
def test_delivery_with_and_without_dane(benchmark: Any, lab: tuple[str, int], tmp_path: Path,
                                        mode: str) -> None:  # fmt: skip
    resolver, port = lab
    smtp: dict[str, Any] = {"driver": "smtp", "port": port, "connection_cache_time": "0.001s"}
    if mode == "opportunistic":
        smtp["hosts_try_dane"] = []
    config = Config.from_mapping({"spool_directory": str(tmp_path / "data"),
                                  "dns_nameservers": [resolver],
                                  "transports": {"remote_smtp": smtp}})  # fmt: skip

    def fill() -> tuple[tuple[Any, ...], dict[str, Any]]:
        queue = Queue(config.spool_path)
        try:
            records = [make_record("bench@example.org", [Recipient("u@bench.lab")], CONTENT,
                                   MailParams(), (), {}) for _ in range(MESSAGES)]  # fmt: skip
            assert not queue._add_many(records)
        finally:
            queue.close()
        return (), {}

    async def drain() -> tuple[int, int]:
        runner = QueueRunner(config)
        try:
            taken = await runner.run_once()
            return taken, runner.stats.delivered
        finally:
            await runner.close()

    def run() -> None:
        taken, delivered = asyncio.run(drain())
        assert taken == MESSAGES and delivered == MESSAGES

    benchmark.group = "delivery with DANE"
    benchmark.extra_info["messages"] = MESSAGES
    benchmark.pedantic(run, setup=fill, rounds=ROUNDS, iterations=1)
    queue = Queue(config.spool_path)
    assert len(queue) == 0
    queue.close()
