"""The sans-I/O server protocol, on plain bytes: every rule without a socket."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpedge import proxy
from smtpedge.protocol import Limits, Offer, ServerConnection
from smtpedge.protocol import events as ev


class Driver:
    """Feeds a ServerConnection and accepts every decision with its default."""

    def __init__(
        self,
        *,
        offer: Offer | None = None,
        limits: Limits | None = None,
        expect_proxy: bool = False,
        greet: bool = True,
    ) -> None:
        self.conn = ServerConnection(
            limits or Limits(hostname="mx.test"), expect_proxy=expect_proxy
        )
        self.events: list[ev.Event] = []
        self.messages: list[bytes] = []
        self.offer = offer or Offer(dsn=True)
        if greet and not expect_proxy:
            self.conn.greet("mx.test ESMTP", self.offer)
            self.banner = self.conn.data_to_send()

    def start(self, *, step: int | None = None) -> None:
        """EHLO, then MAIL, RCPT and DATA pipelined, as a client does."""
        self.feed(b"EHLO client.example\r\n", step=step)
        assert self.feed(SESSION, step=step).endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n")

    def feed(self, data: bytes, *, step: int | None = None) -> bytes:
        chunks = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
        out = b""
        for chunk in chunks:
            self.conn.receive_data(chunk)
            out += self.pump()
        return out

    def pump(self) -> bytes:
        while True:
            e = self.conn.next_event()
            if e is None:
                break
            self.events.append(e)
            if isinstance(e, ev.ProxyReceived):
                self.conn.greet("mx.test ESMTP", self.offer)
            elif isinstance(e, ev.Hello):
                self.conn.respond(list(e.responses))
            elif isinstance(e, ev.MessageReceived):
                self.messages.append(e.content)
                self.conn.respond("250 2.0.0 OK id=TEST")
            elif e.needs_reply:
                self.conn.respond("250 2.0.0 OK")
        return self.conn.data_to_send()

    def codes(self, out: bytes) -> list[str]:
        return [line[:3] for line in out.decode().split("\r\n") if line and line[3:4] == " "]

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]


SESSION = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"


def test_banner_and_ehlo_keywords() -> None:
    conn = ServerConnection(Limits(hostname="mx.test"))
    conn.greet("mx.test ESMTP", Offer(dsn=True, size_limit=1000))
    assert conn.data_to_send() == b"220 mx.test ESMTP\r\n"
    d = Driver(offer=Offer(dsn=True, size_limit=1000))
    out = d.feed(b"EHLO c\r\n").decode()
    for kw in ("PIPELINING", "SIZE 1000", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES",
               "CHUNKING", "DSN", "HELP"):  # fmt: skip
        assert f"250-{kw}\r\n" in out or f"250 {kw}\r\n" in out
    assert "STARTTLS" not in out
    assert "DSN" not in Driver(offer=Offer(dsn=False)).feed(b"EHLO c\r\n").decode()


@pytest.mark.parametrize("step", [None, 1, 7])
def test_full_transaction_any_chunking(step: int | None) -> None:
    d = Driver()
    d.start(step=step)
    out = d.feed(b"Subject: t\r\n\r\n..leading dot\r\nbody\r\n.\r\n", step=step)
    assert out == b"250 2.0.0 OK id=TEST\r\n"
    assert d.messages == [b"Subject: t\r\n\r\n.leading dot\r\nbody\r\n"]


def test_pipelined_group_is_answered_in_order() -> None:
    d = Driver()
    d.feed(b"EHLO c\r\n")
    out = d.feed(
        b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<c@y.example>\r\nDATA\r\n"
    )
    assert d.codes(out) == ["250", "250", "250", "354"]


def test_trailing_bytes_after_message_are_kept_for_the_next_command() -> None:
    d = Driver()
    d.start()
    out = d.feed(b"hi\r\n.\r\nRSET\r\nQUIT\r\n")
    assert d.codes(out) == ["250", "250", "221"]
    assert d.messages == [b"hi\r\n"]
    assert d.conn.closed


def test_early_talker_is_refused_before_the_banner() -> None:
    conn = ServerConnection(Limits())
    conn.receive_data(b"EHLO eager\r\n")
    e = conn.next_event()
    assert isinstance(e, ev.EarlyTalker) and e.preview.startswith(b"EHLO")
    assert conn.data_to_send().startswith(b"554 5.5.0 SMTP synchronization error")
    assert conn.closed


def test_early_talk_allowed_when_sync_is_not_enforced() -> None:
    conn = ServerConnection(Limits(enforce_sync=False))
    conn.receive_data(b"EHLO eager\r\n")
    assert conn.next_event() is None
    conn.greet("x", Offer())
    assert isinstance(conn.next_event(), ev.Hello)


@pytest.mark.parametrize(
    "data",
    [
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\n",  # EHLO must end a group
        b"DATA\r\nSubject: too early\r\n",  # message before the 354
    ],
)
def test_sync_errors_close_the_session(data: bytes) -> None:
    d = Driver()
    if data.startswith(b"DATA"):
        d.feed(b"EHLO c\r\n")
        d.feed(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<b@c.example>\r\n")
    out = d.feed(data)
    assert b"554 5.5.0 SMTP synchronization error" in out
    assert d.conn.closed and isinstance(d.events[-1], ev.Closed)


def test_pipelining_needs_ehlo_and_the_offer() -> None:
    d = Driver()
    d.feed(b"HELO c\r\n")
    out = d.feed(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<b@c.example>\r\n")
    assert b"554 5.5.0" in out
    d = Driver(offer=Offer(pipelining=False))
    d.feed(b"EHLO c\r\n")
    assert b"554 5.5.0" in d.feed(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<b@c.example>\r\n")


@pytest.mark.parametrize(
    ("commands", "reply"),
    [
        (b"MAIL FROM:<a@b.example>\r\n", b"503 5.5.1 Send HELO or EHLO first"),
        (b"EHLO c\r\n|RCPT TO:<a@b.example>\r\n", b"503 5.5.1 Need MAIL before RCPT"),
        (b"EHLO c\r\n|DATA\r\n", b"503 5.5.1 Need MAIL command"),
        (b"EHLO c\r\n|MAIL FROM:<a@b.example>\r\n|DATA\r\n", b"503 5.5.1 No valid recipients"),
        (b"EHLO c\r\n|MAIL FROM:<a@b.example>\r\n|MAIL FROM:<a@b.example>\r\n",
         b"503 5.5.1 Nested MAIL"),
        (b"EHLO c\r\n|MAIL FROM:<a@b.example>\r\n|RCPT TO:<>\r\n", b"553 5.1.3"),
        (b"FOO\r\n", b"500 5.5.1 Command not recognized"),
        (b"EHLO c\r\n|EXPN list\r\n", b"502 5.5.1 EXPN command not implemented"),
        (b"EHLO c\r\n|STARTTLS\r\n", b"502 5.5.1 STARTTLS not available"),
        (b"VRFY someone\r\n", b"502 5.5.1 VRFY command is disabled"),
        (b"HELO c\r\n|MAIL FROM:<a@b.example> SIZE=10\r\n", b"555 5.5.4 MAIL parameters need EHLO"),
        (b"EHLO c\r\n|MAIL FROM:<j\xc3\xb6@b.example>\r\n", b"553 5.6.7"),
        (b"EHLO c\r\n|MAIL FROM:<a@b.example> SIZE=999999999999\r\n", b"552 5.3.4"),
        (b"EHLO c\r\n|MAIL FROM:<a@b.example> FOO=BAR\r\n", b"555 5.5.4 FOO parameter"),
        (b"EHLO c\r\n|MAIL FROM:<a@b.example>\r\n|RCPT TO:<b@c.example> NOTIFY=NEVER,DELAY\r\n",
         b"501 5.5.4 Invalid NOTIFY"),
        (b"HELP\r\n", b"214 2.0.0 Commands"),
        (b"NOOP\r\n", b"250 2.0.0 OK"),
    ],
)  # fmt: skip
def test_replies(commands: bytes, reply: bytes) -> None:
    d = Driver()
    out = b""
    for part in commands.split(b"|"):
        out = d.feed(part)
    assert out.startswith(reply), out


def test_dsn_parameters_reach_the_events_decoded_and_exact() -> None:
    d = Driver()
    d.feed(b"EHLO c\r\n")
    d.feed(b"MAIL FROM:<a@b.example> RET=HDRS ENVID=QQ+2B1\r\n")
    d.feed(b"RCPT TO:<b@c.example> NOTIFY=success,Delay ORCPT=rfc822;b+2Bx@c.example\r\n")
    mail = next(e for e in d.events if isinstance(e, ev.MailFrom))
    rcpt = next(e for e in d.events if isinstance(e, ev.RcptTo))
    assert (mail.params.ret, mail.params.envid, mail.params.envid_xtext) == (
        "HDRS",
        "QQ+1",
        "QQ+2B1",
    )
    assert rcpt.params.notify == ("SUCCESS", "DELAY")
    assert (rcpt.params.orcpt_type, rcpt.params.orcpt) == ("rfc822", "b+x@c.example")
    assert rcpt.params.orcpt_xtext == "rfc822;b+2Bx@c.example"
    assert rcpt.raw_params == (("NOTIFY", "success,Delay"), ("ORCPT", "rfc822;b+2Bx@c.example"))


def test_dsn_parameters_without_the_offer_get_555() -> None:
    d = Driver(offer=Offer(dsn=False))
    d.feed(b"EHLO c\r\n")
    assert d.feed(b"MAIL FROM:<a@b.example> RET=FULL\r\n").startswith(b"555 5.5.4 RET")
    d.feed(b"MAIL FROM:<a@b.example>\r\n")
    assert d.feed(b"RCPT TO:<b@c.example> NOTIFY=NEVER\r\n").startswith(b"555 5.5.4 NOTIFY")


@pytest.mark.parametrize("payload", [b"line\n.\r\n", b"line\r.\r\n", b"a\nb\r\n"])
def test_bare_newlines_are_refused_and_cannot_end_the_message(payload: bytes) -> None:
    d = Driver()
    d.start()
    out = d.feed(payload + b"MAIL FROM:<smuggled@example>\r\n.\r\n")
    assert out.startswith(b"550 5.5.2")
    assert d.messages == []
    assert isinstance(d.events[-1], ev.MessageRefused)
    assert not d.conn.in_transaction
    assert d.feed(b"NOOP\r\n") == b"250 2.0.0 OK\r\n", "the session stays in sync"


def test_bare_newlines_normalized_on_request() -> None:
    d = Driver(limits=Limits(bare_newline="normalize"))
    d.start()
    d.feed(b"a\nb\r\n.\r\n")
    assert d.messages == [b"a\r\nb\r\n"]


def test_message_too_big() -> None:
    d = Driver(offer=Offer(size_limit=10))
    d.start()
    out = d.feed(b"x" * 50 + b"\r\n.\r\n")
    assert out.startswith(b"552 5.3.4")
    assert d.messages == []


def test_recipient_limit() -> None:
    d = Driver(limits=Limits(max_recipients=2))
    d.feed(b"EHLO c\r\n")
    out = d.feed(b"MAIL FROM:<a@b.example>\r\n" + b"RCPT TO:<r@c.example>\r\n" * 3)
    assert d.codes(out) == ["250", "250", "250", "452"]


def test_too_many_errors_close_the_connection() -> None:
    d = Driver(limits=Limits(max_errors=2))
    d.feed(b"EHLO c\r\n")
    out = b""
    for _ in range(3):
        out = d.feed(b"RCPT TO:<a@b.example>\r\n")
    assert out.startswith(b"421 4.7.0") and d.conn.closed


def test_too_many_unknown_commands_close_the_connection() -> None:
    d = Driver(limits=Limits(max_unknown=1))
    d.feed(b"XYZZY\r\n")
    assert d.feed(b"PLUGH\r\n").startswith(b"421 4.7.0")


def test_long_lines_are_refused_and_skipped() -> None:
    d = Driver(limits=Limits(max_line=512))
    out = d.feed(b"NOOP " + b"x" * 600)
    assert out.startswith(b"500 5.5.2 Line too long")
    out = d.feed(b"x" * 600 + b"\r\nNOOP\r\n")
    assert out == b"250 2.0.0 OK\r\n"


def test_bdat_chunks() -> None:
    d = Driver()
    d.feed(b"EHLO c\r\n")
    d.feed(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<b@c.example>\r\n")
    out = d.feed(b"BDAT 8\r\nline\r\n\r\nBDAT 5 LAST\r\nend\r\n")
    assert d.codes(out) == ["250", "250"]
    assert d.messages == [b"line\r\n\r\nend\r\n"]
    out = d.feed(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<b@c.example>\r\nBDAT 0 LAST\r\n")
    assert d.codes(out) == ["250", "250", "250"]
    assert d.messages[-1] == b""


def test_bdat_one_byte_at_a_time() -> None:
    d = Driver()
    d.feed(b"EHLO c\r\n")
    d.feed(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<b@c.example>\r\n")
    out = d.feed(b"BDAT 6 LAST\r\nab\r\ncdQUIT\r\n", step=1)
    assert d.messages == [b"ab\r\ncd"]
    assert out.endswith(b"221 2.0.0 mx.test closing connection\r\n")


def test_bdat_errors_keep_the_stream_in_sync() -> None:
    d = Driver(offer=Offer(size_limit=8))
    d.feed(b"EHLO c\r\n")
    out = d.feed(b"BDAT 4\r\nabcdNOOP\r\n")
    assert d.codes(out) == ["503", "250"], "BDAT without a transaction: data skipped"
    d.feed(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<b@c.example>\r\n")
    out = d.feed(b"BDAT 6\r\n123456BDAT 6 LAST\r\n123456NOOP\r\n")
    assert d.codes(out) == ["250", "552", "250"]
    assert d.messages == [] and not d.conn.in_transaction
    d.feed(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<b@c.example>\r\n")
    out = d.feed(b"BDAT 4 LAST\r\na\nb\r\n")
    assert out.startswith(b"550 5.5.2"), "bare LF refused in BDAT content too"
    d.feed(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<b@c.example>\r\n")
    assert d.feed(b"DATA\r\n").startswith(b"354")


def test_data_after_bdat_is_refused() -> None:
    d = Driver()
    d.feed(b"EHLO c\r\n")
    d.feed(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<b@c.example>\r\nBDAT 2\r\nab")
    assert d.feed(b"DATA\r\n").startswith(b"503 5.5.1 DATA after BDAT")


def test_handler_rejections_keep_state() -> None:
    conn = ServerConnection(Limits())
    conn.greet("x", Offer())
    conn.receive_data(b"EHLO c\r\n")
    e = conn.next_event()
    assert isinstance(e, ev.Hello)
    assert conn.respond(list(e.responses))
    conn.receive_data(b"MAIL FROM:<a@b.example>\r\n")
    assert isinstance(conn.next_event(), ev.MailFrom)
    assert conn.next_event() is None and conn.waiting
    assert not conn.respond("550 5.7.1 Not from you")
    assert not conn.in_transaction
    with pytest.raises(RuntimeError):
        conn.respond("250 OK")


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("step", [None, 1])
def test_proxy_header_then_session(version: int, step: int | None) -> None:
    header = proxy.build_header(version, "PROXY", ("192.0.2.7", 4000), ("198.51.100.1", 25))
    d = Driver(expect_proxy=True)
    out = d.feed(header, step=step)
    assert out == b"220 mx.test ESMTP\r\n"
    received = d.events[0]
    assert isinstance(received, ev.ProxyReceived)
    assert received.header.source == ("192.0.2.7", 4000)
    assert d.feed(b"EHLO c\r\n").startswith(b"250-mx.test")


@pytest.mark.parametrize(
    "data",
    [
        b"EHLO not-a-proxy-header\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 25\r\n",
        b"PROXY TCP4 1.2.3.4\r\n",
    ],
)
def test_bad_proxy_header_closes_without_banner(data: bytes) -> None:
    d = Driver(expect_proxy=True)
    out = d.feed(data)
    assert out == b""
    assert isinstance(d.events[0], ev.ProxyRejected)
    assert d.conn.closed


def test_proxy_header_with_bad_crc_is_refused() -> None:
    header = bytearray(
        proxy.build_header(2, "PROXY", ("192.0.2.7", 4000), ("198.51.100.1", 25), crc32c=True)
    )
    header[-1] ^= 0xFF
    d = Driver(expect_proxy=True)
    assert d.feed(bytes(header)) == b""
    rejected = d.events[0]
    assert isinstance(rejected, ev.ProxyRejected) and "CRC" in rejected.reason


def test_data_sent_with_the_proxy_header_is_early_talk() -> None:
    header = proxy.build_header(1, "PROXY", ("192.0.2.7", 4000), ("198.51.100.1", 25))
    conn = ServerConnection(Limits(), expect_proxy=True)
    conn.receive_data(header + b"EHLO c\r\n")
    assert isinstance(conn.next_event(), ev.ProxyReceived)
    assert isinstance(conn.next_event(), ev.EarlyTalker)


def test_starttls_seam() -> None:
    d = Driver(offer=Offer(starttls=True))
    out = d.feed(b"EHLO c\r\n")
    assert b"250-STARTTLS" in out
    conn = d.conn
    conn.receive_data(b"STARTTLS\r\n")
    e = conn.next_event()
    assert isinstance(e, ev.StartTLS)
    conn.receive_data(b"MAIL FROM:<injected@example>\r\n")  # plaintext after STARTTLS
    assert conn.respond("220 2.0.0 Ready to start TLS")
    assert conn.buffered == 0, "pipelined plaintext is thrown away"
    conn.tls_started()
    assert conn.helo is None
    conn.receive_data(b"MAIL FROM:<a@b.example>\r\n")
    e2 = conn.next_event()
    assert isinstance(e2, ev.ProtocolViolation), "EHLO is needed again after TLS"


def test_timeout_and_shutdown_replies() -> None:
    d = Driver()
    d.conn.timeout()
    assert d.conn.data_to_send().startswith(b"421 4.4.2") and d.conn.closed
    d = Driver()
    d.conn.shutdown()
    assert d.conn.data_to_send().startswith(b"421 4.3.2")


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=1, max_value=400), max_size=30))
def test_any_chunking_gives_the_same_replies_and_messages(cuts: list[int]) -> None:
    """Split a whole session at arbitrary points: the bytes out and the
    messages must not depend on how the input arrived."""
    session = [
        b"EHLO client.example\r\n",
        b"MAIL FROM:<a@b.example> SIZE=100\r\nRCPT TO:<c@d.example>\r\nDATA\r\n",
        b"Subject: x\r\n\r\n..one\r\ntwo\r\n.\r\n",
        b"MAIL FROM:<a@b.example>\r\nRCPT TO:<e@f.example>\r\nBDAT 9\r\nchunk\r\n\r\n",
        b"BDAT 4 LAST\r\nend\n",
        b"RSET\r\nNOOP\r\nQUIT\r\n",
    ]
    whole = Driver(limits=Limits(hostname="mx.test", enforce_sync=False))
    expected = b"".join(whole.feed(part) for part in session)
    data = b"".join(session)
    pieces, pos = [], 0
    for cut in cuts:
        pieces.append(data[pos : pos + cut])
        pos += cut
    pieces.append(data[pos:])
    d = Driver(limits=Limits(hostname="mx.test", enforce_sync=False))
    out = b"".join(d.feed(p) for p in pieces if p)
    assert out == expected
    assert d.messages == whole.messages
    assert len(whole.messages) == 1 and b"550 5.5.2" in expected  # the BDAT one had a bare LF


_FRAGMENTS = [
    b"EHLO x\r\n", b"HELO y\r\n", b"MAIL FROM:<a@b.c>\r\n", b"RCPT TO:<d@e.f>\r\n",
    b"DATA\r\n", b"BDAT 3\r\n", b"BDAT 0 LAST\r\n", b".\r\n", b"\r\n.\r\n", b"\n", b"\r",
    b"RSET\r\n", b"NOOP\r\n", b"VRFY x\r\n", b"STARTTLS\r\n", b"MAIL FROM:<> RET=FULL\r\n",
    b"RCPT TO:<x@y> NOTIFY=NEVER ORCPT=rfc822;x\r\n", b"\x00\xff", b"PROXY TCP4 ",
]  # fmt: skip


@settings(max_examples=300)
@given(
    st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.binary(max_size=40)), max_size=40),
    st.booleans(),
    st.booleans(),
)
def test_arbitrary_input_never_raises(parts: list[bytes], expect_proxy: bool, accept: bool) -> None:
    """Whatever arrives, the protocol answers or closes; it never raises and
    never stops answering while it has input."""
    conn = ServerConnection(Limits(hostname="mx.test", max_line=512), expect_proxy=expect_proxy)
    if not expect_proxy:
        conn.greet("mx.test", Offer(dsn=True, size_limit=200, starttls=True, vrfy=True))
    for part in parts:
        conn.receive_data(part)
        while (e := conn.next_event()) is not None:
            if isinstance(e, ev.ProxyReceived):
                conn.greet("mx.test", Offer())
            elif e.needs_reply:
                if isinstance(e, ev.Hello):
                    conn.respond(e.responses if accept else ["550 5.7.1 no"])
                else:
                    conn.respond("250 2.0.0 OK" if accept else "550 5.7.1 no")
        assert not conn.waiting
        conn.data_to_send()
        if conn.closed:
            break


def test_bdat_crlf_split_across_chunks_is_not_bare() -> None:
    d = Driver()
    d.feed(b"EHLO c\r\n")
    d.feed(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<b@c.example>\r\n")
    out = d.feed(b"BDAT 3\r\nab\rBDAT 3 LAST\r\n\ncd")
    assert d.codes(out) == ["250", "250"]
    assert d.messages == [b"ab\r\ncd"]
    d.feed(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<b@c.example>\r\n")
    out = d.feed(b"BDAT 3 LAST\r\nab\r")
    assert out.startswith(b"550 5.5.2"), "a CR at the very end is bare"


def test_bdat_normalize_across_chunks() -> None:
    d = Driver(limits=Limits(bare_newline="normalize"))
    d.feed(b"EHLO c\r\n")
    d.feed(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<b@c.example>\r\n")
    d.feed(b"BDAT 3\r\na\nbBDAT 2\r\n\r\rBDAT 2 LAST\r\n\nc")
    assert d.messages == [b"a\r\nb\r\n\r\nc"]


@pytest.mark.parametrize("command", ["DATA", "BDAT"])
def test_take_data_streams_the_message_out(command: str) -> None:
    d = Driver()
    d.feed(b"EHLO c\r\n")
    d.feed(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<b@c.example>\r\n")
    body = b"line one\r\nline two\r\n"
    if command == "DATA":
        d.feed(b"DATA\r\n")
        d.feed(body[:12])
    else:
        d.feed(b"BDAT %d LAST\r\n" % len(body) + body[:12])
    assert d.conn.data_pending == 12
    first = d.conn.take_data()
    assert first == body[:12] and d.conn.data_pending == 0
    d.feed(body[12:] + (b".\r\n" if command == "DATA" else b""))
    assert first + d.messages[0] == body


@pytest.mark.parametrize("version", [1, 2])
def test_proxy_header_from_a_host_that_is_not_a_proxy(version: int) -> None:
    header = proxy.build_header(version, "PROXY", ("192.0.2.7", 4000), ("198.51.100.1", 25))
    d = Driver()
    out = d.feed(header + b"EHLO c\r\n")
    assert out.startswith(b"554 5.7.0 PROXY protocol header not accepted")
    assert isinstance(d.events[0], ev.ProxyRejected) and d.conn.closed
    d = Driver()
    d.feed(b"NOOP\r\n")
    assert d.feed(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n").startswith(b"500 5.5.1"), "only first"


def test_replies_come_in_batches_so_unread_output_cannot_pile_up() -> None:
    """A client pipelining thousands of commands: next_event stops after a
    batch of replies until they are taken, so the adapter can apply
    backpressure (stop reading) instead of buffering every reply (with no
    limit on non-mail commands, which would otherwise end it first)."""
    d = Driver(offer=Offer(max_nonmail=0))
    d.feed(b"EHLO c\r\n")
    d.conn.receive_data(b"RSET\r\n" * 1000)

    def drain() -> int:
        n = 0
        while d.conn.next_event() is not None:
            n += 1
        return n

    assert drain() == 256
    assert d.conn.output_pending
    assert drain() == 0, "nothing more until the batch is taken"
    first = d.conn.data_to_send()
    assert first.count(b"250 2.0.0 OK\r\n") == 256
    assert not d.conn.output_pending
    total = 256
    while n := drain():
        assert n <= 256
        assert d.conn.data_to_send().count(b"\r\n") == n
        total += n
    assert total == 1000, "every command answered, in batches"


def test_progress_counts_whole_lines_only() -> None:
    """``progress`` moves when a command or data line is complete, not for
    each byte: what the adapter's timeouts are measured against."""
    d = Driver()
    before = d.conn.progress
    for byte in b"EHLO slow.example":
        d.feed(bytes([byte]))
    assert d.conn.progress == before, "a line that has not ended is no progress"
    d.feed(b"\r\n")
    assert d.conn.progress == before + 1
    d.feed(SESSION)
    mark = d.conn.progress
    for byte in b"a data line":
        d.feed(bytes([byte]))
    assert d.conn.progress == mark
    d.feed(b"\r\n")
    assert d.conn.progress > mark


