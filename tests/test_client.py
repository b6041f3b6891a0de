"""The SMTP client: the sans-I/O protocol on plain bytes, then the asyncio
client against a real smtpedge server on loopback in its many offers (with
and without DSN, PIPELINING, CHUNKING, 8BITMIME, SMTPUTF8, SIZE, EHLO), a
server that never answers or breaks the protocol, and STARTTLS with
certificates and OCSP staples made for the test."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from pki import Issued, issue, make_ca, response, write_pair
from serverutil import RunningServer, wait_for
from smtpedge.esmtp import RcptParams, Recipient
from smtpedge.protocol.client import ClientConnection, Extensions, RemoteProtocolError, Response
from smtpedge.sending import OutgoingMessage, SMTPClient, SMTPClientError, TLSPolicy

# -- the sans-I/O protocol --------------------------------------------------------------

MULTI = b"250-mx.test Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 DSN\r\n"


@pytest.mark.parametrize("step", [None, 1, 7])
def test_replies_whole_in_any_chunking(step: int | None) -> None:
    c = ClientConnection()
    data = b"220 mx.test ESMTP\r\n" + MULTI + b"550-5.1.1 no such user\r\n550 5.1.1 try again\r\n"
    pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    got = []
    for piece in pieces:
        c.receive_data(piece)
        while (r := c.next_response()) is not None:
            got.append(r)
    assert [r.code for r in got] == [220, 250, 550]
    assert got[1].lines == ("mx.test Hello", "PIPELINING", "SIZE 1000", "DSN")
    assert got[2].status == "5.1.1" and got[2].lines == ("no such user", "try again")
    assert str(got[2]) == "550 5.1.1 no such user / try again"
    assert got[2].wire_lines() == ("550-5.1.1 no such user", "550 5.1.1 try again")
    assert got[0].wire_lines() == ("220 mx.test ESMTP",)
    ext = Extensions.from_ehlo(got[1])
    assert "pipelining" in ext and "DSN" in ext and ext.size_limit == 1000
    assert "CHUNKING" not in ext


@pytest.mark.parametrize(("data", "problem"), [
    (b"250-a\r\n550 b\r\n", "reply code changed"),
    (b"HELLO\r\n", "not an SMTP reply"),
    (b"2500 x\r\n", "not an SMTP reply"),
    (b"250 " + b"x" * 5000, "longer than"),
    (b"250-x\r\n" * 1001, "more than 1000 lines"),
])  # fmt: skip
def test_replies_that_are_not_smtp(data: bytes, problem: str) -> None:
    c = ClientConnection()
    c.receive_data(data)
    with pytest.raises(RemoteProtocolError, match=problem):
        while c.next_response() is not None:
            pass


def test_closed_in_the_middle_of_a_reply() -> None:
    c = ClientConnection()
    c.receive_data(b"250-first\r\n")
    assert c.next_response() is None
    c.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="closed in the middle"):
        c.next_response()


def test_commands_and_data_out() -> None:
    c = ClientConnection()
    c.send_command("MAIL FROM:<a@example.org>")
    with pytest.raises(ValueError, match="CR or LF"):
        c.send_command("RCPT TO:<b@example.net>\r\nRSET")
    c.send_message(b".hidden\nline\r\n.\r\nQUIT")
    assert c.data_to_send() == (b"MAIL FROM:<a@example.org>\r\n"
                                b"..hidden\r\nline\r\n..\r\nQUIT\r\n.\r\n")  # fmt: skip
    c.send_chunk(b"abc", last=True)
    assert c.data_to_send() == b"BDAT 3 LAST\r\nabc"


# -- the asyncio client against smtpedge ------------------------------------------------


def _message(content: bytes = b"Subject: t\r\n\r\nbody\r\n", **kw: Any) -> OutgoingMessage:
    recipients = kw.pop("recipients", None) or [
        Recipient("b@example.net", RcptParams(), (("NOTIFY", "SUCCESS,FAILURE"),
                                                 ("ORCPT", "rfc822;b+2Bx@example.net"))),
        Recipient("c@example.net"),
    ]  # fmt: skip
    return OutgoingMessage("a@example.org", recipients, content, **kw)


async def _send(port: int, *messages: OutgoingMessage, **kw: Any) -> tuple[SMTPClient, list[Any]]:
    kw.setdefault("tls", TLSPolicy(starttls="never"))
    async with SMTPClient("127.0.0.1", port, helo_name="client.test", **kw) as client:
        results = [await client.send(m) for m in messages]
    return client, results


def test_dsn_parameters_go_exactly_as_received(tmp_path: Path) -> None:
    with RunningServer(tmp_path / "spool", dsn_advertise_hosts="*") as srv:
        msg = _message(mail_params=(("RET", "HDRS"), ("ENVID", "id+2B1"), ("SIZE", "9")))
        client, [result] = asyncio.run(_send(srv.port, msg))
        assert result.dsn and len(result.accepted) == 2
        assert result.response.code == 250 and result.response.lines[0].startswith("OK id=")
        [queued] = list(srv.queue().messages())
    raw = dict(queued.raw_mail_params)
    assert raw["RET"] == "HDRS" and raw["ENVID"] == "id+2B1"
    assert raw["SIZE"] == str(len(msg.content)), "SIZE is ours, not the one received"
    b, c = queued.recipients
    assert b.raw_params == (("NOTIFY", "SUCCESS,FAILURE"), ("ORCPT", "rfc822;b+2Bx@example.net"))
    assert c.raw_params == (("ORCPT", "rfc822;c@example.net"),), "ORCPT added when none was given"
    assert "PIPELINING" in client.extensions and "CHUNKING" in client.extensions


def test_no_dsn_parameters_to_a_server_without_dsn(tmp_path: Path) -> None:
    with RunningServer(tmp_path / "spool") as srv:  # DSN is not offered by default
        msg = _message(mail_params=(("RET", "FULL"), ("ENVID", "x")))
        _, [result] = asyncio.run(_send(srv.port, msg))
        assert not result.dsn and len(result.accepted) == 2
        [queued] = list(srv.queue().messages())
    assert [k for k, _ in queued.raw_mail_params] == ["SIZE"]
    assert all(r.raw_params == () for r in queued.recipients)


@pytest.mark.parametrize("chunking", [True, False])
def test_content_arrives_byte_for_byte(tmp_path: Path, chunking: bool) -> None:
    content = b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nend\r\n"
    options: dict[str, Any] = {} if chunking else {"chunking_advertise_hosts": []}
    with RunningServer(tmp_path / "spool", **options) as srv:
        client, [result] = asyncio.run(_send(srv.port, _message(content)))
        assert result.response.code == 250
        [queued] = list(srv.queue().messages())
        assert (srv.queue().content(queued.id) or b"").endswith(content)
    assert ("CHUNKING" in client.extensions) is chunking


def test_one_connection_for_several_messages(tmp_path: Path) -> None:
    with RunningServer(tmp_path / "spool") as srv:
        _, results = asyncio.run(_send(srv.port, *[_message() for _ in range(3)]))
        assert all(r.response.code == 250 for r in results)
        assert len(srv.queue()) == 3
        assert srv.server.messages_accepted == 3


def test_refusals_before_sending(tmp_path: Path) -> None:
    options = {"message_size_limit": 100, "accept_8bitmime": False,
               "smtputf8_advertise_hosts": []}  # fmt: skip
    with RunningServer(tmp_path / "spool", **options) as srv:
        big = _message(b"Subject: big\r\n\r\n" + b"x" * 200)
        eight = _message(b"Subject: caf\xc3\xa9\r\n\r\n")
        utf8 = _message(recipients=[Recipient("j\u00f6rg@example.net")])
        fine = _message()
        _, results = asyncio.run(_send(srv.port, big, eight, utf8, fine))
        codes = [(r.response.code, r.response.status, r.response.local) for r in results]
        assert codes[:3] == [(552, "5.3.4", True), (554, "5.6.3", True), (553, "5.6.7", True)]
        assert "SIZE 100" in results[0].response.text
        assert results[3].response.code == 250, "the connection stays usable"
        assert len(srv.queue()) == 1


def test_refused_recipients_and_senders(tmp_path: Path) -> None:
    class Picky:
        async def handle_MAIL(self, server: Any, session: Any, env: Any, addr: str,
                              opts: Any) -> str | None:  # fmt: skip
            return "550 5.7.1 Not you" if addr.startswith("spam") else None

        async def handle_RCPT(self, server: Any, session: Any, env: Any, addr: str,
                              opts: Any) -> str | None:  # fmt: skip
            if addr.startswith("c@"):
                return "550-5.1.1 No such user here\r\n550 5.1.1 Really"
            return "451 4.3.0 Try later" if addr.startswith("d@") else None

    with RunningServer(tmp_path / "spool", Picky()) as srv:
        recipients = [Recipient(a) for a in ("b@example.net", "c@example.net", "d@example.net")]
        mixed = _message(recipients=recipients)
        spam = OutgoingMessage("spam@example.org", recipients, b"x\r\n")
        none = _message(recipients=[Recipient("c@example.net")])
        _, (r1, r2, r3) = asyncio.run(_send(srv.port, mixed, spam, none, tls=TLSPolicy("never")))
    b, c, d = r1.results
    assert b.accepted and b.response.code == 250
    assert not c.accepted and c.response.lines == ("No such user here", "Really")
    assert c.response.permanent and d.transient and d.response.status == "4.3.0"
    assert r2.response is not None and str(r2.response) == "550 5.7.1 Not you"
    assert all(not r.accepted for r in r2.results)
    assert r3.response is None and not r3.results[0].accepted, "no data sent, no recipient"


def test_helo_when_ehlo_is_refused(tmp_path: Path) -> None:
    class NoEhlo:
        async def handle_EHLO(self, *args: Any) -> str:
            return "502 5.5.1 EHLO not here"

    with RunningServer(tmp_path / "spool", NoEhlo()) as srv:
        client, [result] = asyncio.run(_send(srv.port, _message(b"plain\r\n")))
    assert not client.esmtp and "PIPELINING" not in client.extensions
    assert result.response.code == 250 and not result.dsn


class _RawServer:
    """A TCP server that says what the test gives it, then waits."""

    def __init__(self, greeting: bytes) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.greeting = greeting
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            conn.sendall(self.greeting)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.mark.parametrize(("greeting", "status", "words"), [
    (b"", "4.4.2", "timeout after 0.5s waiting for the banner"),
    (b"220 ok\r\nHELLO THERE\r\n", "4.5.0", "not an SMTP reply"),
    (b"554 5.7.1 go away\r\n", "5.7.1", "go away"),
])  # fmt: skip
def test_servers_that_do_not_serve(greeting: bytes, status: str, words: str) -> None:
    server = _RawServer(greeting)
    try:
        client = SMTPClient("127.0.0.1", server.port, command_timeout=0.5)
        with pytest.raises(SMTPClientError) as info:
            asyncio.run(client.connect())
        assert info.value.response.status == status and words in str(info.value)
    finally:
        server.close()


def test_connection_refused_is_transient() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(SMTPClientError) as info:
        asyncio.run(SMTPClient("127.0.0.1", port).connect())
    assert info.value.transient and info.value.response.status == "4.4.1"
    assert "Connection refused" in str(info.value)


# -- TLS --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca()


def _tls_server(tmp_path: Path, ca: Issued, leaf: Issued, staple: bytes | None = None) -> Any:
    cert, key = write_pair(tmp_path, "leaf", leaf, ca)
    options: dict[str, Any] = {"tls_certificate": [str(cert)], "tls_privatekey": [str(key)]}
    if staple is not None:
        (tmp_path / "leaf.ocsp").write_bytes(staple)
        options["tls_ocsp_file"] = [str(tmp_path / "leaf.ocsp")]
    (tmp_path / "ca.pem").write_bytes(ca.pem())
    return RunningServer(tmp_path / "spool", **options)


def _policy(tmp_path: Path, **kw: Any) -> TLSPolicy:
    return TLSPolicy(**{"verify": "require", "ca_file": str(tmp_path / "ca.pem"), **kw})


@pytest.mark.parametrize(("names", "server_name", "verified"), [
    (["mx.test"], "mx.test", True),
    (["*.example.test"], "mx.example.test", True),
    (["*.example.test"], "a.mx.example.test", False),
    (["other.test"], "mx.test", False),
])  # fmt: skip
def test_certificate_names(
    tmp_path: Path, ca: Issued, names: list[str], server_name: str, verified: bool
) -> None:
    leaf = issue(ca, names[0], dns=names)
    with _tls_server(tmp_path, ca, leaf) as srv:
        client = SMTPClient("127.0.0.1", srv.port, server_name=server_name,
                            tls=_policy(tmp_path, verify="try"))  # fmt: skip

        async def go() -> Any:
            async with client:
                return await client.send(_message())

        result = asyncio.run(go())
    assert client.tls is not None and client.tls.version.startswith("TLSv1.")
    assert client.tls_verified is verified
    assert result.response.code == 250, "verify=try delivers either way"
    if not verified:
        assert f"not {server_name}" in (client.tls_failure or "")


@pytest.mark.parametrize("problem", ["wrong name", "expired", "unknown CA"])
def test_required_verification_defers(tmp_path: Path, ca: Issued, problem: str) -> None:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    if problem == "expired":
        leaf = issue(ca, "mx.test", dns=["mx.test"], not_after=now - dt.timedelta(days=1),
                     not_before=now - dt.timedelta(days=30))  # fmt: skip
    elif problem == "unknown CA":
        leaf = issue(make_ca("another CA"), "mx.test", dns=["mx.test"])
    else:
        leaf = issue(ca, "mx.example", dns=["mx.example"])
    with _tls_server(tmp_path, ca, leaf) as srv:
        client = SMTPClient("127.0.0.1", srv.port, server_name="mx.test", tls=_policy(tmp_path))
        with pytest.raises(SMTPClientError) as info:
            asyncio.run(client.connect())
        assert len(srv.queue()) == 0
    assert info.value.transient and info.value.response.status == "4.7.5"
    want = {"wrong name": "for mx.example, not mx.test", "expired": "expired",
            "unknown CA": "local issuer"}[problem]  # fmt: skip
    assert want in str(info.value)


def test_required_tls_is_never_downgraded(tmp_path: Path) -> None:
    with RunningServer(tmp_path / "spool", tls_advertise_hosts=[]) as srv:
        client = SMTPClient("127.0.0.1", srv.port, tls=TLSPolicy(starttls="require"))
        with pytest.raises(SMTPClientError, match="does not offer STARTTLS"):
            asyncio.run(client.connect())
        _, [result] = asyncio.run(_send(srv.port, _message(), tls=TLSPolicy()))
        assert result.response.code == 250, "opportunistic: in clear when not offered"


@pytest.mark.parametrize("staple", ["good", "revoked", "none"])
def test_ocsp_staples(tmp_path: Path, ca: Issued, staple: str) -> None:
    leaf = issue(ca, "mx.test", dns=["mx.test"])
    der = None if staple == "none" else response(leaf.cert, ca.cert, ca, status=staple)
    with _tls_server(tmp_path, ca, leaf, der) as srv:

        async def connect(require: bool) -> str:
            client = SMTPClient("127.0.0.1", srv.port, server_name="mx.test",
                                tls=_policy(tmp_path, require_ocsp=require))  # fmt: skip
            try:
                await client.connect()
            finally:
                await client.close()
            return client.ocsp

        status = asyncio.run(connect(False))
        if staple == "good":
            assert asyncio.run(connect(True)) == "verified"
        else:
            with pytest.raises(SMTPClientError, match="no valid OCSP staple"):
                asyncio.run(connect(True))
    # The server staples only a proof that verifies: a revoked one is not sent.
    assert status == {"good": "verified", "revoked": "notresp", "none": "notresp"}[staple]


def test_response_str_and_kinds() -> None:
    r = Response(451, "4.4.2", ("timeout",), local=True)
    assert r.transient and not r.permanent and not r.positive and str(r) == "451 4.4.2 timeout"


# -- a real peer: Postfix's smtp-sink, which writes each transaction to a file ----------


@pytest.mark.parametrize(("flags", "dsn", "esmtp"), [([], True, True), (["-N"], False, True),
                                                     (["-e"], False, False)])  # fmt: skip
def test_against_postfix_smtp_sink(flags: list[str], dsn: bool, esmtp: bool) -> None:
    import shutil
    import subprocess
    import tempfile

    from serverutil import free_port, peer, wait_port

    # smtp-sink drops to nobody, who cannot enter pytest's private tmp_path.
    dump = Path(tempfile.mkdtemp(prefix="smtpedge-sink-"))
    dump.chmod(0o777)
    port = free_port()
    proc = subprocess.Popen([peer("smtp-sink"), "-u", "nobody", *flags, "-d",
                             f"{dump}/%H%M%S.", f"127.0.0.1:{port}", "10"],
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait_port(port)
        msg = _message(b"Subject: sink\r\n\r\n.dot line\r\n",
                       mail_params=(("RET", "HDRS"), ("ENVID", "e+2B1")))  # fmt: skip
        client, [result] = asyncio.run(_send(port, msg))
        assert result.response.code == 250 and len(result.accepted) == 2
        assert result.dsn is dsn and client.esmtp is esmtp
        assert wait_for(lambda: any(dump.iterdir()))
        [dumped] = list(dump.iterdir())
        text = dumped.read_text()
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(dump, ignore_errors=True)
    if dsn:
        assert "X-Mail-Args: <a@example.org> RET=HDRS ENVID=e+2B1\n" in text
        assert (
            "X-Rcpt-Args: <b@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@example.net\n"
            in text
        )
        assert "X-Rcpt-Args: <c@example.net> ORCPT=rfc822;c@example.net\n" in text
    else:
        assert "RET=" not in text and "NOTIFY=" not in text and "ORCPT=" not in text
    assert "\n.dot line\n" in text, "dot-stuffed on the wire, unstuffed by the peer"
    assert ("X-Client-Proto: ESMTP" in text) is esmtp
