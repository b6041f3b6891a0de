"""The asyncio server over real loopback sockets: hooks, PROXY, limits,
timeouts, and messages landing in the durable queue."""

from __future__ import annotations

import logging
import smtplib
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

import smtpedge
from serverutil import Client, RunningServer, wait_for
from smtpedge import proxy
from smtpedge.receiving.handlers import HandlerError
from smtpedge.receiving.server import Server
from smtpedge.receiving.session import Envelope, Session

PROXY_V2 = proxy.build_header(2, "PROXY", ("192.0.2.7", 40000), ("198.51.100.1", 25))


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"


def test_smtplib_message_lands_in_queue_with_received_header(spool: Path) -> None:
    with RunningServer(spool) as srv:
        with smtplib.SMTP("127.0.0.1", srv.port) as c:
            refused = c.sendmail("a@example.org", ["b@example.net", "c@example.net"],
                                 b"Subject: hi\r\n\r\nbody\r\n")  # fmt: skip
            assert refused == {}
        q = srv.queue()
        [msg] = list(q.messages())
        assert msg.sender == "a@example.org"
        assert [r.address for r in msg.recipients] == ["b@example.net", "c@example.net"]
        content = q.content(msg.id)
        assert content is not None
        first = content.split(b"\r\n\r\n")[0].decode()
        assert first.startswith("Received: from ")
        assert "([127.0.0.1]:" in first and f"id {msg.id}" in first
        assert "by mx.test (smtpedge" in first and "with ESMTP" in first
        assert content.endswith(b"Subject: hi\r\n\r\nbody\r\n")


def test_dsn_parameters_are_stored_per_recipient(spool: Path) -> None:
    with RunningServer(spool, dsn_advertise_hosts=["127.0.0.1"]) as srv:
        c = Client(srv.port)
        c.reply()
        assert "250-DSN" in c.cmd("EHLO client.example")
        assert c.cmd("MAIL FROM:<a@example.org> RET=HDRS ENVID=id+2B1").startswith("250")
        assert c.cmd("RCPT TO:<b@example.net> NOTIFY=SUCCESS,FAILURE "
                     "ORCPT=rfc822;b+2Bx@example.net").startswith("250")  # fmt: skip
        assert c.cmd("RCPT TO:<c@example.net> NOTIFY=NEVER").startswith("250")
        assert c.cmd("RCPT TO:<d@example.net> NOTIFY=NEVER,DELAY").startswith("501 5.5.4")
        assert c.cmd("DATA").startswith("354")
        c.send(b"Subject: dsn\r\n\r\nx\r\n.\r\n")
        assert c.reply().startswith("250 2.0.0 OK id=")
        c.close()
        [msg] = list(srv.queue().messages())
        assert msg.mail_params.ret == "HDRS" and msg.mail_params.envid == "id+1"
        assert msg.raw_mail_params == (("RET", "HDRS"), ("ENVID", "id+2B1"))
        b, c2 = msg.recipients
        assert b.params.notify == ("SUCCESS", "FAILURE")
        assert b.params.orcpt == "b+x@example.net"
        assert b.params.orcpt_xtext == "rfc822;b+2Bx@example.net"
        assert c2.params.notify == ("NEVER",) and c2.params.orcpt is None


def test_dsn_is_not_offered_by_default(spool: Path) -> None:
    with RunningServer(spool) as srv:
        c = Client(srv.port)
        c.reply()
        assert "DSN" not in c.cmd("EHLO client.example")
        assert c.cmd("MAIL FROM:<a@example.org> RET=FULL").startswith("555 5.5.4 RET")


def test_misspelt_hook_fails_at_start() -> None:
    class Handler:
        async def handle_RCTP(self, *args: Any) -> str:
            return "250 OK"

    with pytest.raises(HandlerError, match="did you mean handle_RCPT"):
        Server(Handler())

    class NotAsync:
        def handle_DATA(self, *args: Any) -> str:
            return "250 OK"

    with pytest.raises(HandlerError, match="async def"):
        Server(NotAsync())


