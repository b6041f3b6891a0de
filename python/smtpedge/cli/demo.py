"""``smtpedge demo``: the hot paths at work on sample input."""

from __future__ import annotations

import sys

from smtpedge import BACKEND, BUILD_PROFILE, __version__, certnames, data, proxy, smtpline, xtext
from smtpedge.errors import SmtpedgeError


def run() -> int:
    """Walk through the hot paths on sample input, showing what each returns."""
    out = sys.stdout.write
    out(f"smtpedge {__version__}, backend {BACKEND} ({BUILD_PROFILE})\n\n")

    header = proxy.build_header(
        2,
        "PROXY",
        ("192.0.2.10", 51234),
        ("198.51.100.25", 25),
        tlvs=[(proxy.PP2_TYPE_AUTHORITY, b"mx.example.net"), proxy.ssl_tlv(version="TLSv1.3")],
        crc32c=True,
    )
    parsed = proxy.parse_header(header + b"EHLO client.example\r\n")
    out("PROXY v2 header with TLVs and CRC32C:\n")
    out(f"  {len(header)} bytes -> source {parsed.source}, destination {parsed.destination}\n")
    ssl = parsed.ssl
    out(f"  authority {parsed.authority!r}, TLS {ssl.version if ssl else None}, ")
    out(f"crc32c verified {parsed.crc32c}, consumed {parsed.consumed}\n")
    try:
        proxy.parse_header(b"PROXY TCP4 192.0.2.1 198.51.100.2 01 25\r\n")
    except proxy.ProxyProtocolError as exc:
        out(f"  a bad v1 header is refused: {exc}\n")
    out("\n")

    cmd = smtpline.parse_command(
        b"MAIL FROM:<j.doe@example.org> SIZE=1024 RET=HDRS ENVID=Q+2B1\r\n"
    )
    out("SMTP command:\n")
    out(f"  {cmd.verb} path={cmd.path.mailbox if cmd.path else None!r} params={cmd.params}\n")
    try:
        smtpline.parse_command(b"RCPT TO:<a..b@example.org>\r\n")
    except SmtpedgeError as exc:
        out(f"  a bad address is refused with: {exc}\n")
    reply = smtpline.parse_reply(b"250-2.1.5 Recipient ok\r\n")
    out(f"  reply: code {reply.code} status {reply.status} last {reply.last} ")
    out(f"text {reply.text!r}\n\n")

    out("DATA stream (smuggling payload \\n.\\r\\n does not end the message):\n")
    scanner = data.DataScanner(max_size=1_000_000)
    body = scanner.feed(b"Subject: hi\r\n\r\nline\n.\r\nMAIL FROM:<evil@example>\r\n")
    body += scanner.feed(b"..dot line\r\n.\r\nQUIT\r\n")
    err = scanner.error
    out(f"  done {scanner.done}, remainder {scanner.remainder!r}, ")
    out(f"reply {err.reply.decode().strip() if err else '250 OK'!r}\n")
    out(f"  dot_stuff(b'.a\\nb') = {data.dot_stuff(b'.a' + bytes([10]) + b'b')!r}\n\n")

    out("xtext (RFC 3461) and utf-8-addr-xtext (RFC 6533):\n")
    out(f"  encode(b'a+b=c') = {xtext.encode(b'a+b=c')!r}\n")
    addr = "j\u00f6rg@example"
    out(f"  encode_utf8_addr({addr!r}) = {xtext.encode_utf8_addr(addr)!r}\n\n")

    out("Certificate names (RFC 6125):\n")
    for pattern, host in [
        ("*.example.com", "mx.example.com"),
        ("*.example.com", "a.mx.example.com"),
        ("*.com", "example.com"),
        ("*.b\u00fccher.example", "mx.xn--bcher-kva.example"),
    ]:
        out(
            f"  match_hostname({pattern!r}, {host!r}) = {certnames.match_hostname(pattern, host)}\n"
        )
    return 0
