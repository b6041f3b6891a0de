"""Routers, in Exim's model: an ordered list of named instances, each with a
driver, that decide for one address where it goes.

Each router first checks its preconditions (``domains``, ``local_parts``,
``senders``; in verify mode also ``verify``); if they do not hold, the next
router is tried. A router whose preconditions hold either handles the address
(``accept``: to a transport, possibly with a list of hosts), redirects it to
other addresses, fails it, defers it, or declines; on a decline the next
router is tried, unless the router has ``no_more``. An address that no router
handles is unrouteable (``550 5.1.1`` at RCPT time, a failure later).

Drivers:

- ``redirect``: an aliases file (``file``, the ``/etc/aliases`` format) or
  ``data`` (the redirection for every address the router takes, e.g.
  ``"root"`` with ``local_parts = ["postmaster"]``): one or several targets,
  ``:fail: text``, ``:defer: text``, ``:blackhole:``. The addresses it
  produces are routed again from the first router; the redirect router that
  produced an address is skipped for it (chains within one file are followed
  at once).
- ``accept``: takes the address, to its ``transport``;
  ``check_local_user`` restricts it to the system's accounts.
- ``manualroute``: to ``route_data`` (hosts for every domain it takes) or
  ``route_list`` (``"domain-pattern host[:port] host ..."`` entries, the first
  whose pattern matches decides).
- ``dnslookup``: the domain's MX hosts in preference order (equal
  preferences shuffled), the domain itself when it has no MX (the implicit
  MX), each with its A and AAAA addresses; a null MX (RFC 7505) fails; when
  the best MX is this host, ``self`` decides (``defer``, ``fail``, ``pass``
  to the next router, ``send`` anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import pwd
import random
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smtpedge.config import Config, ConfigError
from smtpedge.delivery.aliases import AliasError, Aliases, Redirect
from smtpedge.delivery.dnssec import Lookup, SecureResolver
from smtpedge.domainlist import DomainList, DomainListError, normalize_domain

__all__ = [
    "DEFAULT_ROUTERS",
    "Host",
    "Resolver",
    "Route",
    "Router",
    "Routing",
    "parse_host",
]

#: The routers used when the configuration names none: mail for other
#: domains goes by MX; local mail is looked up in /etc/aliases (if there is
#: one), postmaster goes to root, and the system's users get it in maildirs.
DEFAULT_ROUTERS: tuple[dict[str, Any], ...] = (
    {"name": "dnslookup", "driver": "dnslookup", "domains": ["! +local_domains"],
     "transport": "remote_smtp", "no_more": True},
    {"name": "system_aliases", "driver": "redirect", "file": "/etc/aliases",
     "optional": True},
    {"name": "postmaster", "driver": "redirect", "local_parts": ["postmaster"],
     "data": "root"},
    {"name": "localuser", "driver": "accept", "check_local_user": True,
     "transport": "local_delivery"},
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Host:
    """A host to deliver to: its name (for the certificate check and the
    log), the address to connect to (None: look the name up when
    connecting), the port, its MX preference when it came from an MX,
    whether its address lookup was DNSSEC-secure (RFC 7672 needs that before
    it looks for TLSA records), and when the name is an alias whose CNAME
    chain is secure, the name it expands to (the preferred TLSA base
    domain, RFC 7672 section 2.2.3)."""

    name: str
    address: str | None = None
    port: int | None = None
    mx: int | None = None
    secure: bool = False
    expanded: str | None = None  # the name a secure CNAME chain led to

    def __str__(self) -> str:
        where = self.name if self.address in (None, self.name) else f"{self.name} [{self.address}]"
        return where if self.port is None else f"{where}:{self.port}"


@dataclass(frozen=True, slots=True)
class Route:
    """What a router decided for an address. ``kind`` is ``accept`` (to
    ``transport``, to ``hosts`` for a remote transport), ``redirect`` (to
    ``targets``), ``blackhole``, ``fail`` or ``defer`` (with ``status`` and
    ``text``). A router may also answer ``decline`` with a reason, which
    ``Routing.route`` never returns: the next router is asked."""

    kind: str
    router: str
    address: str
    transport: str | None = None
    hosts: tuple[Host, ...] = ()
    targets: tuple[str, ...] = ()
    status: str = ""
    text: str = ""
    dsn_lasthop: bool = False
    domain: str = ""  # the next-hop domain (dnslookup)
    dnssec: bool = False  # its MX lookup (or implicit-MX denial) was DNSSEC-secure
    expanded_domain: str = ""  # the name the MX records were for, when a CNAME led there


class Resolver:
    """DNS lookups for the routers (dnspython, asynchronous), DNSSEC-aware
    (``smtpedge.delivery.dnssec``): every answer says whether it was
    secure. ``nameservers`` are ``address`` or ``address:port``
    (``[v6]:port``); empty: the system's resolv.conf. Names under
    ``invalid.`` do not exist and are not looked up (RFC 6761)."""

    def __init__(self, nameservers: Sequence[str] = (), timeout: float = 10.0) -> None:
        self.secure = SecureResolver(nameservers, timeout)

    async def lookup(self, name: str, rdtype: str) -> Lookup:
        return await self.secure.lookup(name, rdtype)

    async def query(self, name: str, rdtype: str) -> tuple[str, list[Any]]:
        """``("ok", records)``, ``("nxdomain", [])``, ``("nodata", [])`` or
        ``("error", [reason])`` (a server failure or timeout: try later)."""
        found = await self.lookup(name, rdtype)
        return _KINDS[found.kind], list(found.records) if not found.failed else [found.reason]

    async def addresses(self, name: str) -> tuple[str, list[str]]:
        """A and AAAA of a host: ``("ok", addresses)``, or as ``query``."""
        status, found, _ = await self.secure_addresses(name)
        return status, found

    async def expansion(self, name: str) -> str | None:
        """The name a CNAME chain from ``name`` ends at, when every step of
        it is secure (None: ``name`` is no alias, or a step is insecure)."""
        steps = await self.secure.cname_chain(name)
        if not steps or not all(lookup.secure for _, lookup in steps):
            return None
        return str(steps[-1][1].records[0].target.to_text(omit_final_dot=True).lower())

    async def secure_addresses(self, name: str) -> tuple[str, list[str], bool]:
        """As ``addresses``, and whether every answer was DNSSEC-secure."""
        results = await asyncio.gather(self.lookup(name, "A"), self.lookup(name, "AAAA"))
        found = [r.address for lk in results if lk.kind == "answer" for r in lk.records]
        secure = all(lk.secure for lk in results)
        failed = [lk for lk in results if lk.failed]
        if found:
            return "ok", found, secure and not failed
        if failed:
            return "error", [failed[0].reason], False
        if all(lk.kind == "nxdomain" for lk in results):
            return "nxdomain", [], secure
        return "nodata", [], secure


_KINDS = {"answer": "ok", "nxdomain": "nxdomain", "nodata": "nodata", "error": "error"}


def parse_host(text: str) -> Host:
    """``name``, ``name:port``, ``[address]``, ``[address]:port`` or a bare
    address (an IPv6 address needs the brackets to take a port)."""
    text = text.strip()
    if not text:
        raise ValueError("empty host")
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"{text!r}: missing ]")
        inner = inner.removeprefix("IPv6:").removeprefix("ipv6:")
        try:
            ipaddress.ip_address(inner)
        except ValueError:
            raise ValueError(f"{text!r}: not an address in brackets") from None
        port = _port(rest[1:], text) if rest.startswith(":") else None
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r}: junk after ]")
        return Host(inner, inner, port)
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(text)
        return Host(text, text)
    name, sep, port_text = text.rpartition(":")
    if not sep:
        name, port_text = text, ""
    port = _port(port_text, text) if port_text else None
    if normalize_domain(name.rstrip(".")) is None:
        raise ValueError(f"{text!r}: not a host name")
    return Host(name.rstrip(".").lower(), None, port)


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{whole!r}: bad port {text!r}")
    return int(text)


# -- options ------------------------------------------------------------------------------

_GENERIC = {"name", "driver", "domains", "local_parts", "senders", "transport", "verify",
            "no_more", "dsn_lasthop"}  # fmt: skip
_DRIVER_OPTIONS = {
    "redirect": {"file", "data", "optional", "allow_fail", "allow_defer"},
    "accept": {"check_local_user"},
    "manualroute": {"route_data", "route_list"},
    "dnslookup": {"self", "mx_required"},
}
_NEEDS_TRANSPORT = ("accept", "manualroute", "dnslookup")
_SELF = ("defer", "fail", "pass", "send")


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(i.strip() for i in value.split(":") if i.strip())
    if isinstance(value, list | tuple) and all(isinstance(i, str) for i in value):
        return tuple(value)
    raise ConfigError(where, "must be a list of strings (or one string, items split by ':')")


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(where, "must be true or false")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(where, "must be a string")
    return value


@dataclass
class Router:
    """One router instance (see the module docstring)."""

    name: str
    driver: str
    domains: DomainList | None = None
    local_parts: tuple[str, ...] | None = None
    senders: tuple[str, ...] | None = None
    transport: str | None = None
    verify: bool = True
    no_more: bool = False
    dsn_lasthop: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    _aliases: tuple[float, Aliases] | None = None

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str, transports: Sequence[str]) -> Router:
        name = table.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}.name", "every router needs a name")
        where = f"routers.{name}"
        driver = table.get("driver")
        if driver not in _DRIVER_OPTIONS:
            raise ConfigError(
                f"{where}.driver", f"must be one of {', '.join(_DRIVER_OPTIONS)}, not {driver!r}"
            )
        assert isinstance(driver, str)
        router = cls(name, driver)
        allowed = _GENERIC | _DRIVER_OPTIONS[driver]
        for key, value in table.items():
            at = f"{where}.{key}"
            if key not in allowed:
                raise ConfigError(at, f"not an option of the {driver} router")
            if key == "domains":
                try:
                    router.domains = DomainList(
                        _strings(value, at), names=("local_domains", "relay_to_domains")
                    )
                except DomainListError as exc:
                    raise ConfigError(at, str(exc)) from None
            elif key == "local_parts":
                router.local_parts = tuple(i.lower() for i in _strings(value, at))
            elif key == "senders":
                router.senders = tuple(i.lower() for i in _strings(value, at))
            elif key == "transport":
                router.transport = _text(value, at)
                if router.transport not in transports:
                    raise ConfigError(
                        at,
                        f"no transport named {router.transport!r} "
                        f"(there are: {', '.join(transports) or 'none'})",
                    )
            elif key in ("verify", "no_more", "dsn_lasthop", "optional", "allow_fail",
                         "allow_defer", "check_local_user", "mx_required"):  # fmt: skip
                value = _flag(value, at)
                if key in ("verify", "no_more", "dsn_lasthop"):
                    setattr(router, key, value)
                else:
                    router.options[key] = value
            elif key in ("file", "data"):
                router.options[key] = _text(value, at)
            elif key == "self":
                if value not in _SELF:
                    raise ConfigError(at, f"must be one of {', '.join(_SELF)}")
                router.options[key] = value
            elif key == "route_data":
                try:
                    router.options[key] = tuple(parse_host(h) for h in _strings(value, at))
                except ValueError as exc:
                    raise ConfigError(at, str(exc)) from None
            elif key == "route_list":
                router.options[key] = tuple(_route_entry(e, at) for e in _strings(value, at))
        if driver == "redirect" and ("file" in router.options) == ("data" in router.options):
            raise ConfigError(where, "a redirect router needs file or data (one of them)")
        if driver == "redirect" and "file" in router.options:
            router.load_aliases()  # a bad file stops the start with a clear message
        if driver == "manualroute" and not (router.options.get("route_data")
                                            or router.options.get("route_list")):  # fmt: skip
            raise ConfigError(where, "a manualroute router needs route_data or route_list")
        if driver in _NEEDS_TRANSPORT and router.transport is None:
            raise ConfigError(f"{where}.transport", f"a {driver} router needs a transport")
        return router

    # -- preconditions --------------------------------------------------------------

    def applies(self, local: str, domain: str, sender: str, routing: Routing) -> bool:
        if self.domains is not None and not self.domains.match(
            domain or routing.primary_hostname, routing.primary_hostname,
            routing.own_addresses, routing.named,
        ):  # fmt: skip
            return False
        if self.local_parts is not None and local.lower() not in self.local_parts:
            return False
        if self.senders is not None:
            s = sender.lower()
            sdomain = s.rpartition("@")[2]
            if not any(p == s or (p.startswith("*@") and p[2:] == sdomain)
                       or (p == "<>" and not s) or p == "*" for p in self.senders):  # fmt: skip
                return False
        return True

    # -- drivers ----------------------------------------------------------------------

    def load_aliases(self) -> Aliases | None:
        """The aliases file, re-read when it changes; None when it is
        missing and ``optional``."""
        path = Path(self.options["file"])
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            if self.options.get("optional"):
                return None
            raise ConfigError(f"routers.{self.name}.file", f"{path} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"routers.{self.name}.file",
                              f"cannot read {path}: {exc.strerror}") from None  # fmt: skip
        if self._aliases is None or self._aliases[0] != mtime:
            try:
                self._aliases = (mtime, Aliases.load(path))
            except (AliasError, OSError) as exc:
                raise ConfigError(f"routers.{self.name}.file", str(exc)) from None
        return self._aliases[1]

    async def route(self, address: str, sender: str, routing: Routing) -> Route | None:
        """Handle ``address``, or None to decline."""
        local, _, domain = address.rpartition("@")
        if not local:
            local, domain = address, ""
        if self.driver == "redirect":
            return self._redirect(address, local, domain)
        if self.driver == "accept":
            if self.options.get("check_local_user") and not _is_local_user(local):
                return None
            return self._accept(address)
        if self.driver == "manualroute":
            hosts = self.options.get("route_data")
            if not hosts:
                hosts = next(
                    (
                        h
                        for pattern, h in self.options.get("route_list", ())
                        if pattern.match(
                            domain, routing.primary_hostname, routing.own_addresses, routing.named
                        )
                    ),
                    None,
                )
            if not hosts:
                return None
            return self._accept(address, tuple(hosts))
        return await self._dnslookup(address, domain, routing)

    def _accept(self, address: str, hosts: tuple[Host, ...] = (), *, domain: str = "",
                dnssec: bool = False, expanded_domain: str = "") -> Route:  # fmt: skip
        return Route("accept", self.name, address, self.transport, hosts,
                     dsn_lasthop=self.dsn_lasthop, domain=domain, dnssec=dnssec,
                     expanded_domain=expanded_domain)  # fmt: skip

    def _redirect(self, address: str, local: str, domain: str) -> Route | None:
        if "data" in self.options:
            entry = Aliases.parse(f"{local}: {self.options['data']}", f"routers.{self.name}.data")
            result = entry.resolve(address)
        else:
            try:
                aliases = self.load_aliases()
            except ConfigError as exc:
                return Route("defer", self.name, address, status="4.3.0", text=str(exc))
            if aliases is None or aliases.lookup(local) is None:
                return None
            result = aliases.resolve(address)
        return self._redirect_result(address, result)

    def _redirect_result(self, address: str, result: Redirect) -> Route | None:
        if result.fail is not None:
            if self.options.get("allow_fail", True):
                return Route("fail", self.name, address, status="5.1.1",
                             text=result.fail or "Unrouteable address")  # fmt: skip
            return Route("defer", self.name, address, status="4.3.0",
                         text=":fail: is not allowed in this router")  # fmt: skip
        if result.defer is not None:
            if self.options.get("allow_defer", True):
                return Route("defer", self.name, address, status="4.3.0",
                             text=result.defer or "deferred by the aliases")  # fmt: skip
            return Route("defer", self.name, address, status="4.3.0",
                         text=":defer: is not allowed in this router")  # fmt: skip
        if result.blackhole:
            return Route("blackhole", self.name, address)
        if result.targets == (address,):
            return None  # it redirects to itself: nothing for this router to do
        return Route("redirect", self.name, address, targets=result.targets)

    async def _dnslookup(self, address: str, domain: str, routing: Routing) -> Route | None:
        name = normalize_domain(domain.rstrip("."))
        if name is None or name.startswith("["):
            return None  # address literals are not looked up in the DNS
        resolver = routing.resolver
        mx = await resolver.lookup(name, "MX")
        status, records = _KINDS[mx.kind], list(mx.records)
        if mx.failed:
            return Route("defer", self.name, address, status="4.4.3",
                         text=f"DNS lookup of MX for {name} failed: {mx.reason}")  # fmt: skip
        if status == "nxdomain":
            # Exim: the domain does not exist, the router declines (saying why).
            return Route("decline", self.name, address, status="5.1.2",
                         text=f"domain {name} does not exist")  # fmt: skip
        mxs: list[tuple[int, str]] = []
        if status == "ok":
            for r in records:
                target = r.exchange.to_text(omit_final_dot=True).lower()
                if target in ("", "."):
                    if len(records) == 1:  # RFC 7505: a null MX, no mail accepted
                        return Route("fail", self.name, address, status="5.1.10",
                                     text=f"domain {name} accepts no mail (null MX)")  # fmt: skip
                    continue
                mxs.append((int(r.preference), target))
        if not mxs:
            if self.options.get("mx_required"):
                return None
            mxs = [(-1, name)]  # the implicit MX (RFC 5321 section 5.1)
        by_pref: dict[int, list[str]] = {}
        for pref, target in mxs:
            by_pref.setdefault(pref, []).append(target)
        ordered: list[tuple[int, str]] = []
        for pref in sorted(by_pref):
            group = list(dict.fromkeys(by_pref[pref]))
            random.shuffle(group)
            ordered.extend((pref, t) for t in group)
        hosts: list[Host] = []
        deferred: str | None = None
        lookups = await asyncio.gather(*(resolver.secure_addresses(t) for _, t in ordered))
        for (pref, target), (astatus, addresses, secure) in zip(ordered, lookups, strict=True):
            if astatus == "error":  # RFC 7672 2.2.2: a host whose addresses fail is skipped
                deferred = f"DNS lookup of {target} failed: {addresses[0]}"
                continue
            expanded = await resolver.expansion(target) if secure and addresses else None
            for a in addresses:
                hosts.append(Host(target, a, None, None if pref < 0 else pref, secure, expanded))
        if not hosts:
            if deferred:
                return Route("defer", self.name, address, status="4.4.3", text=deferred)
            return Route("fail", self.name, address, status="5.1.2",
                         text=f"all hosts for {name} have no addresses")  # fmt: skip
        # RFC 5321 section 5.1: when this host is an MX, only better ones are used.
        own = [h for h in hosts if routing.is_own_address(h.address)]
        if own:
            best_own = min(h.mx if h.mx is not None else -1 for h in own)
            better = [h for h in hosts if (h.mx if h.mx is not None else -1) < best_own]
            if better:
                hosts = better
            else:
                mode = self.options.get("self", "defer")
                text = f"lowest numbered MX record for {name} points to this host"
                if mode == "fail":
                    return Route("fail", self.name, address, status="5.4.6", text=text)
                if mode == "pass":
                    return None
                if mode == "defer":
                    return Route("defer", self.name, address, status="4.4.6", text=text)
        expanded = mx.canonical if mx.canonical and mx.canonical != name else ""
        return self._accept(address, tuple(hosts), domain=name, dnssec=mx.secure,
                            expanded_domain=expanded)  # fmt: skip


def _route_entry(text: str, where: str) -> tuple[DomainList, tuple[Host, ...]]:
    parts = text.split()
    if len(parts) < 2:
        raise ConfigError(where, f"{text!r}: want 'domain-pattern host ...'")
    try:
        pattern = DomainList([parts[0]], names=("local_domains", "relay_to_domains"))
        return pattern, tuple(parse_host(h) for h in parts[1:])
    except (ValueError, DomainListError) as exc:
        raise ConfigError(where, str(exc)) from None


def _is_local_user(local: str) -> bool:
    if not local or local.startswith("-") or "/" in local:
        return False
    try:
        pwd.getpwnam(local.lower())
    except KeyError:
        return False
    return True


class Routing:
    """The routers of a configuration, run in order for each address."""

    def __init__(
        self,
        routers: Sequence[Router],
        config: Config,
        resolver: Resolver | None = None,
    ) -> None:
        self.routers = tuple(routers)
        self.primary_hostname = config.hostname
        self.own_addresses = tuple(config.local_interfaces)
        self.named = {"local_domains": config.local_domains,
                      "relay_to_domains": config.relay_to_domains}  # fmt: skip
        try:
            self.resolver = resolver or Resolver(config.dns_nameservers)
        except ValueError as exc:
            raise ConfigError("dns_nameservers", str(exc)) from None
        self._own = {a for a in config.local_interfaces if _is_address(a)}
        if "0.0.0.0" in config.local_interfaces or "::" in config.local_interfaces:
            self._own.update(_host_addresses())

    @classmethod
    def from_config(
        cls, config: Config, transports: Sequence[str], resolver: Resolver | None = None
    ) -> Routing:
        tables = config.routers or DEFAULT_ROUTERS
        routers = []
        names: set[str] = set()
        for i, table in enumerate(tables):
            router = Router.from_table(table, f"routers[{i}]", transports)
            if router.name in names:
                raise ConfigError(f"routers.{router.name}", "two routers have this name")
            names.add(router.name)
            routers.append(router)
        return cls(routers, config, resolver)

    def is_own_address(self, address: str | None) -> bool:
        """Is this one of the addresses this server listens on?"""
        return address is not None and address in self._own

    async def route(
        self, address: str, sender: str, *, verifying: bool = False, skip: str | None = None
    ) -> Route:
        """Run the routers for ``address``. ``skip`` names a redirect router
        to pass over (the one that produced this address)."""
        local, _, domain = address.rpartition("@")
        if not local:
            local, domain = address, ""
        declined: Route | None = None
        for router in self.routers:
            if router.name == skip or (verifying and not router.verify):
                continue
            if not router.applies(local, domain, sender, self):
                continue
            result = await router.route(address, sender, self)
            if result is not None and result.kind == "decline":
                declined, result = result, None
            if result is not None:
                return result
            if router.no_more:
                break
        # Every router declined: the most specific reason known gives the status.
        return Route("fail", "", address, status=declined.status if declined else "5.1.1",
                     text="Unrouteable address")  # fmt: skip


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _host_addresses() -> set[str]:
    found = set()
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(str(info[4][0]))
    found.update(("127.0.0.1", "::1"))
    return found