class RecordingHandler:
    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self.envelopes: list[Envelope] = []
        self.proxy_headers: list[Any] = []

    async def handle_PROXY(self, server: Server, session: Session, envelope: Envelope,
                           header: Any) -> bool:  # fmt: skip
        self.proxy_headers.append(header)
        return True

    async def handle_EHLO(self, server: Server, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:  # fmt: skip
        return [r for r in responses if "CHUNKING" not in r]

    async def handle_RCPT(self, server: Server, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str | None:  # fmt: skip
        if address.startswith("nobody@"):
            return "550 5.1.1 No such user here"
        return None

    async def handle_DATA(self, server: Server, session: Session,
                          envelope: Envelope) -> str | None:  # fmt: skip
        self.sessions.append(session)
        self.envelopes.append(envelope)
        if b"X-Keep: no" in (envelope.content or b""):
            return "250 2.0.0 Taken by the handler"
        return None


def test_hooks_shape_the_session(spool: Path) -> None:
    handler = RecordingHandler()
    # The proxied client is outside: its recipients are in a local domain.
    with RunningServer(
        spool, handler, hosts_proxy=["127.0.0.1"], local_domains="example.net"
    ) as srv:
        c = Client(srv.port)
        c.send(PROXY_V2)
        assert c.reply().startswith("220 ")
        assert "CHUNKING" not in c.cmd("EHLO client.example")
        c.cmd("MAIL FROM:<a@example.org>")
        assert c.cmd("RCPT TO:<nobody@example.net>").startswith("550 5.1.1")
        assert c.cmd("RCPT TO:<b@example.net>").startswith("250")
        assert c.cmd("DATA").startswith("354")
        c.send(b"X-Keep: no\r\n\r\nx\r\n.\r\n")
        assert c.reply() == "250 2.0.0 Taken by the handler"
        reply = c.send_message("a@example.org", ["b@example.net"], b"Subject: kept\r\n\r\nx")
        assert reply.startswith("250 2.0.0 OK id=")
        c.close()
        assert len(srv.queue()) == 1, "only the message the handler passed on is queued"
        session = handler.sessions[0]
        assert session.peer == ("192.0.2.7", 40000)
        assert session.proxy_session and session.proxy_local_address == "127.0.0.1"
        assert (session.proxy_external_address, session.proxy_external_port) == (
            "198.51.100.1", 25)  # fmt: skip
        assert session.host_name == "client.example"
        assert handler.envelopes[0].rcpt_tos == ["b@example.net"]
        assert handler.proxy_headers[0].version == 2


def test_proxy_address_is_used_in_received_header_and_log(
    spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="smtpedge")
    with RunningServer(spool, hosts_proxy="127.0.0.0/8", local_domains="example.net") as srv:
        c = Client(srv.port, source="127.0.0.3")
        c.send(proxy.build_header(1, "PROXY", ("203.0.113.9", 5555), ("127.0.0.1", 25)))
        c.reply()
        c.cmd("EHLO proxied.example")
        assert c.send_message("a@example.org", ["b@example.net"], b"x").startswith("250")
        c.close()
        [msg] = list(srv.queue().messages())
        content = srv.queue().content(msg.id) or b""
        assert b"from proxied.example ([203.0.113.9]:5555 via proxy [127.0.0.3])" in content
        assert msg.client["address"] == "203.0.113.9"
    text = caplog.text
    assert "H=(proxied.example) [203.0.113.9]:5555 PX=[127.0.0.3]" in text


def test_health_check_local_header_keeps_real_endpoints(spool: Path) -> None:
    with RunningServer(spool, hosts_proxy=["127.0.0.1"]) as srv:
        c = Client(srv.port)
        c.send(proxy.build_header(2, "LOCAL"))
        assert c.reply().startswith("220")
        c.cmd("EHLO hc")
        assert c.send_message("a@example.org", ["b@example.net"], b"x").startswith("250")
        [msg] = list(srv.queue().messages())
        assert msg.client["address"] == "127.0.0.1" and msg.client["proxy"] is None


def test_proxy_timeout_and_bad_headers_close_without_banner(
    spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="smtpedge")
    with RunningServer(spool, hosts_proxy=["127.0.0.2"], proxy_protocol_timeout="0.5s") as srv:
        silent = Client(srv.port, source="127.0.0.2")
        garbage = Client(srv.port, source="127.0.0.2")
        garbage.send(b"EHLO i-am-not-a-proxy\r\n")
        bad_crc = Client(srv.port, source="127.0.0.2")
        header = bytearray(proxy.build_header(2, "PROXY", ("192.0.2.1", 1), ("192.0.2.2", 2),
                                              crc32c=True))  # fmt: skip
        header[-1] ^= 1
        bad_crc.send(bytes(header))
        # Meanwhile a direct client is served normally.
        other = Client(srv.port)
        assert other.reply().startswith("220")
        t0 = time.monotonic()
        assert garbage.closed_without_data()
        assert bad_crc.closed_without_data()
        assert silent.closed_without_data()
        assert 0.3 < time.monotonic() - t0 < 3.0
        assert other.cmd("NOOP").startswith("250")
        # A PROXY header from a host that is not a proxy is just a bad command.
        assert other.cmd("PROXY TCP4 1.2.3.4 5.6.7.8 1 2").startswith("500 5.5.1")
    text = caplog.text
    assert "PROXY header timeout from proxy [127.0.0.2]" in text
    assert "PROXY header refused from proxy [127.0.0.2]" in text and "CRC" in text


def _proxied(port: int, source_ip: str) -> Client:
    c = Client(port)
    c.send(proxy.build_header(2, "PROXY", (source_ip, 1234), ("127.0.0.1", 25)))
    return c


def test_per_host_limit_applies_to_the_proxied_client(spool: Path) -> None:
    with RunningServer(spool, hosts_proxy=["127.0.0.1"], smtp_accept_max_per_host=1) as srv:
        first = _proxied(srv.port, "192.0.2.50")
        assert first.reply().startswith("220")
        second = _proxied(srv.port, "192.0.2.50")
        refusal = second.reply()
        assert refusal.startswith("421 4.7.0") and "[192.0.2.50]" in refusal
        other = _proxied(srv.port, "192.0.2.51")
        assert other.reply().startswith("220"), "other clients behind the same proxy get in"
        first.cmd("QUIT")
        assert wait_for(lambda: _proxied(srv.port, "192.0.2.50").reply().startswith("220")), (
            "the slot is released at close"
        )


def test_connection_ratelimit(spool: Path) -> None:
    with RunningServer(spool, smtp_connect_ratelimit="2 / 1m / per_conn / strict") as srv:
        replies = []
        for _ in range(3):
            c = Client(srv.port, source="127.0.0.9")
            replies.append(c.reply())
            c.close()
        assert replies[0].startswith("220") and replies[1].startswith("220")
        assert replies[2].startswith("421 4.7.0 mx.test Connection rate from [127.0.0.9]")
        assert Client(srv.port, source="127.0.0.10").reply().startswith("220")


def test_accept_max(spool: Path) -> None:
    with RunningServer(spool, smtp_accept_max=1) as srv:
        a = Client(srv.port)
        assert a.reply().startswith("220")
        b = Client(srv.port)
        assert b.reply().startswith("421 4.7.0")


def test_command_timeout(spool: Path) -> None:
    with RunningServer(spool, smtp_receive_timeout=1) as srv:
        c = Client(srv.port)
        c.reply()
        t0 = time.monotonic()
        assert c.reply().startswith("421 4.4.2 mx.test Timeout")
        assert time.monotonic() - t0 > 0.8, "not before the timeout"


def test_early_talker_with_banner_delay(spool: Path) -> None:
    with RunningServer(spool, smtp_banner_delay="0.5s") as srv:
        c = Client(srv.port)
        c.send(b"EHLO eager\r\n")
        assert c.reply().startswith("554 5.5.0 SMTP synchronization error")
        polite = Client(srv.port)
        assert polite.reply().startswith("220")


def test_handler_crash_gets_421_and_server_goes_on(
    spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Crashing:
        async def handle_MAIL(self, *args: Any) -> str:
            raise ZeroDivisionError("boom")

    with RunningServer(spool, Crashing()) as srv:
        c = Client(srv.port)
        c.reply()
        c.cmd("EHLO c")
        assert c.cmd("MAIL FROM:<a@b.example>").startswith("421 4.3.0")
        d = Client(srv.port)
        assert d.reply().startswith("220")
    assert "ZeroDivisionError" in caplog.text
    text = caplog.text
    assert text.count("Traceback (most recent call last)") == 1, "its traceback, once"
    assert text.count('raise ZeroDivisionError("boom")') == 1


def test_bdat_and_large_message_via_spool_file(spool: Path) -> None:
    with RunningServer(spool, spool_inline_max="1K") as srv:
        c = Client(srv.port)
        c.reply()
        c.cmd("EHLO c")
        c.cmd("MAIL FROM:<a@b.example> BODY=8BITMIME")
        c.cmd("RCPT TO:<r@c.example>")
        body = b"Subject: big\r\n\r\n" + b"0123456789" * 1000
        c.send(b"BDAT %d\r\n" % len(body) + body)
        assert c.reply().startswith("250")
        assert c.cmd("BDAT 0 LAST").startswith("250 2.0.0 OK id=")
        q = srv.queue()
        [msg] = list(q.messages())
        assert (q.content(msg.id) or b"").endswith(body)
        assert list((spool / "spool").glob("*/*")), "stored as a spool file"
        assert q.remove(msg.id) and not list((spool / "spool").glob("*/*"))


def test_session_survives_many_bad_inputs(spool: Path) -> None:
    with RunningServer(spool) as srv:
        bad = [b"\x00\xff\r\n", b"MAIL FROM:<<>>\r\n", b"X" * 5000 + b"\r\n", b"\r\n"]
        for junk in bad:
            c = Client(srv.port)
            c.reply()
            c.send(junk)
            assert c.reply()[:1] in ("5", "4")
            c.close()
        good = Client(srv.port)
        good.reply()
        good.cmd("EHLO c")
        assert good.send_message("a@b.example", ["c@d.example"], b"x").startswith("250")


def test_public_names() -> None:
    assert smtpedge.Server is Server
    assert smtpedge.Config.__name__ == "Config"
    with pytest.raises(AttributeError):
        _ = smtpedge.Nope


def test_cli_queue_commands(spool: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from smtpedge.cli import main

    with RunningServer(spool, dsn_advertise_hosts="*") as srv:
        c = Client(srv.port)
        c.reply()
        c.cmd("EHLO c")
        c.cmd("MAIL FROM:<a@b.example> ENVID=e1")
        c.cmd("RCPT TO:<r@c.example> NOTIFY=FAILURE")
        c.cmd("DATA")
        c.send(b"Subject: cli\r\n\r\nhello\r\n.\r\n")
        qid = c.reply().split("id=")[1]
    assert main(["queue", "--spool-directory", str(spool), "list"]) == 0
    out = capsys.readouterr().out
    assert qid in out and "<a@b.example>" in out and "<r@c.example>" in out
    assert main(["queue", "--spool-directory", str(spool), "show", qid]) == 0
    out = capsys.readouterr().out
    assert "recipient: <r@c.example> NOTIFY=FAILURE" in out and "Subject: cli" in out
    assert "mail parameter: ENVID=e1" in out
    assert main(["queue", "--spool-directory", str(spool), "remove", qid]) == 0
    assert main(["queue", "--spool-directory", str(spool), "show", qid]) == 1
    assert main(["queue", "--spool-directory", str(spool), "list"]) == 0
    assert "queue is empty" in capsys.readouterr().out


def test_cli_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from smtpedge.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text("smtp_accept_maxx = 3\n")
    assert main(["serve", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "option smtp_accept_maxx: unknown option (did you mean smtp_accept_max?)" in err
    assert main(["config"]) == 0
    assert 'spool_directory = "./smtpedge-data"' in capsys.readouterr().out


def test_port_in_use_is_a_clear_error(spool: Path) -> None:
    from smtpedge.cli import main

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    with pytest.raises(SystemExit, match=f"cannot listen on \\[127.0.0.1\\]:{port}"):
        main(["serve", "--port", str(port), "--spool-directory", str(spool)])
    s.close()


def test_storage_failure_answers_451_and_queues_nothing(
    spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with RunningServer(spool) as srv:
        # A transaction that fails, in the database itself: the writer of
        # either backend meets it.
        db = sqlite3.connect(spool / "queue.db")
        db.execute("CREATE TRIGGER full BEFORE INSERT ON recipients "
                   "BEGIN SELECT RAISE(ROLLBACK, 'database or disk is full'); END")  # fmt: skip
        db.commit()
        c = Client(srv.port)
        c.reply()
        c.cmd("EHLO c")
        reply = c.send_message("a@b.example", ["r@c.example"], b"x")
        assert reply.startswith("451 4.3.0"), reply
        assert c.cmd("NOOP").startswith("250"), "the session goes on"
        db.execute("DROP TRIGGER full")
        db.commit()
        db.close()
        assert c.send_message("a@b.example", ["r@c.example"], b"x").startswith("250")
        assert len(srv.queue()) == 1
    assert "NOT queued: IntegrityError: database or disk is full" in caplog.text


def test_handle_proxy_can_refuse_a_connection(spool: Path) -> None:
    class Picky:
        async def handle_PROXY(self, server: Server, session: Session, envelope: Envelope,
                               header: Any) -> bool:  # fmt: skip
            return session.peer[0] != "192.0.2.66"

    with RunningServer(spool, Picky(), hosts_proxy=["127.0.0.1"]) as srv:
        bad = _proxied(srv.port, "192.0.2.66")
        assert bad.closed_without_data()
        good = _proxied(srv.port, "192.0.2.67")
        assert good.reply().startswith("220")


def test_data_timeout(spool: Path) -> None:
    with RunningServer(spool, smtp_data_timeout=1) as srv:
        c = Client(srv.port)
        c.reply()
        c.cmd("EHLO c")
        c.cmd("MAIL FROM:<a@b.example>")
        c.cmd("RCPT TO:<r@c.example>")
        assert c.cmd("DATA").startswith("354")
        c.send(b"Subject: stalled\r\n")
        assert c.reply().startswith("421 4.4.2 mx.test Timeout")
        assert len(srv.queue()) == 0


def test_v1_unknown_keeps_real_endpoints(spool: Path) -> None:
    with RunningServer(spool, hosts_proxy=["127.0.0.1"]) as srv:
        c = Client(srv.port)
        c.send(b"PROXY UNKNOWN\r\n")
        assert c.reply().startswith("220")
        c.cmd("EHLO hc")
        assert c.send_message("a@example.org", ["b@example.net"], b"x").startswith("250")
        [msg] = list(srv.queue().messages())
        assert msg.client["address"] == "127.0.0.1" and msg.client["proxy"] is None


def _big_session(c: Client, body: bytes, *, bdat: bool) -> str:
    c.reply()
    c.cmd("EHLO big.example")
    c.cmd("MAIL FROM:<a@b.example>")
    c.cmd("RCPT TO:<r@c.example>")
    if bdat:
        half = len(body) // 2
        c.send(b"BDAT %d\r\n" % half + body[:half])
        assert c.reply().startswith("250")
        c.send(b"BDAT %d LAST\r\n" % (len(body) - half) + body[half:])
        return c.reply()
    assert c.cmd("DATA").startswith("354")
    for i in range(0, len(body), 100_000):
        c.send(body[i : i + 100_000])
    c.send(b".\r\n")
    return c.reply()


@pytest.mark.parametrize("bdat", [False, True], ids=["DATA", "BDAT"])
def test_big_messages_stream_to_the_spool(spool: Path, bdat: bool) -> None:
    body = b"Subject: big\r\n\r\n" + b"".join(b"%07d abcdefghijklmnopqrstuvwxyz\r\n" % i
                                               for i in range(100_000))  # fmt: skip
    with RunningServer(spool, spool_inline_max="64K") as srv:
        reply = _big_session(Client(srv.port), body, bdat=bdat)
        assert reply.startswith("250 2.0.0 OK id=")
        qid = reply.split("id=")[1]
        q = srv.queue()
        content = q.content(qid) or b""
        assert content.startswith(b"Received: ") and content.endswith(body)
        msg = q.get(qid)
        assert msg is not None and msg.size == len(content)
        assert not list((spool / "spool" / "incoming").iterdir()), "the file moved into the queue"


def test_big_message_refused_or_abandoned_leaves_no_file(spool: Path) -> None:
    body = b"x" * 998 + b"\r\n"
    with RunningServer(spool, spool_inline_max="64K", message_size_limit="1M") as srv:
        reply = _big_session(Client(srv.port), body * 2000, bdat=False)  # 2 MB
        assert reply.startswith("552 5.3.4")
        c = Client(srv.port)
        c.reply()
        c.cmd("EHLO gone.example")
        c.cmd("MAIL FROM:<a@b.example>")
        c.cmd("RCPT TO:<r@c.example>")
        c.cmd("DATA")
        c.send(body * 500)  # 500 KB, then the client vanishes
        incoming = spool / "spool" / "incoming"
        assert wait_for(lambda: list(incoming.iterdir())), "written out as it arrived"
        c.close()
        assert wait_for(lambda: not list(incoming.iterdir())), "and removed when abandoned"
        assert len(srv.queue()) == 0


def test_handle_data_sees_a_big_message(spool: Path) -> None:
    seen: list[int] = []

    class Handler:
        async def handle_DATA(self, server: Server, session: Session,
                              envelope: Envelope) -> str | None:  # fmt: skip
            seen.append(len(envelope.content or b""))
            return None

    body = b"y" * 998 + b"\r\n"
    with RunningServer(spool, Handler(), spool_inline_max="64K") as srv:
        assert _big_session(Client(srv.port), body * 1000, bdat=False).startswith("250")
        assert seen == [1000 * 1000]
        assert len(srv.queue()) == 1


def test_proxy_header_from_a_host_not_in_hosts_proxy(
    spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="smtpedge")
    with RunningServer(spool, hosts_proxy=["127.0.0.2"]) as srv:
        c = Client(srv.port)
        c.reply()
        c.send(PROXY_V2)
        assert c.reply().startswith("554 5.7.0")
    assert "PROXY header from [127.0.0.1]:" in caplog.text
    assert "which is not in hosts_proxy: refused" in caplog.text


def test_a_failed_start_holds_nothing(spool: Path) -> None:
    import asyncio

    from smtpedge.config import Config

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    config = Config.from_mapping({"daemon_smtp_ports": [busy.getsockname()[1]],
                                  "spool_directory": str(spool), "log_file_path": "-"})  # fmt: skip
    with pytest.raises(OSError):
        asyncio.run(Server(None, config).start())
    busy.close()
    with RunningServer(spool) as srv:
        assert Client(srv.port).reply().startswith("220"), "the data directory lock was released"
