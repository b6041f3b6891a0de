"""The ``smtpedge`` command line (also ``python -m smtpedge``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from smtpedge import BACKEND, BUILD_PROFILE, __version__, certnames, data, proxy, smtpline, xtext
from smtpedge.errors import SmtpedgeError

if TYPE_CHECKING:
    from smtpedge.config import Config


def _demo() -> int:
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


def _load_config(args: argparse.Namespace) -> Config:
    from smtpedge.config import Config

    path = getattr(args, "config", None)
    config = Config.load(path) if path else Config()
    overrides: dict[str, object] = {}
    if getattr(args, "spool_directory", None):
        overrides["spool_directory"] = args.spool_directory
    if getattr(args, "workers", None):
        overrides["workers"] = args.workers
    if getattr(args, "port", None) is not None:
        overrides["daemon_smtp_ports"] = [args.port]
    if getattr(args, "listen", None):
        overrides["local_interfaces"] = [args.listen]
    return Config.from_mapping(overrides, config) if overrides else config


def _queue(args: argparse.Namespace, config: Config) -> int:
    from datetime import datetime

    from smtpedge.queue import Queue

    if not (config.spool_path / "queue.db").exists():
        where = config.spool_path.resolve()
        what = "no data directory" if not config.spool_path.is_dir() else "no queue"
        print(f"smtpedge: {what} at {where} (give the server's with --spool-directory "
              "or --config)", file=sys.stderr)  # fmt: skip
        return 1
    q = Queue(config.spool_path, inline_max=config.spool_inline_max)
    try:
        if args.queue_command == "list":
            n = 0
            for m in q.messages():
                n += 1
                when = datetime.fromtimestamp(m.arrival).strftime("%Y-%m-%d %H:%M:%S")
                print(f"{m.id} {m.size:>9} {when} <{m.sender}>")
                for r in m.recipients:
                    print(f"          <{r.address}>")
            print(f"{n} message(s) queued" if n else "queue is empty")
            return 0
        msg = q.get(args.id)
        if msg is None:
            print(f"smtpedge: no message {args.id} in the queue", file=sys.stderr)
            return 1
        if args.queue_command == "remove":
            q.remove(args.id)
            print(f"{args.id} removed")
            return 0
        print(f"id: {msg.id}")
        print(f"arrival: {datetime.fromtimestamp(msg.arrival).isoformat()}")
        print(f"sender: <{msg.sender}>")
        for k, v in msg.raw_mail_params:
            print(f"mail parameter: {k}" + ("" if v is None else f"={v}"))
        print(f"client: {json.dumps(msg.client)}")
        for r in msg.recipients:
            extra = "".join(f" {k}" + ("" if v is None else f"={v}") for k, v in r.raw_params)
            print(f"recipient: <{r.address}>{extra}")
        print(f"size: {msg.size}")
        print()
        content = q.content(msg.id) or b""
        sys.stdout.flush()
        sys.stdout.buffer.write(content)
        sys.stdout.flush()
        return 0
    finally:
        q.close()


def _ocsp(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from smtpedge.log import configure

    configure(None)
    if args.ocsp_command == "fetch":
        from smtpedge import ocsp_fetch

        try:
            cert, issuer = ocsp_fetch.load_chain(
                Path(args.cert), Path(args.issuer) if args.issuer else None
            )
            if args.watch:
                asyncio.run(ocsp_fetch.watch(cert, issuer, Path(args.out), url=args.url,
                                             timeout=args.timeout,
                                             min_interval=args.min_interval))  # fmt: skip
                return 0
            job = ocsp_fetch.fetch_to_file(
                cert, issuer, Path(args.out), url=args.url, timeout=args.timeout
            )
            result = asyncio.run(job)
        except (ocsp_fetch.FetchError, OSError, ValueError) as exc:
            print(f"smtpedge ocsp fetch: {exc}; {args.out} left as it was", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
        print(f"{args.out}: {result.reason}")
        return 0
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from smtpedge.limits import parse_duration
    from smtpedge.ocsp_responder import Responder, serve

    try:
        ca = x509.load_pem_x509_certificate(Path(args.ca).read_bytes())
        signer = x509.load_pem_x509_certificate(Path(args.signer).read_bytes()) \
            if args.signer else ca  # fmt: skip
        key = serialization.load_pem_private_key(Path(args.key).read_bytes(), None)
        host, _, port = args.listen.rpartition(":")
        validity = dt.timedelta(seconds=parse_duration(args.validity))
        responder = Responder(ca, signer, key, Path(args.index), validity=validity)
        responder._load_index()
    except (OSError, ValueError) as exc:
        print(f"smtpedge ocsp serve: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(responder, host.strip("[]") or "127.0.0.1", int(port)))
    except KeyboardInterrupt:
        pass
    return 0


_DESCRIPTION = """\
smtpedge: an SMTP server for the mail edge, and the tools around it.

The server speaks ESMTP with PIPELINING, CHUNKING, SMTPUTF8, SIZE and the DSN
parameters, STARTTLS with OCSP stapling, and the PROXY protocol (v1 and v2)
from the load balancers in hosts_proxy. Every accepted message is on stable
storage before its 250. It does not deliver mail yet: messages stay queued.
"""

_EPILOG = """\
examples:
  smtpedge serve                       listen on 127.0.0.1:2525, data in ./smtpedge-data
  smtpedge serve --config edge.toml    options as in docs/configuration.md
  smtpedge config > edge.toml          every option with its default, commented
  smtpedge queue list --spool-directory /var/spool/smtpedge

