"""Rust vs pure Python (and the peers users have today) on the same inputs.
Each result is checked before it is timed. Run: scripts/bench"""

from __future__ import annotations

import random
import select
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from peers import aiosmtpd_parse_proxy, naive_xtext_encode, service_identity_match
from smtpedge import Config, _native, _pure, proxy
from smtpedge.esmtp import MailParams, Recipient
from smtpedge.queue import Queue, make_record
from smtpedge.queue.store import new_queue_id, record_row

BACKENDS = [pytest.param(_native, id="rust"), pytest.param(_pure, id="python")]

V1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n"
V2 = _pure.build_header(
    2,
    "PROXY",
    ("2001:db8::10", 51234),
    ("2001:db8::25", 25),
    tlvs=[
        (proxy.PP2_TYPE_ALPN, b"smtp"),
        (proxy.PP2_TYPE_AUTHORITY, b"mx.example.net"),
        (proxy.PP2_TYPE_UNIQUE_ID, bytes(range(32))),
        proxy.ssl_tlv(version="TLSv1.3", cn="client.example", cipher="TLS_AES_128_GCM_SHA256"),
    ],
    crc32c=True,
)
MAIL = b"MAIL FROM:<john.doe@example.org> SIZE=12345 BODY=8BITMIME RET=HDRS ENVID=QQ314159\r\n"
RCPT = (
    b"RCPT TO:<jane.roe@mail.example.com> NOTIFY=SUCCESS,FAILURE"
    b" ORCPT=rfc822;jane.roe@mail.example.com\r\n"
)
REPLY = b"250-2.1.5 Recipient <jane.roe@mail.example.com> ok\r\n"
_rng = random.Random(7)
XTEXT_RAW = bytes(
    _rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789@.+= \x00\xff") for _ in range(500)
)
XTEXT = _pure.xtext_encode(XTEXT_RAW)
MESSAGE = b"".join(
    (b"." if i % 10 == 0 else b"") + b"x" * _rng.randrange(10, 120) + b"\r\n" for i in range(12_000)
)
WIRE = _pure.dot_stuff(MESSAGE)


def _run(benchmark: Any, fn: Callable[[], Any], check: Callable[[Any], bool]) -> None:
    assert check(fn())
    benchmark(fn)


@pytest.mark.benchmark(group="proxy-v1")
@pytest.mark.parametrize("impl", BACKENDS)
def test_proxy_v1(benchmark: Any, impl: ModuleType) -> None:
    _run(benchmark, lambda: impl.parse_header(V1), lambda h: h.source == ("192.0.2.1", 56324))


@pytest.mark.benchmark(group="proxy-v1")
def test_proxy_v1_aiosmtpd(benchmark: Any) -> None:
    _run(benchmark, lambda: aiosmtpd_parse_proxy(V1), lambda p: p.valid and p.src_port == 56324)


@pytest.mark.benchmark(group="proxy-v2-tlvs")
@pytest.mark.parametrize("impl", BACKENDS)
def test_proxy_v2(benchmark: Any, impl: ModuleType) -> None:
    _run(benchmark, lambda: impl.parse_header(V2), lambda h: h.crc32c and len(h.tlvs) == 5)


@pytest.mark.benchmark(group="proxy-v2-tlvs")
def test_proxy_v2_aiosmtpd(benchmark: Any) -> None:
    _run(benchmark, lambda: aiosmtpd_parse_proxy(V2), lambda p: p.valid and p.src_port == 51234)


@pytest.mark.benchmark(group="smtp-mail")
@pytest.mark.parametrize("impl", BACKENDS)
def test_smtp_mail(benchmark: Any, impl: ModuleType) -> None:
    _run(benchmark, lambda: impl.parse_command(MAIL), lambda c: len(c.params) == 4)


@pytest.mark.benchmark(group="smtp-rcpt")
@pytest.mark.parametrize("impl", BACKENDS)
def test_smtp_rcpt(benchmark: Any, impl: ModuleType) -> None:
    _run(benchmark, lambda: impl.parse_command(RCPT), lambda c: c.path.domain == "mail.example.com")


@pytest.mark.benchmark(group="smtp-reply")
@pytest.mark.parametrize("impl", BACKENDS)
def test_smtp_reply(benchmark: Any, impl: ModuleType) -> None:
    _run(benchmark, lambda: impl.parse_reply(REPLY), lambda r: r.status == "2.1.5")


@pytest.mark.benchmark(group="data-1mb")
@pytest.mark.parametrize("impl", BACKENDS)
def test_data_scan(benchmark: Any, impl: ModuleType) -> None:
    def scan() -> bytes:
        s = impl.DataScanner(max_size=10_000_000)
        out = [s.feed(WIRE[i : i + 65536]) for i in range(0, len(WIRE), 65536)]
        assert s.done
        return b"".join(out)

    _run(benchmark, scan, lambda body: body == MESSAGE)


