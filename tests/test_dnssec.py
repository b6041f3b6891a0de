"""DNSSEC-aware lookups (smtpedge.delivery.dnssec) against the DNS lab: nsd
serving signed, expired and unsigned zones behind a validating unbound."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from dnslab import DNSLab
from smtpedge.delivery.dnssec import Lookup, SecureResolver

TLSA = "3 1 1 " + "ab" * 32

ZONES = {
    "secure.lab": ("@ MX 10 mx1\nmx1 A 127.0.0.21\n"
                   f"_25._tcp.mx1 TLSA {TLSA}\n"
                   "alias CNAME mx1\nout CNAME host.plain.lab.\n", "signed"),
    "old.lab": ("@ MX 10 mx\nmx A 127.0.0.22\n", "expired"),
    "plain.lab": ("@ MX 10 mx\nmx A 127.0.0.23\nhost A 127.0.0.24\n", "unsigned"),
}  # fmt: skip


class _Silent:
    """A UDP port that reads queries and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.done = False
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while not self.done:
            try:
                self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        self.done = True
        self.thread.join()
        self.sock.close()


@pytest.fixture(scope="module")
def lab() -> Iterator[DNSLab]:
    silent = _Silent()
    try:
        with DNSLab(ZONES, extra_stubs={"slow.secure.lab": f"127.0.0.1@{silent.port}"}) as lab:
            yield lab
    finally:
        silent.close()


def _lookup(lab: DNSLab, name: str, rdtype: str, timeout: float = 10.0) -> Lookup:
    return asyncio.run(SecureResolver([lab.resolver], timeout=timeout).lookup(name, rdtype))


def _texts(found: Lookup) -> list[str]:
    return [r.to_text() for r in found.records]


def test_secure_answers_and_denials(lab: DNSLab) -> None:
    mx = _lookup(lab, "secure.lab", "MX")
    assert (mx.status, mx.kind, _texts(mx)) == ("secure", "answer", ["10 mx1.secure.lab."])
    tlsa = _lookup(lab, "_25._tcp.mx1.secure.lab", "TLSA")
    assert tlsa.describe() == "secure answer" and _texts(tlsa) == [TLSA]
    none = _lookup(lab, "_25._tcp.nowhere.secure.lab", "TLSA")
    assert none.describe() == "secure NXDOMAIN" and none.denied
    nodata = _lookup(lab, "mx1.secure.lab", "TXT")
    assert nodata.describe() == "secure NODATA" and nodata.denied


def test_insecure_answers_and_denials(lab: DNSLab) -> None:
    mx = _lookup(lab, "plain.lab", "MX")
    assert mx.describe() == "insecure answer" and _texts(mx) == ["10 mx.plain.lab."]
    assert _lookup(lab, "nowhere.plain.lab", "A").describe() == "insecure NXDOMAIN"
    assert _lookup(lab, "mx.plain.lab", "TLSA").describe() == "insecure NODATA"


def test_a_bogus_zone_fails_and_is_never_no_records(lab: DNSLab) -> None:
    for rdtype in ("MX", "TLSA", "A"):
        found = _lookup(lab, "mx.old.lab" if rdtype != "MX" else "old.lab", rdtype)
        assert found.failed and not found.denied, found
        assert found.describe() == "failed (SERVFAIL)"


def test_a_lookup_that_times_out_fails(lab: DNSLab) -> None:
    found = _lookup(lab, "_25._tcp.mx.slow.secure.lab", "TLSA", timeout=1.0)
    assert found.describe() == "failed (timeout)" and not found.denied


def test_cname_chains_say_where_they_turn_insecure(lab: DNSLab) -> None:
    resolver = SecureResolver([lab.resolver])
    steps: list[tuple[str, Any]] = asyncio.run(resolver.cname_chain("alias.secure.lab"))
    assert [(owner, s.status) for owner, s in steps] == [("alias.secure.lab", "secure")]
    assert _texts(steps[0][1]) == ["mx1.secure.lab."]
    steps = asyncio.run(resolver.cname_chain("out.secure.lab"))
    assert [(owner, s.status) for owner, s in steps] == [("out.secure.lab", "secure")]
    assert _texts(steps[0][1]) == ["host.plain.lab."]
    # The target lives in an unsigned zone: its address is insecure.
    assert _lookup(lab, "host.plain.lab", "A").describe() == "insecure answer"
    # Through the CNAME, the answer is only as secure as its weakest step.
    assert _lookup(lab, "out.secure.lab", "A").status == "insecure"
    assert _lookup(lab, "alias.secure.lab", "A").status == "secure"
    assert asyncio.run(resolver.cname_chain("mx1.secure.lab")) == []
