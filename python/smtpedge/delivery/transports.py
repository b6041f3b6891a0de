"""Transports, in Exim's model: named instances that deliver a message to the
recipients a router gave them.

- ``maildir``: into one maildir per local user (``directory``, a path with
  ``{local_part}`` and ``{domain}``, relative to the data directory unless
  absolute), atomically (tmp, fsync, link into new), with Return-Path and
  Delivered-To added.
- ``smtp``: to the router's hosts in turn with ``smtpedge.sending.SMTPClient``
  (up to ``hosts_max_try`` of them), reusing connections to a host for
  further messages, at most ``remote_max_per_host`` at once. TLS follows
  Exim's per-host options (``hosts_require_tls``, ``hosts_avoid_tls``,
  ``tls_verify_hosts``, ``tls_try_verify_hosts``, ``tls_verify_certificates``,
  ``tls_verify_cert_hostnames``, ``hosts_request_ocsp``,
  ``hosts_require_ocsp``). When opportunistic TLS fails on a host that
  requires neither TLS nor verification, the message goes to that host in
  clear (Exim's ``tls_tempfail_tryclear``); a host whose policy requires TLS
  is never used without it: the next host is tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from smtpedge import metrics
from smtpedge.config import Config, ConfigError, parse_duration
from smtpedge.delivery.dnssec import SecureResolver
from smtpedge.delivery.maildir import MaildirError, deliver
from smtpedge.delivery.routers import Host
from smtpedge.esmtp import Recipient
from smtpedge.hostlist import HostList, HostListError
from smtpedge.log import logger
from smtpedge.protocol.client import Response
from smtpedge.sending import (
    OutgoingMessage,
    SendResult,
    SMTPClient,
    SMTPClientError,
    TLSPolicy,
)
from smtpedge.tls.dane import TLSARecord, usable_records

__all__ = [
    "DEFAULT_TRANSPORTS",
    "Delivered",
    "Job",
    "MaildirDelivery",
    "SMTPDelivery",
    "Transport",
    "build_transports",
]

DEFAULT_TRANSPORTS: dict[str, dict[str, Any]] = {
    "local_delivery": {"driver": "maildir", "directory": "mail/{local_part}"},
    "remote_smtp": {"driver": "smtp"},
}


@dataclass(frozen=True, slots=True)
class Job:
    """One message for some of its recipients, with the hosts to try."""

    queue_id: str
    sender: str
    recipients: tuple[Recipient, ...]
    content: bytes
    mail_params: tuple[tuple[str, str | None], ...] = ()
    smtputf8: bool = False
    hosts: tuple[Host, ...] = ()
    domain: str = ""  # the next-hop domain the router looked up
    dnssec: bool = False  # and whether its MX lookup was DNSSEC-secure
    expanded_domain: str = ""  # the name a CNAME turned it into, if one did


@dataclass(frozen=True, slots=True)
class Delivered:
    """What happened to one recipient in one delivery attempt.

    ``state`` is ``delivered``, ``failed`` or ``deferred``; ``status`` an
    RFC 3463 code; ``error`` the retry-rule error kind of a deferral;
    ``remote_mta`` and ``reply`` the host that answered and its reply;
    ``dsn`` whether the next hop offered DSN (a local delivery: None);
    ``detail`` what the log line should add (host, TLS, OCSP)."""

    recipient: Recipient
    state: str
    status: str
    text: str
    error: str = "*"
    remote_mta: str | None = None
    reply: Response | None = None
    dsn: bool | None = None
    detail: str = ""


class Transport:
    name: str
    driver: str
    remote: bool

    async def deliver(self, job: Job) -> list[Delivered]:  # pragma: no cover - interface
        raise NotImplementedError

    async def close(self) -> None:
        return None


class MaildirDelivery(Transport):
    driver = "maildir"
    remote = False

    def __init__(self, name: str, options: Mapping[str, Any], config: Config) -> None:
        self.name = name
        directory = options.get("directory", "mail/{local_part}")
        if not isinstance(directory, str) or "{local_part}" not in directory:
            raise ConfigError(f"transports.{name}.directory",
                              "must be a path holding {local_part}")  # fmt: skip
        path = Path(directory)
        self.template = str(path if path.is_absolute() else config.spool_path.resolve() / path)
        self.hostname = config.hostname

    def maildir_for(self, address: str) -> Path:
        local, _, domain = address.rpartition("@")
        if not local:
            local, domain = address, ""
        local = local.strip('"').lower()
        if not local or local.startswith(".") or "/" in local or "\0" in local:
            raise MaildirError("5.1.3", f"local part {local!r} cannot name a maildir")
        return Path(self.template.format(local_part=local, domain=domain.lower()))

    def _deliver_one(self, job: Job, r: Recipient) -> Delivered:
        try:
            path = deliver(self.maildir_for(r.address), job.content, return_path=job.sender,
                           delivered_to=r.address, hostname=self.hostname)  # fmt: skip
        except MaildirError as exc:
            state = "deferred" if exc.transient else "failed"
            return Delivered(r, state, exc.status, exc.text, error="*")
        return Delivered(r, "delivered", "2.0.0", "delivered", detail=f"{path.parent.parent}")

    async def deliver(self, job: Job) -> list[Delivered]:
        return await asyncio.to_thread(lambda: [self._deliver_one(job, r) for r in job.recipients])


_SMTP_OPTIONS = {
    "driver", "port", "hosts", "helo_data", "interface", "connect_timeout", "command_timeout",
    "data_timeout", "max_rcpt", "hosts_max_try", "hosts_require_tls", "hosts_avoid_tls",
    "tls_verify_hosts", "tls_try_verify_hosts", "tls_verify_certificates",
    "tls_verify_cert_hostnames", "hosts_request_ocsp", "hosts_require_ocsp",
    "connection_cache_time", "hosts_try_dane", "hosts_require_dane",
}  # fmt: skip
_MAILDIR_OPTIONS = {"driver", "directory"}


def _literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def _hostlist(options: Mapping[str, Any], key: str, default: Sequence[str], where: str) -> HostList:
    try:
        return HostList(options.get(key, list(default)))
    except (HostListError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}.{key}", str(exc)) from None


def _number(options: Mapping[str, Any], key: str, default: float, where: str,
            duration: bool = False) -> float:  # fmt: skip
    value = options.get(key, default)
    try:
        n = parse_duration(value) if duration else float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}.{key}", str(exc)) from None
    if n <= 0:
        raise ConfigError(f"{where}.{key}", "must be more than 0")
    return n


@dataclass(frozen=True, slots=True)
class DanePlan:
    """What DANE says for one host: ``none`` (not used: the usual TLS
    policy), ``dane`` (TLS authenticated by ``usable`` records, checked
    against ``names``), ``tls`` (TLS required, unauthenticated: every record
    was unusable) or ``fail`` (the host cannot be used: ``reason``)."""

    mode: str
    records: tuple[TLSARecord, ...] = ()
    usable: tuple[TLSARecord, ...] = ()
    names: tuple[str, ...] = ()
    reason: str = ""

    def policy(self) -> TLSPolicy | None:
        if self.mode == "dane":
            return TLSPolicy(starttls="require", verify="none", request_ocsp=False,
                             dane=self.usable, dane_names=self.names)  # fmt: skip
        if self.mode == "tls":
            return TLSPolicy(starttls="require", verify="none", request_ocsp=False)
        return None


class SMTPDelivery(Transport):
    driver = "smtp"
    remote = True

    def __init__(self, name: str, options: Mapping[str, Any], config: Config) -> None:
        self.name = name
        where = f"transports.{name}"
        self.port = int(_number(options, "port", 25, where))
        self.hosts: tuple[Host, ...] = ()
        if "hosts" in options:
            from smtpedge.delivery.routers import parse_host

            try:
                self.hosts = tuple(parse_host(h) for h in options["hosts"])
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{where}.hosts", str(exc)) from None
        self.helo = str(options.get("helo_data") or config.hostname)
        self.interface = options.get("interface") or None
        self.connect_timeout = _number(options, "connect_timeout", 300, where, True)
        self.command_timeout = _number(options, "command_timeout", 300, where, True)
        self.data_timeout = _number(options, "data_timeout", 300, where, True)
        self.cache_time = _number(options, "connection_cache_time", 2, where, True)
        self.max_rcpt = int(_number(options, "max_rcpt", 100, where))
        self.hosts_max_try = int(_number(options, "hosts_max_try", 5, where))
        self.require_tls = _hostlist(options, "hosts_require_tls", (), where)
        self.avoid_tls = _hostlist(options, "hosts_avoid_tls", (), where)
        self.verify = _hostlist(options, "tls_verify_hosts", (), where)
        self.try_verify = _hostlist(options, "tls_try_verify_hosts", ("*",), where)
        self.check_names = _hostlist(options, "tls_verify_cert_hostnames", ("*",), where)
        self.request_ocsp = _hostlist(options, "hosts_request_ocsp", ("*",), where)
        self.require_ocsp = _hostlist(options, "hosts_require_ocsp", (), where)
        ca = options.get("tls_verify_certificates", "system")
        if not isinstance(ca, str):
            raise ConfigError(f"{where}.tls_verify_certificates", "a CA file or 'system'")
        self.ca_file = None if ca == "system" else ca
        if self.ca_file is not None and not Path(self.ca_file).is_file():
            raise ConfigError(f"{where}.tls_verify_certificates", f"no file {self.ca_file}")
        self.try_dane = _hostlist(options, "hosts_try_dane", ("*",), where)
        self.require_dane = _hostlist(options, "hosts_require_dane", (), where)
        self._dns: SecureResolver | None = None
        self._nameservers = config.dns_nameservers
        self.max_per_host = config.remote_max_per_host
        self._slots: dict[tuple[str, int], asyncio.Semaphore] = {}
        self._idle: dict[tuple[str, int], list[tuple[SMTPClient, float]]] = {}
        self._reaper: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Future[None]] = set()

    def policy_for(self, host: Host, address: str) -> TLSPolicy:
        def on(hl: HostList) -> bool:
            return bool(hl) and hl.match(address, hostname=host.name)

        starttls = "require" if on(self.require_tls) else "never" if on(self.avoid_tls) else (
            "opportunistic")  # fmt: skip
        verify = "require" if on(self.verify) else "try" if on(self.try_verify) else "none"
        require_ocsp = on(self.require_ocsp)
        if starttls == "never":
            verify, require_ocsp = "none", False
        return TLSPolicy(starttls=starttls, verify=verify, ca_file=self.ca_file,
                         check_hostname=on(self.check_names),
                         request_ocsp=on(self.request_ocsp) or require_ocsp,
                         require_ocsp=require_ocsp)  # fmt: skip

    async def dane_for(self, host: Host, job: Job) -> DanePlan:
        """RFC 7672 for one host: look for its TLSA records when DANE may be
        used with it and its address came from a secure lookup."""

        def on(hl: HostList) -> bool:
            return bool(hl) and hl.match(host.address or host.name, hostname=host.name)

        required, tried = on(self.require_dane), on(self.try_dane)
        if not (required or tried) or _literal(host.name):
            return DanePlan("none")
        if not host.secure:
            # An insecure address answer: no TLSA lookup at all (RFC 7672 2.2.2).
            if required:
                return DanePlan("fail", reason=f"the address of {host.name} is not "
                                "DNSSEC-validated, and DANE is required")  # fmt: skip
            return DanePlan("none")
        if self._dns is None:
            self._dns = SecureResolver(self._nameservers)
        port = host.port or self.port
        # The TLSA base domain: the CNAME-expanded name first, then the name
        # itself (RFC 7672 2.2.3); the first secure answer decides, and a
        # failed lookup stops the search (the host is unusable).
        base = host.name
        for base in [n for n in (host.expanded, host.name) if n]:
            tlsa = await self._dns.lookup(f"_{port}._tcp.{base}", "TLSA")
            if tlsa.failed:  # never "no TLSA": the host is unusable
                return DanePlan("fail", reason=f"TLSA lookup for {base} failed ({tlsa.reason})")
            if tlsa.secure and tlsa.kind == "answer":
                break
        if not tlsa.secure or tlsa.kind != "answer":
            if required:
                return DanePlan("fail", reason=f"no secure TLSA records for {host.name} "
                                f"({tlsa.describe()}), and DANE is required")  # fmt: skip
            return DanePlan("none")
        records = tuple(TLSARecord(int(r.usage), int(r.selector), int(r.mtype), bytes(r.cert))
                        for r in tlsa.records)  # fmt: skip
        usable = tuple(usable_records(records))
        if not usable:
            # Every record unusable: TLS is still required, unauthenticated
            # (RFC 7672 section 2.2; Exim defers here).
            if required:
                return DanePlan("fail", reason=f"no usable TLSA records for {host.name}, "
                                "and DANE is required")  # fmt: skip
            return DanePlan("tls", records=records)
        # Reference identifiers (RFC 7672 3.2.2): the TLSA base domain (sent
        # as SNI), the MX host name, and the next-hop domain (and the name a
        # CNAME turned it into) when its MX lookup was secure.
        names = [base, host.name]
        if job.dnssec:
            names += [job.domain, job.expanded_domain]
        names = list(dict.fromkeys(n for n in names if n))
        return DanePlan("dane", records=records, usable=usable, names=tuple(names))

    async def _addresses(self, host: Host) -> list[str]:
        if host.address is not None:
            return [host.address]
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host.name, None, type=1)
        except OSError:
            return []
        return list(dict.fromkeys(str(i[4][0]) for i in infos))

    async def deliver(self, job: Job) -> list[Delivered]:
        pending = list(job.recipients)
        final: list[Delivered] = []
        last: dict[str, Delivered] = {}
        hosts = job.hosts or self.hosts
        if not hosts:
            return [Delivered(r, "deferred", "4.3.5", f"no hosts for transport {self.name}")
                    for r in pending]  # fmt: skip
        tried = 0
        plans: dict[tuple[str, int | None], DanePlan] = {}
        for host in hosts:
            if not pending or tried >= self.hosts_max_try:
                break
            key = (host.name, host.port)
            if key not in plans:
                plans[key] = await self.dane_for(host, job)
            plan = plans[key]
            if plan.mode == "fail":
                for r in pending:
                    last[r.address] = Delivered(r, "deferred", "4.7.5", plan.reason,
                                                "tls_required", detail=f"H={host}")  # fmt: skip
                logger.info("%s H=%s: %s", job.queue_id, host, plan.reason)
                metrics.dane.labels("failed").inc()
                continue
            addresses = await self._addresses(host)
            if not addresses:
                for r in pending:
                    last[r.address] = Delivered(
                        r, "deferred", "4.4.4", f"host {host.name} has no address", "timeout"
                    )
                continue
            for address in addresses:
                if not pending or tried >= self.hosts_max_try:
                    break
                tried += 1
                target = replace(host, address=address, port=host.port or self.port)
                results = []
                for i in range(0, len(pending), self.max_rcpt):
                    batch = tuple(pending[i : i + self.max_rcpt])
                    results.extend(await self._to_host(job, batch, target, plan))
                pending = []
                for d in results:
                    if d.state == "deferred" and d.error != "rcpt_4xx":
                        pending.append(d.recipient)  # the next host may do better
                        last[d.recipient.address] = d
                    else:
                        final.append(d)
                if pending:
                    why = last[pending[0].address]
                    logger.info("%s H=%s: %s (%s)", job.queue_id, target, why.text, why.error)
        final.extend(last[r.address] for r in pending if r.address in last)
        done = {d.recipient.address for d in final}
        final.extend(Delivered(r, "deferred", "4.4.1", "no host could be tried", "timeout")
                     for r in pending if r.address not in done)  # fmt: skip
        return final

    # -- one host ---------------------------------------------------------------------

    async def _to_host(self, job: Job, recipients: tuple[Recipient, ...], host: Host,
                       plan: DanePlan) -> list[Delivered]:  # fmt: skip
        assert host.address is not None and host.port is not None
        key = (host.address, host.port)
        slot = self._slots.setdefault(key, asyncio.Semaphore(self.max_per_host))
        message = OutgoingMessage(job.sender, recipients, job.content, job.mail_params,
                                  job.smtputf8)  # fmt: skip
        async with slot:
            # With DANE in use, the other TLS options do not apply (as in Exim).
            policy = plan.policy() or self.policy_for(host, host.address)
            client = self._take_idle(key)
            try:
                if client is None:
                    try:
                        client = await self._connect(host, policy)
                    except SMTPClientError:
                        if plan.mode == "dane":
                            metrics.dane.labels("failed").inc()
                        raise
                    if client.dane is not None:
                        metrics.dane.labels("yes" if job.dnssec else "host").inc()
                    elif client.tls is not None:
                        metrics.ocsp_out.labels(client.ocsp).inc()
                    if client.dane is not None:
                        logger.info("%s H=%s: %s%s", job.queue_id, host, client.dane.describe(),
                                    "" if job.dnssec else " (the MX lookup was insecure: "
                                    "this host is authenticated, not the domain)")  # fmt: skip
                result = await client.send(message)
            except SMTPClientError as exc:
                if client is not None:
                    await client.close()
                return self._connection_failed(recipients, host, exc)
            if client.connected:
                self._put_idle(key, client)
            return self._outcomes(result, host, client, job)

    async def _connect(self, host: Host, policy: TLSPolicy) -> SMTPClient:
        assert host.address is not None and host.port is not None
        client = self._client(host, policy)
        try:
            await client.connect()
            return client
        except SMTPClientError as exc:
            if not _tls_failure(exc) or policy.starttls != "opportunistic" or (
                policy.verify == "require" or policy.require_ocsp
            ):  # fmt: skip
                raise
            logger.info("TLS with %s failed (%s): trying it in clear", host, exc.response.text)
        clear = TLSPolicy(starttls="never", verify="none", request_ocsp=False)
        client = self._client(host, clear)
        await client.connect()
        return client

    def _client(self, host: Host, policy: TLSPolicy) -> SMTPClient:
        assert host.address is not None and host.port is not None
        return SMTPClient(host.address, host.port, helo_name=self.helo, server_name=host.name,
                          source_address=self.interface, tls=policy,
                          connect_timeout=self.connect_timeout,
                          command_timeout=self.command_timeout,
                          data_timeout=self.data_timeout)  # fmt: skip

    def _connection_failed(self, recipients: Sequence[Recipient], host: Host,
                           exc: SMTPClientError) -> list[Delivered]:  # fmt: skip
        resp = exc.response
        kind = _error_kind(resp)
        remote = None if resp.local else host.name
        state = "failed" if resp.permanent else "deferred"
        return [Delivered(r, state, _status(resp), resp.text, kind, remote, resp,
                          detail=f"H={host}") for r in recipients]  # fmt: skip

    def _outcomes(self, result: SendResult, host: Host, client: SMTPClient,
                  job: Job) -> list[Delivered]:  # fmt: skip
        detail = f"H={host}"
        if client.tls is not None:
            cv = {True: "yes", False: "no", None: "none"}[client.tls_verified]
            if client.dane is not None:
                cv = "dane"
            detail += f" X={client.tls.version}:{client.tls.cipher} CV={cv}"
        if client.dane is not None:
            # After an insecure MX lookup only the host is authenticated, not
            # the domain's choice of it (RFC 7672 2.2.1): say so.
            dane = "yes" if job.dnssec else "host"
            detail += f" tls_out_dane={dane} tls_out_tlsa_usage={client.dane.record.usage}"
        else:
            detail += f" tls_out_ocsp={client.ocsp}"
        out = []
        for rr in result.results:
            resp = rr.response
            remote = None if resp.local else host.name
            if rr.accepted:
                out.append(
                    Delivered(
                        rr.recipient,
                        "delivered",
                        _status(resp),
                        resp.text,
                        remote_mta=remote,
                        reply=resp,
                        dsn=result.dsn,
                        detail=detail + f' C="{resp.code} {resp.text[:100]}"',
                    )
                )
                continue
            if resp is result.response:
                kind = "mail_4xx" if result.stage == "MAIL" else "data_4xx"
            else:
                kind = "rcpt_4xx"
            state = "failed" if resp.permanent else "deferred"
            out.append(Delivered(rr.recipient, state, _status(resp), resp.text, kind, remote,
                                 resp, result.dsn, detail))  # fmt: skip
        return out

    # -- the connection cache ---------------------------------------------------------

    def _take_idle(self, key: tuple[str, int]) -> SMTPClient | None:
        idle = self._idle.get(key)
        while idle:
            client, _ = idle.pop()
            if client.connected:
                return client
        return None

    def _put_idle(self, key: tuple[str, int], client: SMTPClient) -> None:
        self._idle.setdefault(key, []).append((client, time.monotonic()))
        if self._reaper is None:
            loop = asyncio.get_running_loop()
            self._reaper = loop.call_later(self.cache_time, self._reap)

    def _reap(self) -> None:
        self._reaper = None
        now = time.monotonic()
        keep = False
        for key, idle in list(self._idle.items()):
            for item in list(idle):
                if now - item[1] >= self.cache_time or not item[0].connected:
                    idle.remove(item)
                    task = asyncio.ensure_future(item[0].quit())
                    self._closing.add(task)
                    task.add_done_callback(self._closing.discard)
            if idle:
                keep = True
            else:
                del self._idle[key]
        if keep:
            self._reaper = asyncio.get_running_loop().call_later(self.cache_time, self._reap)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        clients = [c for idle in self._idle.values() for c, _ in idle]
        self._idle.clear()
        with contextlib.suppress(Exception):
            await asyncio.gather(*(c.quit() for c in clients), return_exceptions=True)


def _status(resp: Response) -> str:
    cls = str(resp.code // 100)
    if resp.status and resp.status.split(".", 1)[0] == cls:
        return resp.status
    if cls == "2":
        return "2.0.0"
    return f"{cls}.0.0"


def _tls_failure(exc: SMTPClientError) -> bool:
    return exc.response.local and (exc.response.status or "").startswith("4.7.")


def _error_kind(resp: Response) -> str:
    """The retry-rule error kind of a failed connection."""
    text = resp.text.lower()
    if resp.local and (resp.status or "").startswith("4.7."):
        return "tls_required"
    if "refused" in text:
        return "refused"
    if "timeout" in text or "timed out" in text:
        return "timeout"
    if resp.local:
        return "lost_connection"
    return "mail_4xx"  # the banner or the greeting refused us


def build_transports(config: Config) -> dict[str, Transport]:
    """Every transport of a configuration: the built-in ones, overridden or
    added to by ``transports``."""
    tables = dict(DEFAULT_TRANSPORTS)
    tables.update(dict(config.transports))
    out: dict[str, Transport] = {}
    for name, table in tables.items():
        where = f"transports.{name}"
        driver = table.get("driver")
        allowed = _SMTP_OPTIONS if driver == "smtp" else _MAILDIR_OPTIONS
        if driver not in ("smtp", "maildir"):
            raise ConfigError(f"{where}.driver", f"must be smtp or maildir, not {driver!r}")
        for key in table:
            if key not in allowed:
                raise ConfigError(f"{where}.{key}", f"not an option of the {driver} transport")
        out[name] = (SMTPDelivery if driver == "smtp" else MaildirDelivery)(name, table, config)
    return out
