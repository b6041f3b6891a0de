"""DNS lookups that say how far to trust the answer (RFC 7672 section 2.1).

``SecureResolver.lookup(name, rdtype)`` asks a validating resolver with the
DO bit set and classifies what came back:

- ``secure``: an answer, or a denial (NXDOMAIN, NODATA), with the AD bit;
- ``insecure``: the same without AD (an unsigned zone);
- ``failed``: SERVFAIL (a bogus answer included), a timeout, a truncated or
  malformed response. A failed lookup is never taken for "no records".

The denial's AD bit is read from the response the exception carries: a
securely denied TLSA RRset means "no DANE", a failed lookup means "try
later". ``cname_chain`` follows CNAMEs one query at a time, to know at which
step a chain leaves signed zones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Lookup", "SecureResolver"]


@dataclass(frozen=True, slots=True)
class Lookup:
    """One lookup: ``status`` (``secure``, ``insecure``, ``failed``),
    ``kind`` (``answer``, ``nxdomain``, ``nodata``, ``error``), the records
    (dnspython rdata) and, for a failure, why."""

    name: str
    rdtype: str
    status: str
    kind: str
    records: tuple[Any, ...] = field(default=())
    reason: str = ""
    canonical: str = ""  # for an answer: the name it is for, after any CNAMEs

    @property
    def secure(self) -> bool:
        return self.status == "secure"

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @property
    def denied(self) -> bool:
        """No such records (NXDOMAIN or NODATA), securely or not."""
        return self.kind in ("nxdomain", "nodata")

    def describe(self) -> str:
        """``secure answer``, ``insecure NXDOMAIN``, ``failed (SERVFAIL)``..."""
        if self.failed:
            return f"failed ({self.reason})"
        what = {"answer": "answer", "nxdomain": "NXDOMAIN", "nodata": "NODATA"}[self.kind]
        return f"{self.status} {what}"


class SecureResolver:
    """A DNSSEC-aware stub: ``nameservers`` are ``address`` or
    ``address:port`` of validating resolvers (empty: resolv.conf's)."""

    def __init__(self, nameservers: Sequence[str] = (), timeout: float = 10.0) -> None:
        import dns.asyncresolver
        import dns.flags
        import dns.nameserver

        if nameservers:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            servers: list[Any] = []
            for item in nameservers:
                address, port = _nameserver(item)
                servers.append(dns.nameserver.Do53Nameserver(address, port))
            self._resolver.nameservers = servers
        else:
            self._resolver = dns.asyncresolver.Resolver()
        self._resolver.lifetime = timeout
        self._resolver.timeout = timeout
        # DO asks for DNSSEC; AD in the query asks for the AD bit in the answer
        # (RFC 6840 section 5.7). A SERVFAIL is final: it is how a validating
        # resolver reports a bogus answer.
        self._resolver.use_edns(0, dns.flags.DO, 1232)
        self._resolver.flags = dns.flags.RD | dns.flags.AD
        self._resolver.retry_servfail = False

    async def lookup(self, name: str, rdtype: str) -> Lookup:
        import dns.exception
        import dns.flags
        import dns.resolver

        bare = name.lower().rstrip(".")
        if bare == "invalid" or bare.endswith(".invalid"):
            return Lookup(bare, rdtype, "insecure", "nxdomain")  # RFC 6761 section 6.4

        def status(response: Any) -> str:
            return (
                "secure" if response is not None and response.flags & dns.flags.AD else "insecure"
            )

        try:
            answer = await self._resolver.resolve(bare, rdtype, search=False)
        except dns.resolver.NXDOMAIN as exc:
            responses = list(exc.responses().values())  # type: ignore[no-untyped-call]
            return Lookup(bare, rdtype, status(responses[-1] if responses else None), "nxdomain")
        except dns.resolver.NoAnswer as exc:
            return Lookup(bare, rdtype, status(exc.response()), "nodata")  # type: ignore[no-untyped-call]
        except dns.resolver.NoNameservers as exc:
            return Lookup(bare, rdtype, "failed", "error", reason=_servfail(exc))
        except dns.exception.Timeout:
            return Lookup(bare, rdtype, "failed", "error", reason="timeout")
        except dns.exception.DNSException as exc:
            return Lookup(bare, rdtype, "failed", "error",
                          reason=str(exc) or type(exc).__name__)  # fmt: skip
        canonical = answer.canonical_name.to_text(omit_final_dot=True).lower()
        return Lookup(bare, rdtype, status(answer.response), "answer", tuple(answer),
                      canonical=canonical)  # fmt: skip

    async def cname_chain(self, name: str, limit: int = 10) -> list[tuple[str, Lookup]]:
        """The CNAME steps from ``name``: ``(owner, lookup of its CNAME)``
        for each owner that has one, in order; the last owner's target is
        the name the chain ends at. Stops at a failed lookup (it is the last
        item) or after ``limit`` steps."""
        steps: list[tuple[str, Lookup]] = []
        current = name.lower().rstrip(".")
        for _ in range(limit):
            found = await self.lookup(current, "CNAME")
            if found.kind != "answer":
                if found.failed:
                    steps.append((current, found))
                break
            steps.append((current, found))
            current = found.records[0].target.to_text(omit_final_dot=True).lower()
        return steps


def _nameserver(item: str) -> tuple[str, int]:
    """``address``, ``address:port`` or ``[v6 address]:port``."""
    import ipaddress

    text = item.strip()
    address, port = text, 53
    if text.startswith("["):
        address, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"bad name server {item!r}")
            port = int(rest[1:])
    elif text.count(":") == 1:
        address, _, p = text.partition(":")
        if not p.isdigit():
            raise ValueError(f"bad name server {item!r}")
        port = int(p)
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"a name server is an IP address (with a port), not {item!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"bad name server port in {item!r}")
    return address, port


def _servfail(exc: Exception) -> str:
    text = str(exc)
    return "SERVFAIL" if "SERVFAIL" in text or not text else text