def test_split_proxy_header_from_a_host_that_is_not_a_proxy() -> None:
    for cut in (1, 3, 5):
        d = Driver()
        head = b"PROXY TCP4 192.0.2.1 198.51.100.1 1234 25\r\n"
        assert d.feed(head[:cut]) == b""
        out = d.feed(head[cut:] + b"EHLO c\r\n")
        assert out.startswith(b"554 5.7.0"), (cut, out)
        assert d.conn.closed
    v2 = proxy.build_header(2, "PROXY", ("192.0.2.7", 4000), ("198.51.100.1", 25))
    d = Driver()
    assert d.feed(v2[:6]) == b""
    assert d.feed(v2[6:]).startswith(b"554 5.7.0")
    d = Driver()
    assert d.feed(b"\r\n").startswith(b"500"), "a blank line is not held back"


def test_recipients_past_the_overshoot_count_as_errors() -> None:
    d = Driver(limits=Limits(max_recipients=3, max_errors=2))
    d.feed(b"EHLO c\r\n")
    out = d.feed(b"MAIL FROM:<a@b.example>\r\n" + b"RCPT TO:<r@c.example>\r\n" * 100)
    codes = d.codes(out)
    assert codes[:4] == ["250"] * 4, "MAIL and three recipients"
    assert codes[4:7] == ["452"] * 3, "as many again get 452 only"
    assert codes[7:] == ["452", "452", "421"], "then each is an error, and the session ends"
    assert d.conn.closed


