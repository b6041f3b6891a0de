"""Relay control: which recipients a client may give, so that smtpedge is
never an open relay.

The rule is Exim's default ``acl_check_rcpt``: a recipient in
``local_domains`` or ``relay_to_domains`` is taken from anyone; any other
domain only from a client in ``relay_from_hosts`` (the real client, behind a
proxy). Everyone else gets ``550 5.7.1 Relaying not permitted``.

Only the domain decides, after the address parser has done its work: a source
route (``<@a,@b:user@c>``) is reduced to ``user@c`` (RFC 5321 section 4.1.1.3
lets a server ignore it), a quoted local part or one holding ``%`` or ``!``
stays a local part of the domain after the last ``@`` and is never read as a
route (no percent hack). ``<Postmaster>`` without a domain is always taken
(RFC 5321 section 4.5.1).
"""

from __future__ import annotations

from smtpedge.config import Config
from smtpedge.domainlist import normalize_domain

__all__ = ["RELAY_DENIED", "RelayPolicy"]

RELAY_DENIED = "550 5.7.1 Relaying not permitted"


class RelayPolicy:
    """The three lists of a configuration, with the per-client answer of
    ``relay_from_hosts`` cached (it may need the client's verified name)."""

    def __init__(self, config: Config) -> None:
        self.local_domains = config.local_domains
        self.relay_to_domains = config.relay_to_domains
        self.relay_from_hosts = config.relay_from_hosts
        self.primary_hostname = config.hostname
        self.own_addresses = tuple(config.local_interfaces)
        self._from: dict[tuple[str, str | None], bool] = {}
        # domain -> (a valid domain, a local domain, a relay_to_domains one)
        self._domains: dict[str, tuple[bool, bool, bool]] = {}

    def _domain(self, domain: str) -> tuple[bool, bool, bool]:
        known = self._domains.get(domain)
        if known is None:
            if len(self._domains) > 10_000:
                self._domains.clear()
            local = not domain or self.local_domains.match(
                domain, self.primary_hostname, self.own_addresses
            )
            relay_to = bool(domain) and self.relay_to_domains.match(
                domain, self.primary_hostname, self.own_addresses
            )
            valid = not domain or normalize_domain(domain) is not None
            known = self._domains[domain] = (valid, local, relay_to)
        return known

    def is_local(self, domain: str) -> bool:
        """Is this a domain we deliver to ourselves? (An address with no
        domain, ``<Postmaster>``, is local.)"""
        return self._domain(domain)[1]

    def may_relay_from(self, ip: str, name: str | None = None) -> bool:
        key = (ip, name)
        allowed = self._from.get(key)
        if allowed is None:
            if len(self._from) > 10_000:
                self._from.clear()
            allowed = self._from[key] = self.relay_from_hosts.match(ip, hostname=name)
        return allowed

    def permits(self, domain: str, ip: str, name: str | None = None) -> bool:
        """May this client give a recipient in ``domain``?"""
        valid, local, relay_to = self._domain(domain)
        if not valid:
            return self.may_relay_from(ip, name)  # not a domain we could hold
        if local or relay_to:
            return True
        return self.may_relay_from(ip, name)
