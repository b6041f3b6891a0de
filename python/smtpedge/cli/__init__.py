"""The ``smtpedge`` command line (also ``python -m smtpedge``): the argument
parser here, each command in a module of its own (``serve``, ``queue``,
``ocsp``, ``demo``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from smtpedge import BACKEND, BUILD_PROFILE, __version__

if TYPE_CHECKING:
    from smtpedge.config import Config


def _load_config(args: argparse.Namespace) -> Config:
    from smtpedge.config import Config

    path = getattr(args, "config", None)
    config = Config.load(path) if path else Config()
    overrides: dict[str, object] = {}
    if getattr(args, "spool_directory", None):
        overrides["spool_directory"] = args.spool_directory
    if getattr(args, "workers", None) is not None:
        overrides["workers"] = args.workers
    if getattr(args, "port", None) is not None:
        overrides["daemon_smtp_ports"] = [args.port]
    if getattr(args, "listen", None):
        overrides["local_interfaces"] = [args.listen]
    return Config.from_mapping(overrides, config) if overrides else config


_DESCRIPTION = """\
smtpedge: an SMTP server for the mail edge, and the tools around it.

The server speaks ESMTP with PIPELINING, CHUNKING, SMTPUTF8, SIZE and the DSN
parameters, STARTTLS with OCSP stapling, and the PROXY protocol (v1 and v2)
from the load balancers in hosts_proxy. Every accepted message is on stable
storage before its 250; the queue runner then delivers it through Exim-style
routers and transports (local maildirs, the next hop by SMTP) and sends the
delivery status notifications each outcome calls for.
"""

_EPILOG = """\
examples:
  smtpedge serve                       listen on 127.0.0.1:2525, data in ./smtpedge-data
  smtpedge serve --config edge.toml    options as in docs/configuration.md
  smtpedge config > edge.toml          every option with its default, commented
  smtpedge queue list --spool-directory /var/spool/smtpedge
  smtpedge queue flush                 try every queued message now

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
                       help="worker processes (default: one per CPU)")  # fmt: skip
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
    queue = sub.add_parser("queue", parents=[common],
                           help="manage the queue: list, show, flush, retry, remove, run",
                           description="Look at and manage the queue of a server's data "
                           "directory. Safe beside a running server, except run, which "
                           "delivers itself and so needs the server stopped.")  # fmt: skip
    qsub = queue.add_subparsers(dest="queue_command", required=True, metavar="QUEUE_COMMAND")
    qsub.add_parser(
        "list",
        parents=[common],
        help="one line per message, then each recipient's state and last error",
    )
    qsub.add_parser("show", parents=[common],
                    help="envelope, recipient states and content of one message"
                    ).add_argument("id")  # fmt: skip
    qsub.add_parser("flush", parents=[common],
                    help="make every message due now, whatever its retry time")  # fmt: skip
    qsub.add_parser("retry", parents=[common],
                    help="make one message due now").add_argument("id")  # fmt: skip
    qsub.add_parser("remove", parents=[common], help="delete one message").add_argument("id")
    qsub.add_parser(
        "run",
        parents=[common],
        help="deliver what is due, once, then exit (with the server stopped)",
    )
    ctl_p = sub.add_parser("ctl", parents=[common], help="control a running server: drain, "
                           "reload, status",
                           description="Signal the smtpedge serve that holds the data "
                           "directory (its PID is in smtpedge.pid there).")  # fmt: skip
    csub = ctl_p.add_subparsers(dest="ctl_command", required=True, metavar="CTL_COMMAND")
    drain = csub.add_parser("drain", parents=[common],
                            help="fail health checks, finish sessions and deliveries, exit "
                            "(SIGTERM)")  # fmt: skip
    drain.add_argument("--wait", action="store_true", help="return once the server has exited")
    drain.add_argument("--timeout", type=float, default=300.0,
                       help="seconds --wait waits at most (default: 300)")  # fmt: skip
    csub.add_parser("reload", parents=[common],
                    help="read the configuration again (SIGHUP)")  # fmt: skip
    csub.add_parser("status", parents=[common], help="whether a server runs, and its PID")
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
    dane_p = sub.add_parser("dane", help="check a domain's DANE for SMTP")
    dsub = dane_p.add_subparsers(dest="dane_command", required=True, metavar="DANE_COMMAND")
    dcheck = dsub.add_parser("check", help="what a DANE-aware sender finds for a domain",
                             description="Look up the domain's MX hosts and their TLSA records "
                             "with DNSSEC, connect to each address with STARTTLS and check "
                             "its certificate chain against the records (RFC 7672). Exit 0 "
                             "only when every MX host is DANE-verified.")  # fmt: skip
    dcheck.add_argument("domain")
    dcheck.add_argument("--nameserver", action="append",
                        help="validating resolver, address or address:port (default: "
                        "resolv.conf's); may be given more than once")  # fmt: skip
    dcheck.add_argument("--port", type=int, default=25, help="SMTP port (default: 25)")
    dcheck.add_argument("--timeout", type=float, default=30.0,
                        help="seconds per lookup and per reply (default: 30)")  # fmt: skip
    dcheck.add_argument("--json", action="store_true", help="the report as JSON")
    tlsa_p = sub.add_parser("tlsa", help="TLSA records for DANE")
    tsub = tlsa_p.add_subparsers(dest="tlsa_command", required=True, metavar="TLSA_COMMAND")
    create = tsub.add_parser("create", help="print the TLSA record to publish for a certificate",
                             description="Print the TLSA record (RFC 6698) for a certificate, "
                             "as it goes into a zone file.")  # fmt: skip
    create.add_argument("certificate", help="the certificate (PEM or DER; the first in the file)")
    create.add_argument(
        "--usage",
        type=int,
        choices=[0, 1, 2, 3],
        default=3,
        help="3: DANE-EE, this certificate; 2: DANE-TA, a CA (default: 3)",
    )
    create.add_argument(
        "--selector",
        type=int,
        choices=[0, 1],
        default=1,
        help="0: the whole certificate, 1: its public key (default: 1)",
    )
    create.add_argument(
        "--mtype",
        type=int,
        choices=[0, 1, 2],
        default=1,
        help="0: in full, 1: SHA2-256, 2: SHA2-512 (default: 1)",
    )
    create.add_argument("--port", type=int, default=25, help="default: 25")
    create.add_argument("--protocol", choices=["tcp", "udp", "sctp"], default="tcp")
    create.add_argument("--host", help="the server's name (default: the certificate's first)")
    args = parser.parse_args(argv)
    try:
        if args.command == "dane":
            from smtpedge.cli import dane

            return dane.run(args)
        if args.command == "tlsa":
            from smtpedge.cli import tlsa

            return tlsa.run(args)
        if args.command == "ocsp":
            from smtpedge.cli import ocsp

            return ocsp.run(args)
        if args.command == "demo":
            from smtpedge.cli import demo

            return demo.run()
        if args.command in ("serve", "config", "queue", "ctl"):
            try:
                config = _load_config(args)
            except ConfigError as exc:
                print(f"smtpedge: configuration error: {exc}", file=sys.stderr)
                return 2
            if args.command == "config":
                sys.stdout.write(config.to_toml())
                return 0
            if args.command == "ctl":
                from smtpedge.cli import ctl

                return ctl.run(args, config)
            if args.command == "queue":
                from smtpedge.cli import queue as queue_command

                return queue_command.run(args, config)
            from smtpedge.cli.serve import run

            return run(config, load=lambda: _load_config(args))
        print(f"smtpedge {__version__} backend={BACKEND} build={BUILD_PROFILE}")
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (smtpedge demo | head): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
