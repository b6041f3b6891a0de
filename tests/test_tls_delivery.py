"""TLS on the smtp transport, through ``smtpedge serve``: a next hop whose
certificate does not verify, or that staples no OCSP proof where one is
required, is passed over for the next MX host, with the reason logged; a
verified host gets the message, logged with CV=yes and tls_out_ocsp."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pki import Issued, issue, make_ca, response, write_pair
from serverutil import Client, FakeDNS, ServeProcess, free_port


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca()


def _hop(tmp_path: Path, name: str, address: str, port: int, ca: Issued, leaf: Issued,
         staple: bytes | None = None) -> ServeProcess:  # fmt: skip
    cert, key = write_pair(tmp_path, name, leaf, ca)
    options: dict[str, Any] = {"tls_certificate": [str(cert)], "tls_privatekey": [str(key)],
                               "local_interfaces": [address], "port": port,
                               "local_domains": ["next.test"], "primary_hostname": name,
                               "routers": [{"name": "all", "driver": "accept",
                                            "transport": "local_delivery"}]}  # fmt: skip
    if staple is not None:
        (tmp_path / f"{name}.ocsp").write_bytes(staple)
        options["tls_ocsp_file"] = [str(tmp_path / f"{name}.ocsp")]
    return ServeProcess(tmp_path / name, **options)


def _deliver(tmp_path: Path, ca: Issued, port: int, dns: FakeDNS, **transport: Any) -> str:
    (tmp_path / "ca.pem").write_bytes(ca.pem())
    smtp = {"driver": "smtp", "port": port, "tls_verify_hosts": ["*"],
            "tls_verify_certificates": str(tmp_path / "ca.pem"), **transport}  # fmt: skip
    options = {"queue_only": False, "dns_nameservers": [dns.nameserver],
               "transports": {"remote_smtp": smtp}, "retry_rules": ["* * F,1h,10m"]}  # fmt: skip
    with ServeProcess(tmp_path / "edge", **options) as srv:
        c = Client(srv.port)
        c.reply()
        c.cmd("EHLO c.test")
        assert c.send_message("s@localhost", ["u@next.test"], b"Subject: tls").startswith("250")
        c.cmd("QUIT")
        srv.wait_log("<u@next.test> R=dnslookup T=remote_smtp")
        return srv.log


ZONE = {("next.test", "MX"): ["10 mx1.next.test.", "20 mx2.next.test."],
        ("mx1.next.test", "A"): ["127.0.0.2"], ("mx2.next.test", "A"): ["127.0.0.3"]}  # fmt: skip


@pytest.mark.parametrize("problem", ["wrong name", "expired", "no staple"])
def test_a_host_that_fails_policy_is_passed_over(tmp_path: Path, ca: Issued, problem: str) -> None:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    port = free_port()
    good = issue(ca, "mx2.next.test", dns=["*.next.test"])  # a wildcard certificate
    staple = response(good.cert, ca.cert, ca)
    if problem == "wrong name":
        bad = issue(ca, "other.test", dns=["other.test"])
    elif problem == "expired":
        month, day = dt.timedelta(days=30), dt.timedelta(days=1)
        bad = issue(ca, "mx1.next.test", dns=["mx1.next.test"], not_before=now - month,
                    not_after=now - day)  # fmt: skip
    else:
        bad = issue(ca, "mx1.next.test", dns=["mx1.next.test"])
    mx1 = _hop(tmp_path, "mx1.next.test", "127.0.0.2", port, ca, bad)
    with FakeDNS(ZONE) as dns, mx1, _hop(tmp_path, "mx2.next.test", "127.0.0.3", port, ca,
                                         good, staple) as mx2:  # fmt: skip
        log = _deliver(tmp_path, ca, port, dns, hosts_require_ocsp=["*"])
        mx2.wait_log("<= <s@localhost>")
    why = {"wrong name": "the certificate is for other.test, not mx1.next.test",
           "expired": "certificate has expired",
           "no staple": "no valid OCSP staple"}[problem]  # fmt: skip
    assert why in log
    delivered = [line for line in log.splitlines() if "=> <u@next.test>" in line]
    assert len(delivered) == 1
    assert "H=mx2.next.test [127.0.0.3]" in delivered[0]
    assert "CV=yes" in delivered[0] and "tls_out_ocsp=verified" in delivered[0]


def test_every_host_failing_policy_defers(tmp_path: Path, ca: Issued) -> None:
    port = free_port()
    leaf = issue(ca, "mx1.next.test", dns=["mx1.next.test"])
    zone = {("next.test", "MX"): ["10 mx1.next.test."], ("mx1.next.test", "A"): ["127.0.0.2"]}
    with FakeDNS(zone) as dns, _hop(tmp_path, "mx1.next.test", "127.0.0.2", port, ca, leaf):
        log = _deliver(tmp_path, ca, port, dns, hosts_require_ocsp=["*"])
    assert "== <u@next.test> R=dnslookup T=remote_smtp defer (tls_required)" in log
    assert "no valid OCSP staple from mx1.next.test [127.0.0.2]:" in log
    assert "=> <u@next.test>" not in log


def test_opportunistic_tls_without_verification_logs_what_it_saw(tmp_path: Path,
                                                                ca: Issued) -> None:  # fmt: skip
    port = free_port()
    leaf = issue(ca, "mx1.next.test", dns=["mx1.next.test"])
    zone = {("next.test", "MX"): ["10 mx1.next.test."], ("mx1.next.test", "A"): ["127.0.0.2"]}
    with FakeDNS(zone) as dns, _hop(tmp_path, "mx1.next.test", "127.0.0.2", port, ca, leaf):
        log = _deliver(tmp_path, ca, port, dns, tls_verify_hosts=[],
                       tls_try_verify_hosts=["*"])  # fmt: skip
    [line] = [x for x in log.splitlines() if "=> <u@next.test>" in x]
    assert " X=TLSv1.3:" in line and "CV=yes" in line and "tls_out_ocsp=notresp" in line
