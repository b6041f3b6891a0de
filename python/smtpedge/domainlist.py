"""Exim-style domain lists: which mail domains an option applies to
(``local_domains``, ``relay_to_domains``).

Items are tried in order and the first that matches decides; a ``!`` in front
of an item makes a match mean "not in the list". A list whose last item is
negated matches whatever no item matched (``! +local_domains``: every domain
but the local ones), as in Exim. An empty list matches nothing.

    example.com       that domain (case does not matter; U-labels and A-labels
                      are the same domain)
    *.example.com     any subdomain of example.com (Exim: a leading * matches
    *example.com      any string, so this one matches example.com too)
    @                 the primary hostname
    @[]               an address literal of one of the server's own addresses
                      (``[127.0.0.1]``, ``[IPv6:::1]``): the loopback addresses
                      and those in local_interfaces
    ^regex            a regular expression, matched from the start of the
                      domain (in lower case)
    *                 every domain
    +local_domains    another list by name, where the option allows it (a
                      router's ``domains`` may name ``local_domains`` and
                      ``relay_to_domains``)

A list is a TOML array of items, or one string in Exim's syntax (items
separated by ``:``, as for host lists).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from smtpedge._idna import to_ascii
from smtpedge.hostlist import split_list

__all__ = ["DomainList", "DomainListError", "normalize_domain"]

_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


class DomainListError(ValueError):
    """A domain list item that cannot be understood."""


def normalize_domain(domain: str) -> str | None:
    """The form domains are compared in: A-labels, lower case. An address
    literal keeps its brackets (``[192.0.2.1]``, ``[ipv6:2001:db8::1]``, the
    address in its compressed form). None for a domain that is not valid."""
    if domain.startswith("[") and domain.endswith("]"):
        inner = domain[1:-1]
        tag = ""
        if inner[:5].lower() == "ipv6:":
            tag, inner = "ipv6:", inner[5:]
        try:
            address = ipaddress.ip_address(inner)
        except ValueError:
            return None
        if (address.version == 6) != bool(tag):
            return None
        return f"[{tag}{address.compressed}]"
    ascii_form = to_ascii(domain)
    if ascii_form is None:
        return None
    name = ascii_form.lower()
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        return None
    return name


@dataclass(frozen=True, slots=True)
class _Item:
    negated: bool
    kind: str  # "any", "exact", "suffix", "regex", "primary", "literal", "named"
    value: str
    pattern: re.Pattern[str] | None = None


class DomainList:
    """A parsed domain list. ``match(domain, primary_hostname, own_addresses)``
    says whether a (normalised or raw) domain is in it."""

    __slots__ = ("_items", "source")

    def __init__(self, items: str | Iterable[str] = (), *, names: Iterable[str] = ()) -> None:
        raw = split_list(items) if isinstance(items, str) else list(items)
        self.source: tuple[str, ...] = tuple(raw)
        allowed = tuple(names)
        self._items = tuple(_parse(item, allowed) for item in raw)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __repr__(self) -> str:
        return f"DomainList({list(self.source)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DomainList) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def match(
        self,
        domain: str,
        primary_hostname: str = "",
        own_addresses: Iterable[str] = (),
        named: Mapping[str, DomainList] | None = None,
    ) -> bool:
        name = normalize_domain(domain)
        if name is None:
            return False
        for item in self._items:
            if item.kind == "named":
                other = (named or {}).get(item.value)
                hit = other is not None and other.match(name, primary_hostname, own_addresses)
            else:
                hit = _matches(item, name, primary_hostname, own_addresses)
            if hit:
                return not item.negated
        # Exim: a list that ends with a negated item matches what it did not name.
        return bool(self._items) and self._items[-1].negated


def _parse(text: str, names: tuple[str, ...] = ()) -> _Item:
    item = text.strip()
    negated = item.startswith("!")
    if negated:
        item = item[1:].strip()
    if not item:
        raise DomainListError(f"empty item in domain list {text!r}")
    if item == "*":
        return _Item(negated, "any", "")
    if item == "@":
        return _Item(negated, "primary", "")
    if item == "@[]":
        return _Item(negated, "literal", "")
    if item.startswith("^"):
        try:
            return _Item(negated, "regex", item, re.compile(item))
        except re.error as exc:
            raise DomainListError(f"bad regular expression {item!r}: {exc}") from None
    if item.startswith("+") and item[1:] in names:
        return _Item(negated, "named", item[1:])
    if item.startswith("@") or item.startswith("+") or ";" in item:
        raise DomainListError(
            f"{item!r}: named lists, lookups and @mx items are not supported; "
            "list the domains, or use *, @, @[] or ^regex"
        )
    if item.startswith("*"):
        dot = "." if item.startswith("*.") else ""
        rest = normalize_domain(item[1 + len(dot) :])
        if rest is None:
            raise DomainListError(f"bad wildcard domain {item!r}")
        return _Item(negated, "suffix", dot + rest)
    name = normalize_domain(item)
    if name is None:
        raise DomainListError(f"bad domain {item!r}")
    return _Item(negated, "exact", name)


def _matches(item: _Item, name: str, primary: str, own: Iterable[str]) -> bool:
    kind = item.kind
    if kind == "exact":
        return name == item.value
    if kind == "suffix":
        return name.endswith(item.value)
    if kind == "any":
        return True
    if kind == "primary":
        return bool(primary) and name == normalize_domain(primary)
    if kind == "literal":
        if not name.startswith("["):
            return False
        address = name[1:-1].removeprefix("ipv6:")
        return _is_own_address(address, own)
    assert item.pattern is not None
    return item.pattern.match(name) is not None


def _is_own_address(address: str, own: Iterable[str]) -> bool:
    ip = ipaddress.ip_address(address)
    if ip.is_loopback:
        return True
    for candidate in own:
        try:
            if ipaddress.ip_address(candidate) == ip:
                return True
        except ValueError:
            continue
    return False
