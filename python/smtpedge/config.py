"""Server configuration: every option, its default, and how it is checked.

Options are flat TOML keys named after Exim's options where Exim has one, so
operators can carry their knowledge over. ``Config.load(path)`` reads a file;
an unknown option or a bad value fails with a message naming the option.
``smtpedge config`` prints the effective configuration as TOML.
"""

from __future__ import annotations

import difflib
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from smtpedge.domainlist import DomainList, DomainListError
from smtpedge.hostlist import HostList, HostListError

__all__ = ["OPTIONS", "Config", "ConfigError", "RateLimit", "parse_duration", "parse_size"]


class ConfigError(ValueError):
    """A configuration option with a bad value, or an unknown option. When a
    file has several mistakes, one ConfigError reports them all: ``errors``
    holds one ``(option, message)`` pair per mistake, ``option`` the first."""

    def __init__(self, option: str, message: str,
                 errors: list[tuple[str, str]] | None = None) -> None:  # fmt: skip
        self.errors = errors or [(option, message)]
        text = "; ".join(f"option {o}: {m}" for o, m in self.errors)
        if len(self.errors) > 1:
            text = f"{len(self.errors)} mistakes: {text}"
        super().__init__(text)
        self.option = option


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_size(value: str | int) -> int:
    """Exim size syntax: ``50M``, ``100K``, ``2G`` or a plain number of bytes."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number or a string like '50M'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size must not be negative")
        return value
    s = value.strip().upper()
    unit = s[-1:] if s[-1:] in ("K", "M", "G") else ""
    digits = s[: len(s) - len(unit)].strip()
    if not digits.isdigit():
        raise ValueError(f"bad size {value!r} (use e.g. 50M, 100K or a number of bytes)")
    return int(digits) * _SIZE_UNITS[unit]


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")


def parse_duration(text: str | int | float) -> float:
    """Exim time syntax: ``30s``, ``5m``, ``1h30m``, ``2d``; a bare number is seconds."""
    if isinstance(text, bool):
        raise ValueError("a duration must be a number or a string like '5m'")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError("a duration must not be negative")
        return float(text)
    s = text.strip().replace(" ", "")
    if not s:
        raise ValueError("empty duration")
    total = 0.0
    pos = 0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2) or "s"]
        pos = m.end()
    if pos != len(s):
        raise ValueError(f"bad duration {text!r} (use e.g. 30s, 5m, 1h)")
    return total


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A parsed ``N / period / per_conn / strict|leaky`` specification."""

    limit: float
    period: float
    strict: bool

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        parts = [p.strip() for p in text.split("/")]
        if len(parts) < 2:
            raise ValueError(f"bad ratelimit {text!r} (use e.g. '10 / 1m / per_conn / strict')")
        try:
            limit = float(parts[0])
        except ValueError:
            raise ValueError(f"bad ratelimit count {parts[0]!r}") from None
        if limit < 0:
            raise ValueError("the ratelimit count must not be negative")
        period = parse_duration(parts[1])
        if period <= 0:
            raise ValueError("the ratelimit period must be positive")
        strict = False
        for opt in parts[2:]:
            if opt == "strict":
                strict = True
            elif opt == "leaky":
                strict = False
            elif opt != "per_conn":
                raise ValueError(f"unsupported ratelimit option {opt!r} (per_conn, strict, leaky)")
        return cls(limit, period, strict)

    def __str__(self) -> str:
        mode = "strict" if self.strict else "leaky"
        return f"{self.limit:g} / {self.period:g}s / per_conn / {mode}"


def _hostlist(v: Any) -> HostList:
    if isinstance(v, HostList):
        return v
    if isinstance(v, str) or (isinstance(v, list) and all(isinstance(i, str) for i in v)):
        return HostList(v)
    raise ValueError("a host list must be a string or an array of strings")


def _domainlist(v: Any) -> DomainList:
    if isinstance(v, DomainList):
        return v
    if isinstance(v, str) or (isinstance(v, list) and all(isinstance(i, str) for i in v)):
        return DomainList(v)
    raise ValueError("a domain list must be a string or an array of strings")


