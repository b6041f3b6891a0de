"""DANE on the smtp transport (RFC 7672), end to end: ``smtpedge serve``
delivers by MX through the DNS lab (nsd with signed, expired and unsigned
zones behind a validating unbound) to ``smtpedge serve`` next hops on
127.0.0.x, each with its own certificate and TLSA records."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from dnslab import DNSLab
from pki import Issued, issue, make_ca, write_pair
from serverutil import Client, ServeProcess, free_port, metric, peer, scrape
from test_dnssec import _Silent


def _digest(cert: x509.Certificate, selector: int) -> str:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    data = (cert.public_bytes(serialization.Encoding.DER) if selector == 0
            else cert.public_key().public_bytes(serialization.Encoding.DER, spki))  # fmt: skip
    return hashlib.sha256(data).hexdigest()


def _resolver_address() -> str:
    """A loopback address whose port 53 is free: posttls-finger reads only
    resolv.conf, which names no port."""
    for last in range(1, 255):
        address = f"127.0.53.{last}"
        try:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind((address, 53))
        except OSError:
            continue
        return address
    raise RuntimeError("no loopback address with port 53 free")


def _wait_listening(address: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _port_free_everywhere(addresses: list[str]) -> int:
    while True:
        port = free_port()
        try:
            for a in addresses:
                with socket.socket() as s:
                    s.bind((a, port))
        except OSError:
            continue
        return port


@dataclass
class Hop:
    name: str  # the MX host name
    address: str
    dns_names: list[str]  # on its certificate
    tlsa: list[str]  # TLSA records, "{ee}" and "{ca}" filled in
    zone: str = "sec.lab"
    tlsa_owner: str | None = None  # where the TLSA records are (default: name)


HOPS = [
    # DANE-EE: only the key matters, not the names on the certificate.
    Hop("mx-ee", "127.0.0.31", ["unrelated.example"], ["3 1 1 {ee}"]),
    # DANE-TA: the chain to our CA, and the TLSA base domain on the certificate.
    Hop("mx-ta", "127.0.0.32", ["mx-ta.sec.lab"], ["2 0 1 {ca}"]),
    Hop("mx-taname", "127.0.0.33", ["wrong.example"], ["2 0 1 {ca}"]),
    # Only the next-hop domain on the certificate: good after a secure MX lookup.
    Hop("mx-nh", "127.0.0.34", ["nexthop.sec.lab"], ["2 1 1 {ca_spki}"]),
    Hop("mx-wrong", "127.0.0.35", ["mx-wrong.sec.lab"], ["3 1 1 " + "00" * 32]),
    Hop("mx-unusable", "127.0.0.36", ["mx-unusable.sec.lab"], ["0 0 1 {ca}", "3 7 1 {ee}"]),
    Hop("mx-notlsa", "127.0.0.37", ["mx-notlsa.sec.lab"], []),
    Hop("mx-slow", "127.0.0.38", ["mx-slow.sec.lab"], []),
    Hop("mx", "127.0.0.40", ["mx.plain.lab"], ["3 1 1 " + "00" * 32], zone="plain.lab"),
    # CNAME'd MX hosts (mx-alias -> mx-real, mx-alias2 -> mx-real2): the TLSA
    # records of the expanded name first, else those of the MX host name.
    Hop("mx-real", "127.0.0.41", ["mx-real.sec.lab"], ["2 0 1 {ca}"]),
    Hop("mx-real2", "127.0.0.42", ["mx-alias2.sec.lab"], ["2 0 1 {ca}"], tlsa_owner="mx-alias2"),
    # The recipient domain is an alias (nhalias -> nexthop2); the certificate
    # names only the domain it expands to.
    Hop("mx-nh2", "127.0.0.43", ["nexthop2.sec.lab"], ["2 1 1 {ca_spki}"]),
]
CNAMES = ["mx-alias CNAME mx-real", "mx-alias2 CNAME mx-real2", "nhalias CNAME nexthop2"]
LDNS_HOPS = ("mx-ee", "mx-ta", "mx-taname", "mx-wrong")
MX = {  # next-hop domain (in sec.lab) -> its MX records
    "ee": ["10 mx-ee"], "ta": ["10 mx-ta"], "taname": ["10 mx-taname"],
    "nexthop": ["10 mx-nh"], "wrong": ["10 mx-wrong"], "unusable": ["10 mx-unusable"],
    "pref": ["10 mx-notlsa", "20 mx-ee"], "slow": ["10 mx-slow"],
    "alias": ["10 mx-alias"], "alias2": ["10 mx-alias2"], "nexthop2": ["10 mx-nh2"],
    "skipbad": ["10 mx.old.lab.", "20 mx-ee"],
}  # fmt: skip


@dataclass
class Lab:
    dns: DNSLab
    port: int
    hops: dict[str, ServeProcess]
    ca: Issued
    tmp: Path
    tls_port: int
    metrics: dict[str, float] = field(default_factory=dict)  # the last sender's, at its end


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("dane")
    ca = make_ca("DANE lab CA", kind="ec")
    port = _port_free_everywhere([h.address for h in HOPS])
    # The same hosts serve TLS on connect on a second port, with the same TLSA
    # records there, for ldns-dane (which has no STARTTLS).
    tls_port = _port_free_everywhere([h.address for h in HOPS])
    leaves = {h.name + h.zone: issue(ca, h.dns_names[0], kind="ec", dns=h.dns_names)
              for h in HOPS}  # fmt: skip
    zones: dict[str, list[str]] = {
        "sec.lab": list(CNAMES),
        "plain.lab": ["@ MX 10 mx", "hostonly MX 10 mx-ee.sec.lab."],
    }
    for domain, mxs in MX.items():
        zones["sec.lab"] += [f"{domain} MX {mx}" for mx in mxs]
    for h in HOPS:
        leaf = leaves[h.name + h.zone].cert
        zones[h.zone].append(f"{h.name} A {h.address}")
        for t in h.tlsa:
            record = t.format(ee=_digest(leaf, 1), ca=_digest(ca.cert, 0),
                              ca_spki=_digest(ca.cert, 1))  # fmt: skip
            for on in (port, tls_port):
                zones[h.zone].append(f"_{on}._tcp.{h.tlsa_owner or h.name} TLSA {record}")
    silent = _Silent()
    hops: dict[str, ServeProcess] = {}
    tls_servers: list[subprocess.Popen[bytes]] = []
    try:
        with DNSLab({"sec.lab": ("\n".join(zones["sec.lab"]), "signed"),
                     "old.lab": ("@ MX 10 mx\nmx A 127.0.0.39\n", "expired"),
                     "plain.lab": ("\n".join(zones["plain.lab"]), "unsigned")},
                    extra_stubs={"_tcp.mx-slow.sec.lab": f"127.0.0.1@{silent.port}"},
                    listen=(_resolver_address(), 53),
                    ) as dns:  # fmt: skip
            for h in HOPS:
                fqdn = f"{h.name}.{h.zone}"
                cert, key = write_pair(tmp, fqdn, leaves[h.name + h.zone], ca)
                srv = ServeProcess(tmp / fqdn, tls_certificate=[str(cert)],
                                   tls_privatekey=[str(key)], local_interfaces=[h.address],
                                   port=port, primary_hostname=fqdn, local_domains=["*"],
                                   routers=[{"name": "all", "driver": "accept",
                                             "transport": "local_delivery"}])  # fmt: skip
                ServeProcess.live.discard(srv)  # kept for the whole module
                hops[fqdn] = srv
                if h.name in LDNS_HOPS:
                    (tmp / f"{fqdn}.ca").write_bytes(ca.pem())
                    tls_servers.append(subprocess.Popen(
                        [peer("openssl"), "s_server", "-quiet", "-naccept", "1000",
                         "-accept", f"{h.address}:{tls_port}", "-cert", str(cert),
                         "-cert_chain", str(tmp / f"{fqdn}.ca"), "-key", str(key)],
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL))  # fmt: skip
                    _wait_listening(h.address, tls_port)
            yield Lab(dns, port, hops, ca, tmp, tls_port)
    finally:
        for srv in hops.values():
            srv.stop()
        for server in tls_servers:
            server.terminate()
            server.wait(10)
        silent.close()


def _send(lab: Lab, name: str, domain: str, *, wait: str, sender: str = "s@localhost",
          retry: str = "* * F,1h,10m", **transport: Any) -> str:  # fmt: skip
    """Submit one message for ``u@domain`` to a sending smtpedge; return its
    log once ``wait`` is in it."""
    smtp = {"driver": "smtp", "port": lab.port, **transport}
    options = {"queue_only": False, "dns_nameservers": [lab.dns.resolver],
               "transports": {"remote_smtp": smtp}, "retry_rules": [retry],
               "primary_hostname": "edge.test", "queue_poll_interval": "0.2s",
               "metrics_address": f"127.0.0.1:{free_port()}"}  # fmt: skip
    with ServeProcess(lab.tmp / f"edge-{name}", **options) as srv:
        c = Client(srv.port)
        c.reply()
        c.cmd("EHLO c.test")
        assert c.send_message(sender, [f"u@{domain}"], b"Subject: dane").startswith("250")
        c.cmd("QUIT")
        try:
            log = srv.wait_log(wait, timeout=60)
        except RuntimeError:
            raise AssertionError(srv.log + lab.dns.logs()) from None
        lab.metrics = scrape(str(options["metrics_address"]))
        return log


def _received(lab: Lab, hop: str) -> str:
    return lab.hops[hop].log


def test_dane_ee_matched_whatever_the_names(lab: Lab) -> None:
    log = _send(lab, "ee", "ee.sec.lab", wait="=> <u@ee.sec.lab>")
    assert "Matched DANE EE certificate at depth 0: 3 1 1 " in log
    assert "CV=dane tls_out_dane=yes tls_out_tlsa_usage=3" in log, "a secure MX: the domain too"
    assert metric(lab.metrics, "smtpedge_dane_total", 'result="yes"') == 1
    assert metric(lab.metrics, "smtpedge_deliveries_total", 'outcome="delivered"') == 1
    lab.hops["mx-ee.sec.lab"].wait_log("for <u@ee.sec.lab>")


def test_dane_ta_matched_with_the_right_name(lab: Lab) -> None:
    log = _send(lab, "ta", "ta.sec.lab", wait="=> <u@ta.sec.lab>")
    assert "Matched DANE TA certificate at depth 1: 2 0 1 " in log
    assert "tls_out_tlsa_usage=2" in log


def test_dane_ta_with_the_next_hop_domain_as_the_name(lab: Lab) -> None:
    log = _send(lab, "nh", "nexthop.sec.lab", wait="=> <u@nexthop.sec.lab>")
    assert "Matched DANE TA certificate at depth 1: 2 1 1 " in log


@pytest.mark.parametrize(("domain", "why"), [
    ("taname.sec.lab", "the certificate is for wrong.example, not mx-taname.sec.lab or "
                       "taname.sec.lab"),
    ("wrong.sec.lab", "no TLSA record matches the certificate chain"),
])  # fmt: skip
def test_a_dane_failure_defers_and_never_goes_in_clear(lab: Lab, domain: str, why: str) -> None:
    name = domain.split(".")[0]
    log = _send(lab, name, domain, wait=f"== <u@{domain}>")
    assert "DANE verification of" in log and why in log
    assert f"for <u@{domain}>" not in _received(lab, f"mx-{name}.sec.lab"), "never delivered"


def test_only_unusable_records_still_mean_tls(lab: Lab) -> None:
    log = _send(lab, "unusable", "unusable.sec.lab", wait="=> <u@unusable.sec.lab>")
    line = next(ln for ln in log.splitlines() if "=> <u@unusable.sec.lab>" in ln)
    assert " X=TLSv1.3:" in line and "tls_out_dane" not in line


def test_mx_preference_is_kept(lab: Lab) -> None:
    """A worse MX with TLSA never pre-empts a better one without."""
    log = _send(lab, "pref", "pref.sec.lab", wait="=> <u@pref.sec.lab>")
    line = next(ln for ln in log.splitlines() if "=> <u@pref.sec.lab>" in ln)
    assert "H=mx-notlsa.sec.lab" in line and "tls_out_dane" not in line


def test_an_insecure_zone_is_opportunistic(lab: Lab) -> None:
    log = _send(lab, "plain", "plain.lab", wait="=> <u@plain.lab>")
    line = next(ln for ln in log.splitlines() if "=> <u@plain.lab>" in ln)
    assert "H=mx.plain.lab" in line and "X=TLS" in line and "tls_out_dane" not in line


def test_dane_required_on_an_insecure_domain_defers(lab: Lab) -> None:
    log = _send(lab, "required", "plain.lab", wait="== <u@plain.lab>",
                hosts_require_dane=["*"])  # fmt: skip
    assert "is not DNSSEC-validated, and DANE is required" in log


def test_a_bogus_zone_defers(lab: Lab) -> None:
    log = _send(lab, "bogus", "old.lab", wait="== <u@old.lab>")
    assert "DNS lookup of MX for old.lab failed" in log


def test_a_tlsa_lookup_that_times_out_defers(lab: Lab) -> None:
    log = _send(lab, "slow", "slow.sec.lab", wait="== <u@slow.sec.lab>")
    assert "TLSA lookup for mx-slow.sec.lab failed" in log
    assert "for <u@slow.sec.lab>" not in _received(lab, "mx-slow.sec.lab")


def _check(lab: Lab, domain: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smtpedge", "dane", "check", domain,
                           "--nameserver", lab.dns.resolver, "--port", str(lab.port),
                           "--timeout", "5", *extra],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_dane_check_reports_a_verified_domain(lab: Lab) -> None:
    done = _check(lab, "ee.sec.lab")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert out.startswith("ee.sec.lab: MX secure answer\n")
    assert "  mx-ee.sec.lab (MX 10)\n    addresses: A secure answer, AAAA secure NODATA\n" in out
    assert f"    TLSA at _{lab.port}._tcp.mx-ee.sec.lab: secure answer\n" in out
    assert "DANE-EE(3) SPKI(1) SHA2-256(1)  usable" in out
    assert "key rollover: not possible" in out
    assert "[ok] 127.0.0.31: TLSv1.3 " in out and "Matched DANE EE certificate at depth 0" in out
    assert out.endswith("result: DANE verified for every MX host\n")
    report = json.loads(_check(lab, "ee.sec.lab", "--json").stdout)
    [host] = report["hosts"]
    [probe] = host["addresses"]
    assert (report["ok"], probe["depth"], probe["usage"]) == (True, 0, 3)
    assert probe["chain"][0]["names"] == ["unrelated.example"]


def test_dane_check_shows_ta_names_and_failures(lab: Lab) -> None:
    done = _check(lab, "ta.sec.lab")
    assert done.returncode == 0 and "Matched DANE TA certificate at depth 1" in done.stdout
    assert "depth 0: CN=mx-ta.sec.lab (names: mx-ta.sec.lab; valid " in done.stdout
    assert "depth 1: CN=DANE lab CA (names: DANE lab CA; valid " in done.stdout
    for domain, why in (
        ("wrong.sec.lab", "no TLSA record matches the certificate chain"),
        ("taname.sec.lab", "the certificate is for wrong.example"),
        ("plain.lab", "the MX lookup is insecure: no DANE for this domain"),
        ("old.lab", "the MX lookup failed"),
        ("unusable.sec.lab", "no usable TLSA records"),
    ):
        done = _check(lab, domain)
        assert done.returncode == 1, done.stdout
        assert why in done.stdout and done.stdout.endswith("result: FAILED\n"), done.stdout
    unusable = _check(lab, "unusable.sec.lab").stdout
    assert "PKIX-TA(0) is not used with SMTP" in unusable and "unknown selector 7" in unusable


def _posttls_finger(lab: Lab, domain: str) -> str:
    """Postfix's posttls-finger with DANE, in a mount namespace whose
    resolv.conf names the lab's resolver."""
    conf = lab.tmp / "posttls-finger"
    conf.mkdir(exist_ok=True)
    (conf / "main.cf").write_text("compatibility_level = 3.6\nsmtp_dns_support_level = dnssec\n"
                                  "meta_directory = /etc/postfix\n"
                                  "shlib_directory = /usr/lib/postfix\n")  # fmt: skip
    script = (
        f"mount --bind {lab.dns.resolv_conf()} /etc/resolv.conf && "
        f"exec {peer('posttls-finger')} -c -l dane -t 10 -T 10 '{domain}:{lab.port}'"
    )
    env = {**os.environ, "MAIL_CONFIG": str(conf)}
    done = subprocess.run([peer("unshare"), "-m", "sh", "-c", script], capture_output=True,
                          text=True, timeout=120, env=env)  # fmt: skip
    return done.stdout + done.stderr