def test_too_many_refused_recipients_end_the_session() -> None:
    d = Driver(limits=Limits(max_refused_recipients=3))
    d.feed(b"EHLO c\r\n")
    d.feed(b"MAIL FROM:<a@b.example>\r\n")
    out = b""
    for _ in range(5):
        d.conn.receive_data(b"RCPT TO:<r@c.example>\r\n")
        e = d.conn.next_event()
        if isinstance(e, ev.RcptTo):
            d.conn.respond("550 5.7.1 Relaying not permitted")
            e = d.conn.next_event()
        if e is not None:
            d.events.append(e)
        out += d.conn.data_to_send()
    assert d.codes(out) == ["550"] * 4 + ["421"]
    assert d.conn.closed and isinstance(d.events[-1], ev.Closed)
    assert "more than 3 refused recipients" in d.events[-1].reason


def test_too_many_non_mail_commands_end_the_session() -> None:
    """A client that sends NOOP, HELP, VRFY or RSET forever, never moving
    mail, is dropped after max_nonmail of them, as Exim's
    smtp_accept_max_nonmail does; EHLO is free once."""
    d = Driver(offer=Offer(max_nonmail=4))
    assert d.codes(d.feed(b"EHLO c\r\n")) == ["250"]
    out = b"".join(d.feed(c) for c in (b"NOOP\r\n", b"HELP\r\n", b"NOOP\r\n", b"RSET\r\n"))
    assert d.codes(out) == ["250", "214", "250", "250"], "RSET: its free one"
    assert not d.conn.closed
    out = d.feed(b"NOOP\r\n")
    assert d.codes(out) == ["250"], "the fourth counted command is still answered"
    out = d.feed(b"NOOP\r\n")
    assert out == b"421 4.7.0 mx.test Too many non-mail commands, closing connection\r\n"
    assert d.conn.closed and isinstance(d.events[-1], ev.Closed)
    assert d.events[-1].reason == "more than 4 non-mail commands (last was NOOP)"