@pytest.mark.benchmark(group="dot-stuff-1mb")
@pytest.mark.parametrize("impl", BACKENDS)
def test_dot_stuff(benchmark: Any, impl: ModuleType) -> None:
    _run(benchmark, lambda: impl.dot_stuff(MESSAGE), lambda w: w == WIRE)


@pytest.mark.benchmark(group="xtext-encode-500")
@pytest.mark.parametrize("impl", BACKENDS)
def test_xtext_encode(benchmark: Any, impl: ModuleType) -> None:
    _run(benchmark, lambda: impl.xtext_encode(XTEXT_RAW), lambda t: t == XTEXT)


@pytest.mark.benchmark(group="xtext-encode-500")
def test_xtext_encode_naive(benchmark: Any) -> None:
    _run(benchmark, lambda: naive_xtext_encode(XTEXT_RAW), lambda t: t == XTEXT)


@pytest.mark.benchmark(group="xtext-decode-500")
@pytest.mark.parametrize("impl", BACKENDS)
def test_xtext_decode(benchmark: Any, impl: ModuleType) -> None:
    _run(benchmark, lambda: impl.xtext_decode(XTEXT), lambda b: b == XTEXT_RAW)


@pytest.mark.benchmark(group="hostname")
@pytest.mark.parametrize("impl", BACKENDS)
def test_hostname(benchmark: Any, impl: ModuleType) -> None:
    _run(benchmark, lambda: impl.match_hostname("*.example.com", "mx.example.com"), bool)


@pytest.mark.benchmark(group="hostname")
def test_hostname_service_identity(benchmark: Any) -> None:
    _run(benchmark, lambda: service_identity_match(b"*.example.com", "mx.example.com"), bool)


def _read_v2(h: Any) -> tuple[Any, ...]:
    ssl = h.ssl
    return (h.source, h.destination, h.authority, ssl.version if ssl else None)


@pytest.mark.benchmark(group="proxy-v2-tlvs-read")
@pytest.mark.parametrize("impl", BACKENDS)
def test_proxy_v2_read(benchmark: Any, impl: ModuleType) -> None:
    """Parse and read what a server uses: addresses, authority, TLS version."""
    _run(
        benchmark,
        lambda: _read_v2(impl.parse_header(V2)),
        lambda t: t == (("2001:db8::10", 51234), ("2001:db8::25", 25), "mx.example.net", "TLSv1.3"),
    )


@pytest.mark.benchmark(group="proxy-v2-tlvs-read")
def test_proxy_v2_read_aiosmtpd(benchmark: Any) -> None:
    def read() -> tuple[Any, ...]:
        p = aiosmtpd_parse_proxy(V2)
        return (p.src_addr, p.dst_addr, p.tlv.AUTHORITY if p.tlv else None)

    _run(benchmark, read, lambda t: str(t[0]) == "2001:db8::10")


WRITER_BATCH = 100
WRITER_CONTENT = b"Subject: bench\r\n\r\n" + b"x" * 2000 + b"\r\n"


@pytest.mark.benchmark(group="message-writer-100", timer=time.process_time)
@pytest.mark.parametrize("impl", BACKENDS)
def test_message_writer(benchmark: Any, impl: ModuleType, tmp_path: Path) -> None:
    """CPU (this process's, every thread) to commit WRITER_BATCH messages of
    2 KB handed to the writer at once: the rows, the transaction and its
    fdatasync, the outcomes taken back. The same database file for both."""
    Queue(tmp_path, inline_max=Config().spool_inline_max).close()  # the tables and the spool
    writer = impl.MessageWriter(str(tmp_path / "queue.db"), str(tmp_path / "spool"),
                                str(tmp_path / "queue.writer.lock"),
                                inline_max=Config().spool_inline_max)  # fmt: skip
    rows = [record_row(make_record("bench@example.org", [Recipient("user@example.com")],
                                   WRITER_CONTENT, MailParams(), (), {"address": "192.0.2.1"}))
            for _ in range(WRITER_BATCH)]  # fmt: skip

    handed: list[int] = []

    def fresh() -> tuple[tuple[list[Any]], dict[str, Any]]:
        return ([r._replace(id=new_queue_id()) for r in rows],), {}

    def commit(batch: list[Any]) -> int:
        for token, row in enumerate(batch):
            writer.submit(token, row)
        stored = 0
        while stored < len(batch):
            ready, _, _ = select.select([writer.fileno()], [], [], 30)
            assert ready, "no outcome from the writer in 30 s"
            outcomes, _ = writer.take()
            assert all(error is None for _, error in outcomes), outcomes
            stored += len(outcomes)
        handed.append(stored)
        return stored

    try:
        assert commit(fresh()[0][0]) == WRITER_BATCH
        benchmark.pedantic(commit, setup=fresh, rounds=30)
        assert writer.committed == sum(handed) > WRITER_BATCH
    finally:
        writer.close()