'smtpedge COMMAND --help' tells more about each command.
"""


def main(argv: Sequence[str] | None = None) -> int:
    from smtpedge.config import Config, ConfigError

    defaults = Config()
    port = ", ".join(str(p) for p in defaults.daemon_smtp_ports)
    listen = ", ".join(defaults.local_interfaces)
    where = f"data directory: queue, spool files, logs (default: {defaults.spool_directory})"
    config_help = "TOML configuration file (options as in docs/configuration.md)"
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="smtpedge", description=_DESCRIPTION, epilog=_EPILOG,
                                     formatter_class=formatter)  # fmt: skip
    parser.add_argument("--version", action="version", version=f"smtpedge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("demo", help="show the protocol hot paths at work on sample input")
    sub.add_parser("info", help="print the version and the backend in use")
    serve = sub.add_parser(
        "serve", help=f"run the SMTP server (default: {listen} port {port})",
        description="Run the SMTP server in the foreground until SIGTERM or SIGINT. "
        "Without --config it uses the embedded default configuration "
        "('smtpedge config' prints it). Log lines go to stderr and the log file.",
    )  # fmt: skip
    serve.add_argument("--config", help=config_help + " (default: the embedded default)")
    serve.add_argument("--workers", type=int,
                       help=f"worker processes (default: {defaults.workers})")  # fmt: skip
    serve.add_argument("--port", type=int, help=f"listen on this port (default: {port})")
    serve.add_argument("--listen", help=f"listen on this address (default: {listen})")
    serve.add_argument("--spool-directory", help=where)
    conf = sub.add_parser(
        "config", help="print the effective configuration as TOML",
        description="Print every option, with a comment, as TOML: the embedded default, "
        "or --config's file with its defaults filled in.",
    )  # fmt: skip
    conf.add_argument("--config", help=config_help)
    # --config and --spool-directory go before or after the queue sub-command;
    # SUPPRESS keeps one given before from being reset by the one after.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=config_help)
    common.add_argument("--spool-directory", default=argparse.SUPPRESS, help=where)
    queue = sub.add_parser("queue", parents=[common], help="look at the queue: list, show, remove",
                           description="Look at the queue of a server's data directory. "
                           "Safe beside a running server.")  # fmt: skip
    qsub = queue.add_subparsers(dest="queue_command", required=True, metavar="QUEUE_COMMAND")
    qsub.add_parser("list", parents=[common], help="one line per message, then its recipients")
    qsub.add_parser("show", parents=[common],
                    help="envelope and content of one message").add_argument("id")  # fmt: skip
    qsub.add_parser("remove", parents=[common], help="delete one message").add_argument("id")
    ocsp_p = sub.add_parser("ocsp", help="OCSP proofs: fetch (and keep fresh), or serve")
    osub = ocsp_p.add_subparsers(dest="ocsp_command", required=True, metavar="OCSP_COMMAND")
    fetch = osub.add_parser("fetch", help="fetch, verify and store an OCSP proof")
    fetch.add_argument("--cert", required=True, help="the certificate (PEM; its chain may follow)")
    fetch.add_argument("--issuer", help="the issuer certificate (default: second in --cert)")
    fetch.add_argument("--out", required=True, help="the proof file (tls_ocsp_file)")
    fetch.add_argument("--url", help="the responder (default: from the certificate's AIA)")
    fetch.add_argument("--timeout", type=float, default=10.0,
                       help="seconds per request (default: 10)")  # fmt: skip
    fetch.add_argument("--watch", action="store_true", help="keep the proof fresh, forever")
    fetch.add_argument(
        "--min-interval",
        type=float,
        default=60.0,
        help="never refresh sooner than this many seconds (with --watch; default: 60)",
    )
    oserve = osub.add_parser("serve", help="run an OCSP responder for your CA",
                             description="Answer OCSP requests (POST and GET) for one CA from "
                             "its OpenSSL index.txt, until SIGTERM or SIGINT.")  # fmt: skip
    oserve.add_argument("--ca", required=True, help="the CA certificate (PEM)")
    oserve.add_argument("--key", required=True, help="the signing key (CA's or delegate's)")
    oserve.add_argument("--signer", help="a delegated responder certificate (default: the CA)")
    oserve.add_argument("--index", required=True, help="OpenSSL CA database (index.txt)")
    oserve.add_argument("--listen", default="127.0.0.1:8080",
                        help="address:port (default: 127.0.0.1:8080)")  # fmt: skip
    oserve.add_argument("--validity", default="1h",
                        help="nextUpdate after thisUpdate (default: 1h)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        if args.command == "ocsp":
            return _ocsp(args)
        if args.command == "demo":
            return _demo()
        if args.command in ("serve", "config", "queue"):
            try:
                config = _load_config(args)
            except ConfigError as exc:
                print(f"smtpedge: configuration error: {exc}", file=sys.stderr)
                return 2
            if args.command == "config":
                sys.stdout.write(config.to_toml())
                return 0
            if args.command == "queue":
                return _queue(args, config)
            from smtpedge.daemon import run

            return run(config)
        print(f"smtpedge {__version__} backend={BACKEND} build={BUILD_PROFILE}")
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (smtpedge demo | head): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