@pytest.mark.parametrize("domain", ["ee.sec.lab", "ta.sec.lab", "nexthop.sec.lab",
                                    "wrong.sec.lab", "taname.sec.lab", "alias.sec.lab",
                                    "alias2.sec.lab", "nhalias.sec.lab"])  # fmt: skip
def test_posttls_finger_agrees_with_dane_check(lab: Lab, domain: str) -> None:
    theirs = _posttls_finger(lab, domain)
    report = json.loads(_check(lab, domain, "--json").stdout)
    ours = {a["match"].upper() for h in report["hosts"] for a in h["addresses"] if "match" in a}
    matched = {m.upper() for m in re.findall(r"Matched DANE .*", theirs)}
    assert ours == matched, theirs
    assert report["ok"] == ("Verified TLS connection established" in theirs), theirs


def test_the_failure_report_says_why_dane_failed(lab: Lab) -> None:
    from smtpedge.dsn import parse_report

    _send(lab, "report", "wrong.sec.lab", wait="failed report", sender="root@localhost",
          retry="* * F,2s,1s")  # fmt: skip
    new = lab.tmp / "edge-report" / "mail" / "root" / "new"
    [report] = [parse_report(p.read_bytes()) for p in new.iterdir()]
    [r] = report.recipients
    assert (r.action, r.status) == ("failed", "5.7.5")
    assert r.diagnostic_code is not None and r.diagnostic_code[0] == "x-smtpedge"
    assert "DANE verification of mx-wrong.sec.lab [127.0.0.35]:" in r.diagnostic_code[1]
    assert "no TLSA record matches the certificate chain" in r.diagnostic_code[1]


