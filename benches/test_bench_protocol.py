"""The cost of the PROXY header to a whole SMTP session, measured where it
is paid: one session through the sans-I/O protocol (header parse, banner,
EHLO, MAIL, RCPT, DATA with a 2 KB message, QUIT), with and without a PROXY
v2 header in front. No sockets, so the machine's network noise stays out."""

from __future__ import annotations

from typing import Any

import pytest

from smtpedge import proxy
from smtpedge.protocol import Limits, Offer, ServerConnection
from smtpedge.protocol import events as ev

HEADER = proxy.build_header(2, "PROXY", ("192.0.2.7", 40000), ("198.51.100.1", 25))
STEPS = [
    b"EHLO client.example\r\n",
    b"MAIL FROM:<a@example.org> SIZE=2100\r\nRCPT TO:<b@example.net>\r\nDATA\r\n",
    b"Subject: bench\r\n\r\n" + (b"x" * 70 + b"\r\n") * 28 + b".\r\n",
    b"QUIT\r\n",
]
LIMITS = Limits(hostname="mx.bench")
OFFER = Offer()


def session(with_proxy: bool) -> int:
    conn = ServerConnection(LIMITS, expect_proxy=with_proxy)
    if with_proxy:
        conn.receive_data(HEADER)
        event = conn.next_event()
        assert isinstance(event, ev.ProxyReceived)
        assert event.header.source is not None
    conn.greet("mx.bench ESMTP", OFFER)
    out = len(conn.data_to_send())
    for step in STEPS:
        conn.receive_data(step)
        while (e := conn.next_event()) is not None:
            if isinstance(e, ev.Hello):
                conn.respond(e.responses)
            elif isinstance(e, ev.MessageReceived):
                conn.respond("250 2.0.0 OK id=BENCH")
            elif e.needs_reply:
                conn.respond("250 2.0.0 OK")
        out += len(conn.data_to_send())
    assert conn.closed
    return out


@pytest.mark.parametrize("with_proxy", [False, True], ids=["plain", "proxy-v2"])
def test_session(benchmark: Any, with_proxy: bool) -> None:
    benchmark.group = "whole session through the protocol"
    assert session(with_proxy) == session(False)
    benchmark(session, with_proxy)