def test_free_non_mail_commands_come_back_after_each_message() -> None:
    """One RSET, one HELO or EHLO and one STARTTLS are free at the start of
    the session and again after each message; mail commands never count."""
    d = Driver(offer=Offer(max_nonmail=1))
    for _ in range(5):
        assert d.codes(d.feed(b"RSET\r\n") + d.feed(b"EHLO c\r\n")) == ["250", "250"]
        d.feed(SESSION)
        assert d.codes(d.feed(b"hello\r\n.\r\n")) == ["250"]
    assert len(d.messages) == 5 and not d.conn.closed
    d.feed(b"EHLO again\r\n")  # the free one after the last message
    assert d.codes(d.feed(b"EHLO again\r\n")) == ["250"], "one counted"
    assert d.codes(d.feed(b"EHLO again\r\n")) == ["421"]
    assert d.conn.closed


def test_a_refused_message_also_gives_the_free_commands_back() -> None:
    d = Driver(offer=Offer(max_nonmail=1, size_limit=10))
    for _ in range(3):
        assert d.codes(d.feed(b"RSET\r\n") + d.feed(b"EHLO c\r\n")) == ["250", "250"]
        d.feed(SESSION)
        assert d.codes(d.feed(b"x" * 40 + b"\r\n.\r\n")) == ["552"]
    assert not d.conn.closed and d.kinds().count("MessageRefused") == 3