def test_a_cname_mx_host_uses_the_expanded_names_tlsa_records(lab: Lab) -> None:
    log = _send(lab, "alias", "alias.sec.lab", wait="=> <u@alias.sec.lab>")
    assert "Matched DANE TA certificate at depth 1: 2 0 1 " in log
    lab.hops["mx-real.sec.lab"].wait_log("for <u@alias.sec.lab>")
    assert "TLS with" in lab.hops["mx-real.sec.lab"].log


def test_a_cname_mx_host_without_records_at_the_target_uses_its_own(lab: Lab) -> None:
    log = _send(lab, "alias2", "alias2.sec.lab", wait="=> <u@alias2.sec.lab>")
    assert "Matched DANE TA certificate at depth 1: 2 0 1 " in log


def test_an_insecure_mx_to_a_dane_host_authenticates_the_host_only(lab: Lab) -> None:
    log = _send(lab, "hostonly", "hostonly.plain.lab", wait="=> <u@hostonly.plain.lab>")
    assert (
        "Matched DANE EE certificate at depth 0: 3 1 1 " in log
        and "(the MX lookup was insecure: this host is authenticated, not the domain)" in log
    )
    line = next(ln for ln in log.splitlines() if "=> <u@hostonly.plain.lab>" in ln)
    assert "CV=dane tls_out_dane=host tls_out_tlsa_usage=3" in line


