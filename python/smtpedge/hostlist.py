"""Exim-style host lists: which clients an option applies to.

Items are tried in order and the first that matches decides; a ``!`` in front
of an item makes a match mean "not in the list". A list whose last item is
negated matches whatever no item matched (``!192.0.2.7``: every host but
that one), as in Exim. An empty list matches nothing.

    *                 every host
    192.0.2.7         one address (IPv4 or IPv6)
    192.0.2.0/24      a CIDR block (IPv6 too: 2001:db8::/32)
    localhost         the loopback addresses (127.0.0.0/8, ::1)
    *.example.net     hosts whose verified reverse name ends in .example.net
    mx.example.net    hosts whose verified reverse name is that name, or whose
                      address is one the name resolves to

A list is a TOML array of items, or one string in Exim's syntax: items
separated by ``:`` (write ``::`` for a colon inside an item, or start the
string with ``<;`` to separate with ``;``, handy for IPv6).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["HostList", "HostListError", "split_list"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class HostListError(ValueError):
    """A host list item that cannot be understood."""


def split_list(text: str) -> list[str]:
    """Split an Exim list string into items (``:`` separated, ``::`` is a
    literal colon, a leading ``<c`` picks another separator)."""
    text = text.strip()
    sep = ":"
    if text.startswith("<") and len(text) > 1 and not text[1].isspace() and text[1] != "<":
        sep, text = text[1], text[2:]
    items: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == sep:
            if sep == ":" and i + 1 < len(text) and text[i + 1] == ":":
                cur.append(":")
                i += 2
                continue
            items.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    items.append("".join(cur).strip())
    return [item for item in items if item]


@dataclass(frozen=True, slots=True)
class _Item:
    negated: bool
    kind: str  # "all", "net", "loopback", "suffix", "name"
    net: IPNetwork | None = None
    name: str = ""


def _parse_item(text: str) -> _Item:
    raw = text
    negated = False
    while text.startswith("!"):
        negated = not negated
        text = text[1:].strip()
    if not text:
        raise HostListError(f"empty host list item in {raw!r}")
    if text == "*":
        return _Item(negated, "all")
    if text.lower() == "localhost":
        return _Item(negated, "loopback")
    if any(c.isdigit() for c in text[:1]) or ":" in text:
        try:
            return _Item(negated, "net", net=ipaddress.ip_network(text.strip("[]"), strict=False))
        except ValueError:
            if ":" in text or "/" in text:
                raise HostListError(f"bad address or network in host list: {raw!r}") from None
    if text.startswith("*."):
        name = text[2:].rstrip(".").lower()
        if not name or "*" in name:
            raise HostListError(f"bad wildcard in host list: {raw!r}")
        return _Item(negated, "suffix", name="." + name)
    if "*" in text or "/" in text or " " in text:
        raise HostListError(f"unsupported host list item: {raw!r}")
    return _Item(negated, "name", name=text.rstrip(".").lower())


def _forward(name: str) -> set[str]:
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return set()
    return {str(ipaddress.ip_address(str(info[4][0]).split("%")[0])) for info in infos}


@functools.lru_cache(maxsize=4096)
def _parse_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class HostList:
    """A parsed host list; ``match(address)`` says whether a client is in it."""

    __slots__ = ("_items", "source")

    def __init__(self, items: str | Iterable[str] = ()) -> None:
        source = split_list(items) if isinstance(items, str) else [str(i).strip() for i in items]
        self.source: tuple[str, ...] = tuple(i for i in source if i)
        self._items = tuple(_parse_item(i) for i in self.source)

    def __repr__(self) -> str:
        return f"HostList({list(self.source)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HostList) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def __bool__(self) -> bool:
        return bool(self._items)

    @property
    def needs_name(self) -> bool:
        """True when matching may need the client's reverse DNS name."""
        return any(item.kind in ("suffix", "name") for item in self._items)

    def match(
        self,
        address: str,
        *,
        hostname: str | None = None,
        resolve: Callable[[str], set[str]] = _forward,
    ) -> bool:
        """True if ``address`` is in the list. ``hostname`` is the client's
        verified reverse name, if known; ``resolve`` maps a name to addresses."""
        ip = _parse_address(address)
        if ip is None:
            return False
        name = hostname.rstrip(".").lower() if hostname else None
        for item in self._items:
            if item.kind == "all":
                hit = True
            elif item.kind == "net":
                assert item.net is not None
                hit = ip.version == item.net.version and ip in item.net
            elif item.kind == "loopback":
                hit = any(ip.version == n.version and ip in n for n in _LOOPBACK)
            elif item.kind == "suffix":
                hit = name is not None and name.endswith(item.name)
            else:
                hit = name == item.name or str(ip) in resolve(item.name)
            if hit:
                return not item.negated
        # Exim: a list that ends with a negated item matches what it did not name.
        return bool(self._items) and self._items[-1].negated