def test_no_limit_on_non_mail_commands_with_zero() -> None:
    d = Driver(offer=Offer(max_nonmail=0))
    d.feed(b"EHLO c\r\n")
    assert d.codes(b"".join(d.feed(b"NOOP\r\n") for _ in range(200))) == ["250"] * 200
    assert not d.conn.closed


def test_ehlo_after_starttls_is_free() -> None:
    d = Driver(offer=Offer(max_nonmail=1, starttls=True))
    d.feed(b"EHLO c\r\n")
    d.conn.receive_data(b"STARTTLS\r\n")
    e = d.conn.next_event()
    assert isinstance(e, ev.StartTLS)
    d.conn.respond("220 2.0.0 Ready to start TLS")
    d.conn.tls_started()
    d.conn.data_to_send()
    assert d.codes(d.feed(b"EHLO c\r\n")) == ["250"], "free: TLS requires it"
    assert d.codes(d.feed(b"NOOP\r\n")) == ["250"]
    assert d.codes(d.feed(b"NOOP\r\n")) == ["421"]


def test_too_many_messages_in_one_session() -> None:
    """The MAIL command after max_messages of them gets 421 and the session
    ends (Exim's smtp_accept_max_per_connection); MAIL commands that led to
    no message count too."""
    d = Driver(limits=Limits(hostname="mx.test", max_messages=3))
    d.feed(b"EHLO c\r\n")
    d.start()
    assert d.codes(d.feed(b"one\r\n.\r\n")) == ["250"]
    assert d.codes(d.feed(b"MAIL FROM:<a@example.org>\r\nRSET\r\n")) == ["250", "250"]
    d.start()
    assert d.codes(d.feed(b"three\r\n.\r\n")) == ["250"]
    out = d.feed(b"MAIL FROM:<a@example.org>\r\n")
    assert out == b"421 4.7.0 mx.test Too many messages in this connection, closing connection\r\n"
    assert d.conn.closed and d.events[-1] == ev.Closed("more than 3 MAIL commands")
    assert len(d.messages) == 2