@pytest.mark.parametrize("hop", LDNS_HOPS)
def test_ldns_dane_agrees_with_dane_check(lab: Lab, hop: str) -> None:
    """ldns-dane verifies the same host's TLS-on-connect port (it has no
    STARTTLS; openssl s_server serves it), with the same certificate and
    TLSA records there."""
    domain = {"mx-ee": "ee", "mx-ta": "ta", "mx-taname": "taname", "mx-wrong": "wrong"}[hop]
    # ldns-dane checks names for DANE-EE too (RFC 6698); RFC 7672 does not:
    # -n for the DANE-EE hosts, names checked for the DANE-TA ones.
    names = ["-n"] if hop in ("mx-ee", "mx-wrong") else []
    done = subprocess.run([peer("ldns-dane"), "-r", lab.dns.host, *names, "verify",
                           f"{hop}.sec.lab", str(lab.tls_port)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    theirs = done.returncode == 0 and "dane-validated successfully" in done.stdout + done.stderr
    ours = json.loads(_check(lab, f"{domain}.sec.lab", "--json").stdout)["ok"]
    assert theirs == ours, done.stdout + done.stderr
    assert ours == (hop in ("mx-ee", "mx-ta"))


def test_the_next_hop_domains_cname_expansion_is_a_reference_name(lab: Lab) -> None:
    log = _send(lab, "nhalias", "nhalias.sec.lab", wait="=> <u@nhalias.sec.lab>")
    assert "Matched DANE TA certificate at depth 1: 2 1 1 " in log


def test_a_host_whose_address_lookup_fails_is_skipped(lab: Lab) -> None:
    """RFC 7672 2.2.2: the better MX host's address is bogus (old.lab's
    signatures expired): it is passed over, and the next one, with DANE,
    gets the message."""
    log = _send(lab, "skipbad", "skipbad.sec.lab", wait="=> <u@skipbad.sec.lab>")
    line = next(ln for ln in log.splitlines() if "=> <u@skipbad.sec.lab>" in ln)
    assert "H=mx-ee.sec.lab" in line and "tls_out_dane=yes" in line