def _address_hostlist(v: Any) -> HostList:
    hl = _hostlist(v)
    if hl.needs_name:
        # The decision must be made at connect time, before any byte is read:
        # a proxy is known by its address, never by a DNS lookup.
        raise ValueError("takes addresses, networks, localhost and * only (no host names)")
    return hl


def _int(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    def conv(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError("must be an integer")
        if v < lo or (hi is not None and v > hi):
            raise ValueError(f"must be between {lo} and {hi}" if hi else f"must be at least {lo}")
        return v

    return conv


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("must be true or false")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("must be a string")
    return v


def _duration(v: Any) -> float:
    return parse_duration(v)


def _size(v: Any) -> int:
    return parse_size(v)


def _ports(v: Any) -> tuple[int, ...]:
    items = v if isinstance(v, list) else [v]
    out = []
    for p in items:
        if isinstance(p, str) and p.strip().isdigit():
            p = int(p)
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 65535:
            raise ValueError(f"bad port {p!r}")
        out.append(p)
    if not out:
        raise ValueError("at least one port is needed")
    return tuple(out)


def _interfaces(v: Any) -> tuple[str, ...]:
    import ipaddress

    items = v if isinstance(v, list) else [v]
    out = []
    for a in items:
        if not isinstance(a, str):
            raise ValueError("interfaces must be strings")
        try:
            out.append(str(ipaddress.ip_address(a.strip().strip("[]"))))
        except ValueError:
            raise ValueError(f"bad interface address {a!r}") from None
    if not out:
        raise ValueError("at least one interface is needed")
    return tuple(out)


def _paths(v: Any) -> tuple[str, ...]:
    items = v if isinstance(v, list | tuple) else [v]
    if not all(isinstance(i, str) for i in items):
        raise ValueError("must be a path or an array of paths")
    return tuple(str(i) for i in items if str(i) != "" or len(items) > 1)


def _ratelimit(v: Any) -> RateLimit | None:
    if v in ("", None):
        return None
    if isinstance(v, RateLimit):
        return v
    return RateLimit.parse(_str(v))


def _durations(v: Any) -> tuple[float, ...]:
    items = v if isinstance(v, list | tuple) else [v]
    out = tuple(_duration(i) for i in items if i not in ("", None))
    if any(d < 0 for d in out):
        raise ValueError("a time cannot be negative")
    return tuple(d for d in out if d > 0)


def _strings(v: Any) -> tuple[str, ...]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError("must be a string or an array of strings")
    return tuple(i for i in items if i.strip())


def _tables(v: Any) -> tuple[dict[str, Any], ...]:
    """Router instances: an array of tables, each with a name and a driver
    (their own options are checked when the routers are built)."""
    if not isinstance(v, list | tuple):
        raise ValueError("must be an array of tables ([[routers]] in TOML)")
    for t in v:
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not t["name"]:
            raise ValueError("each router is a table with a name and a driver")
        if not isinstance(t.get("driver"), str):
            raise ValueError(f"router {t['name']!r} has no driver")
    return tuple(dict(t) for t in v)


def _named_tables(v: Any) -> tuple[tuple[str, dict[str, Any]], ...]:
    """Transport instances: a table of tables, by name, each with a driver."""
    if isinstance(v, tuple):
        return v
    if not isinstance(v, dict):
        raise ValueError("must be a table of tables ([transports.<name>] in TOML)")
    for name, t in v.items():
        if not isinstance(t, dict) or not isinstance(t.get("driver"), str):
            raise ValueError(f"transport {name!r} needs a table with a driver")
    return tuple((str(k), dict(t)) for k, t in v.items())


def _choice(*choices: str) -> Callable[[Any], str]:
    def conv(v: Any) -> str:
        if v not in choices:
            raise ValueError("must be one of " + ", ".join(repr(c) for c in choices))
        return str(v)

    return conv


def _positive_duration(v: Any) -> float:
    d = parse_duration(v)
    if d <= 0:
        raise ValueError("must be more than 0s")
    return d


def _limits_store(v: Any) -> str:
    url = _str(v).strip()
    if url and not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must be a Redis URL: redis://host:port/db, rediss://... or unix://...")
    return url


def _metrics_address(v: Any) -> str:
    text = _str(v).strip()
    if text:
        from smtpedge.metrics import split_address

        split_address(text)
    return text


def _opt(default: Any, conv: Callable[[Any], Any], doc: str, toml: str | None = None) -> Any:
    return field(default=default, metadata={"conv": conv, "doc": doc, "toml": toml})


@dataclass(frozen=True)
class Config:
    """The server's configuration. Build one with ``Config.load(path)``,
    ``Config.from_mapping({...})`` or ``Config(...)`` (values already converted)."""

    primary_hostname: str = _opt(
        "", _str, "Name in the banner, EHLO reply and Received header (default: this host's FQDN)."
    )
    local_interfaces: tuple[str, ...] = _opt(
        ("127.0.0.1",), _interfaces, "Addresses to listen on.", '["127.0.0.1"]'
    )
    daemon_smtp_ports: tuple[int, ...] = _opt(
        (2525,), _ports, "Ports to listen on (0 picks a free port).", "[2525]"
    )
    spool_directory: str = _opt(
        "./smtpedge-data", _str, "Data directory: queue database, spool files and logs."
    )
    log_file_path: str = _opt(
        "",
        _str,
        "Log file (default: log/main.log in the spool directory; '-' for stderr only).",
    )
    log_format: str = _opt(
        "text",
        _choice("text", "json"),
        "text: one line per event, as Exim writes them; json: each line one JSON object "
        "with the same fields (time, pid, level, msg and the line's tags such as H= and R=).",
    )
    smtp_banner: str = _opt(
        "{hostname} ESMTP smtpedge {version}",
        _str,
        "Text of the 220 greeting; {hostname} and {version} are replaced.",
    )
    workers: int = _opt(
        0,
        _int(0, 64),
        "Worker processes sharing the listening sockets (SO_REUSEPORT); 0: one per CPU "
        "the server may run on.",
    )
    event_loop: str = _opt(
        "auto",
        _choice("auto", "uvloop", "asyncio"),
        "auto: uvloop (installed with smtpedge) where it runs, else asyncio's own loop.",
    )
    smtp_accept_max: int = _opt(
        1000, _int(0), "Most simultaneous connections, all workers together (0: no limit)."
    )
    smtp_accept_max_per_host: int = _opt(
        50,
        _int(0),
        "Most simultaneous connections per real (proxied) client address, so that one "
        "client cannot take every slot (0: no limit).",
    )
    smtp_connect_ratelimit: RateLimit | None = _opt(
        None,
        _ratelimit,
        "Per-client connection rate, Exim ratelimit syntax 'N / period / per_conn / strict' "
        "(empty: no limit); over the limit the client gets 421.",
        '""',
    )
    limits_store: str = _opt(
        "",
        _limits_store,
        "Where smtp_accept_max_per_host and smtp_connect_ratelimit are counted: empty for "
        "this machine (every worker shares one table), or a Redis URL (redis://host:port/db, "
        "rediss://, unix://) that every node of a cluster shares.",
    )
    limits_store_fail: str = _opt(
        "open",
        _choice("open", "closed"),
        "When the limits store cannot be reached: open admits connections without per-host "
        "limits, closed refuses them with 421.",
    )
    limits_store_lease: float = _opt(
        30.0, _positive_duration, "How long a connection's slot in the limits store lives "
        "unless its node renews it (slots of a node that died lapse after this).", '"30s"',
    )  # fmt: skip
    limits_store_timeout: float = _opt(
        1.0, _positive_duration, "Connect and reply timeout for the limits store.", '"1s"'
    )
    metrics_address: str = _opt(
        "",
        _metrics_address,
        "Serve Prometheus metrics over HTTP here (host:port, or a port on 127.0.0.1); "
        "empty: no metrics.",
    )
    drain_timeout: float = _opt(
        30.0, _duration, "On SIGTERM or smtpedge ctl drain: how long sessions in progress "
        "get to finish before they are sent 421.", '"30s"',
    )  # fmt: skip
    drain_health_checks: int = _opt(
        3, _int(0), "On drain, how many health checks (PROXY LOCAL connections) to fail "
        "before new sessions are refused, so the proxy has marked the node down (HAProxy's "
        "fall); skipped when no health check came in the last minute.",
    )  # fmt: skip
    hosts_proxy: HostList = _opt(
        HostList(),
        _address_hostlist,
        "Hosts (proxies) whose connections must begin with a PROXY v1 or v2 header. "
        "Addresses, networks, `localhost` and `*` only: the choice is made at connect time, "
        "before any DNS lookup.",
        "[]",
    )
    proxy_protocol_timeout: float = _opt(
        3.0, _duration, "Time from connect for a proxy to send its header.", '"3s"'
    )
    smtp_banner_delay: float = _opt(
        0.0,
        _duration,
        "Pause before the banner; a client that talks first is an early talker and is refused.",
        '"0s"',
    )
    smtp_enforce_sync: bool = _opt(
        True, _bool, "Refuse clients that send before the banner or break pipelining rules."
    )
    smtp_receive_timeout: float = _opt(
        300.0,
        _duration,
        "Time for each command line to arrive whole, however its bytes trickle in; "
        "then 421 4.4.2 and the connection is closed.",
        '"5m"',
    )
    smtp_data_timeout: float = _opt(
        300.0,
        _duration,
        "Time for each line of message data to arrive whole (in a BDAT chunk: each line or "
        "64 KiB); then 421 4.4.2 and the connection is closed.",
        '"5m"',
    )
    message_size_limit: int = _opt(
        50 * 1024**2, _size, "Largest message accepted (advertised with SIZE).", '"50M"'
    )
    recipients_max: int = _opt(
        1000,
        _int(1),
        "Most recipients in one transaction; more get 452 4.5.3. Beyond another "
        "recipients_max, each one counts as a protocol error (smtp_max_synprot_errors).",
    )
    smtp_max_refused_recipients: int = _opt(
        100,
        _int(1),
        "Refused recipients (5xx: relay denied, unknown user, a hook's refusal) in one "
        "session before 421 and close, like Postfix's smtpd_hard_error_limit.",
    )
    smtp_accept_max_nonmail: int = _opt(
        10,
        _int(0),
        "Commands other than MAIL, RCPT, DATA, BDAT and QUIT in one session before 421 and "
        "close (one RSET, one HELO or EHLO and one STARTTLS at the start of the session and "
        "after each message are free; 0: no limit).",
    )
    smtp_accept_max_nonmail_hosts: HostList = _opt(
        HostList("*"),
        _hostlist,
        "Clients whose non-mail commands are counted against smtp_accept_max_nonmail.",
        '["*"]',
    )
    smtp_accept_max_per_connection: int = _opt(
        1000,
        _int(0),
        "MAIL commands in one session; the next gets 421 and the connection is closed "
        "(0: no limit).",
    )
    smtp_max_synprot_errors: int = _opt(
        3, _int(0), "Syntax or protocol errors before the connection is closed."
    )
    smtp_max_unknown_commands: int = _opt(
        3, _int(0), "Unknown commands before the connection is closed."
    )
    smtp_max_line_length: int = _opt(
        2048, _int(512, 1024 * 1024), "Longest command line accepted, CRLF included."
    )
    bare_newline: str = _opt(
        "reject",
        _choice("reject", "normalize"),
        "A bare LF or CR in message data: 'reject' the message (550 5.5.2, against SMTP "
        "smuggling) or 'normalize' it to CRLF.",
    )
    dsn_advertise_hosts: HostList = _opt(
        HostList(),
        _hostlist,
        "Clients offered the DSN extension (default none: success notices leak forwarding).",
        "[]",
    )
    pipelining_advertise_hosts: HostList = _opt(
        HostList("*"), _hostlist, "Clients offered PIPELINING.", '["*"]'
    )
    chunking_advertise_hosts: HostList = _opt(
        HostList("*"), _hostlist, "Clients offered CHUNKING (BDAT).", '["*"]'
    )
    smtputf8_advertise_hosts: HostList = _opt(
        HostList("*"), _hostlist, "Clients offered SMTPUTF8.", '["*"]'
    )
    accept_8bitmime: bool = _opt(True, _bool, "Offer 8BITMIME.")
    local_domains: DomainList = _opt(
        DomainList(["@", "localhost"]),
        _domainlist,
        "Domains this server delivers to itself ('@' is primary_hostname). Mail for them is "
        "accepted from anyone.",
        '["@", "localhost"]',
    )
    relay_to_domains: DomainList = _opt(
        DomainList(),
        _domainlist,
        "Other domains whose mail is accepted from anyone, to pass on (a backup MX, say).",
        "[]",
    )
    relay_from_hosts: HostList = _opt(
        HostList(["localhost"]),
        _hostlist,
        "Clients that may send mail to any domain (localhost: the loopback addresses). "
        "Anyone else gets 550 5.7.1 for a domain in neither list above.",
        '["localhost"]',
    )
    vrfy_hosts: HostList = _opt(
        HostList(),
        _hostlist,
        "Clients that may use VRFY (others get 502); a handle_VRFY hook decides the answer.",
        "[]",
    )
    tls_advertise_hosts: HostList = _opt(
        HostList("*"), _hostlist, "Clients offered STARTTLS.", '["*"]'
    )
    tls_certificate: tuple[str, ...] = _opt(
        (),
        _paths,
        "Certificate files (PEM, leaf first, then the chain), e.g. an RSA and an ECDSA one; "
        "{sni} picks files by the client's SNI. Empty: a self-signed pair made in the data "
        "directory on first start.",
        "[]",
    )
    tls_privatekey: tuple[str, ...] = _opt(
        (), _paths, "Key files, one per tls_certificate, in the same order.", "[]"
    )
    tls_ocsp_file: tuple[str, ...] = _opt(
        (),
        _paths,
        "OCSP proofs (DER or PEM), one per tls_certificate ('' for none); re-read on each "
        "connection and stapled only when they verify.",
        "[]",
    )
    tls_handshake_timeout: float = _opt(
        30.0, _duration, "Time for a client to complete the TLS handshake.", '"30s"'
    )
    tls_required_hosts: HostList = _opt(
        HostList(),
        _hostlist,
        "Clients that must use STARTTLS before MAIL (others get 530 5.7.0).",
        "[]",
    )
    spool_inline_max: int = _opt(
        1024 * 1024,
        _size,
        "Messages up to this size are stored inside the queue database (one fsync per batch); "
        "larger ones go to spool files, written to disk as they arrive so that memory never "
        "holds a whole big message.",
        '"1M"',
    )
    queue_commit_batch: int = _opt(
        256, _int(1, 100_000), "Most messages made durable in one group commit."
    )
    queue_only: bool = _opt(
        False, _bool, "Accept and queue mail but run no deliveries (`smtpedge queue run` does)."
    )
    queue_run_max: int = _opt(
        50, _int(1, 10_000), "Most messages being delivered at once by the queue runner."
    )
    remote_max_per_host: int = _opt(
        10, _int(1, 1000), "Most simultaneous SMTP connections to one remote host."
    )
    queue_poll_interval: float = _opt(
        1.0,
        _duration,
        "How often the runner looks for mail queued by other worker processes (mail queued "
        "in its own process starts at once).",
        '"1s"',
    )
    routers: tuple[dict[str, Any], ...] = _opt(
        (),
        _tables,
        "Routers, in order, as [[routers]] tables (docs/delivery.md); none: the built-in "
        "dnslookup, system_aliases, postmaster and localuser.",
        "[]",
    )
    transports: tuple[tuple[str, dict[str, Any]], ...] = _opt(
        (),
        _named_tables,
        "Transports by name, as [transports.<name>] tables (docs/delivery.md), added to the "
        "built-in local_delivery (maildir) and remote_smtp (smtp).",
        "{}",
    )
    retry_rules: tuple[str, ...] = _opt(
        ("* * F,2h,15m; G,16h,1h,1.5; F,4d,6h",),
        _strings,
        "Retry rules, one per string, as Exim's retry section: 'pattern error sets'.",
        '["* * F,2h,15m; G,16h,1h,1.5; F,4d,6h"]',
    )
    delay_warning: tuple[float, ...] = _opt(
        (86400.0,),
        _durations,
        "When to send delay reports, counted from arrival; the last interval repeats "
        '([] or "0s": none).',
        '["24h"]',
    )
    dsn_from: str = _opt(
        "",
        _str,
        "From of delivery reports (default: Mail Delivery System "
        "<Mailer-Daemon@primary_hostname>).",
    )
    bounce_return_size_limit: int = _opt(
        100 * 1024,
        _size,
        "Largest message returned whole in a failure report (RET=FULL); a bigger one "
        "returns its headers.",
        '"100K"',
    )
    dns_nameservers: tuple[str, ...] = _opt(
        (),
        _strings,
        "DNS servers for the routers ('address' or 'address:port'); none: /etc/resolv.conf.",
        "[]",
    )

    @property
    def hostname(self) -> str:
        return self.primary_hostname or socket.getfqdn()

    @property
    def spool_path(self) -> Path:
        return Path(self.spool_directory)

    @property
    def log_path(self) -> Path | None:
        if self.log_file_path == "-":
            return None
        if self.log_file_path:
            return Path(self.log_file_path)
        return self.spool_path / "log" / "main.log"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], base: Config | None = None) -> Config:
        """Convert and check raw values (as read from TOML) on top of ``base``."""
        known = {f.name: f for f in fields(cls)}
        converted: dict[str, Any] = {}
        errors: list[tuple[str, str]] = []
        for key, raw in values.items():
            f = known.get(key)
            if f is None:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                errors.append((key, f"unknown option{hint}"))
                continue
            try:
                converted[key] = f.metadata["conv"](raw)
            except (ValueError, HostListError, DomainListError) as exc:
                errors.append((key, str(exc)))
        if not errors:
            config = replace(base or cls(), **converted)
            try:
                config._check_tls()
            except ConfigError as exc:
                errors.extend(exc.errors)
        if errors:
            raise ConfigError(errors[0][0], errors[0][1], errors)
        return config

    def _check_tls(self) -> None:
        if len(self.tls_certificate) != len(self.tls_privatekey):
            raise ConfigError(
                "tls_privatekey",
                f"{len(self.tls_privatekey)} key(s) for {len(self.tls_certificate)} certificate(s)",
            )
        if self.tls_ocsp_file and len(self.tls_ocsp_file) != len(self.tls_certificate):
            raise ConfigError(
                "tls_ocsp_file", "give one per tls_certificate ('' for a certificate without one)"
            )

    @classmethod
    def load(cls, path: str | Path) -> Config:
        """Read a TOML configuration file."""
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from None
        return cls.from_mapping(data)

    def to_toml(self) -> str:
        """The configuration as a commented TOML file."""
        lines = []
        for f in fields(self):
            if f.name in ("routers", "transports"):
                continue
            lines.append(f"# {f.metadata['doc']}")
            lines.append(f"{f.name} = {_toml_value(getattr(self, f.name))}")
            lines.append("")
        # Tables come after every plain key.
        for name, table in self.transports:
            lines.append(f"[transports.{name}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
            lines.append("")
        for table in self.routers:
            lines.append("[[routers]]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
            lines.append("")
        return "\n".join(lines)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, HostList | DomainList):
        return "[" + ", ".join(_toml_value(i) for i in v.source) + "]"
    if isinstance(v, tuple | list):
        return "[" + ", ".join(_toml_value(i) for i in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(i)}" for k, i in v.items()) + "}"
    if v is None:
        return '""'
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


OPTIONS: tuple[str, ...] = tuple(f.name for f in fields(Config))
