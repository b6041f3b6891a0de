"""``smtpedge dane check DOMAIN``: what a DANE-aware sender (RFC 7672) finds
for a domain: per MX host the DNSSEC status of the MX, address and TLSA
lookups, the TLSA records and which are usable, and for each address a
STARTTLS handshake and which record matched at which depth, or why none did.
Exit 0 only when every MX host has usable TLSA records that every address
matched."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from cryptography import x509

from smtpedge.delivery.dnssec import Lookup, SecureResolver
from smtpedge.sending import SMTPClient, SMTPClientError, TLSPolicy
from smtpedge.tls import dane


def _records(found: Lookup) -> list[dane.TLSARecord]:
    return [dane.TLSARecord(int(r.usage), int(r.selector), int(r.mtype), bytes(r.cert))
            for r in found.records]  # fmt: skip


def _rollover(usable: list[dane.TLSARecord]) -> str:
    """RFC 7671 section 8: a key can be rolled without an outage when the
    RRset already carries the next one, or a DANE-EE and a DANE-TA record."""
    usages = {r.usage for r in usable}
    if {dane.DANE_EE, dane.DANE_TA} <= usages:
        return "possible (DANE-EE and DANE-TA records)"
    if len({(r.usage, r.selector, r.mtype, r.data) for r in usable}) >= 2:
        return "possible (two records)"
    return "not possible: publish the next key's record beside this one first"


def _cert_info(depth: int, cert: x509.Certificate) -> dict[str, Any]:
    dns, cns, _ = dane.certificate_names(cert)
    return {"depth": depth, "subject": cert.subject.rfc4514_string(),
            "issuer": cert.issuer.rfc4514_string(), "names": dns or cns,
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat()}  # fmt: skip


async def _probe(address: str, port: int, host: str, names: list[str],
                 usable: list[dane.TLSARecord], timeout: float) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {"address": address, "ok": False}
    client = SMTPClient(address, port, helo_name="dane-check.invalid", server_name=host,
                        tls=TLSPolicy(starttls="require", verify="none", request_ocsp=False),
                        connect_timeout=timeout, command_timeout=timeout)  # fmt: skip
    try:
        await client.connect()
    except SMTPClientError as exc:
        out["error"] = str(exc.response)
        return out
    try:
        info = client.tls
        assert info is not None
        out["tls"] = f"{info.version} {info.cipher}"
        chain = list(info.peer_chain) or ([info.peer_certificate] if info.peer_certificate
                                          else [])  # fmt: skip
        out["chain"] = [_cert_info(i, c) for i, c in enumerate(chain)]
        if not usable:
            out["ok"] = True  # TLS without authentication is all RFC 7672 asks then
            return out
        try:
            match = dane.verify_chain(chain, usable, names)
        except dane.DaneFailure as exc:
            out["failure"] = exc.reason
            return out
        out.update(ok=True, match=match.describe(), depth=match.depth,
                   usage=match.record.usage)  # fmt: skip
        return out
    finally:
        await client.quit()


async def check(domain: str, resolver: SecureResolver, port: int = 25,
                timeout: float = 30.0) -> dict[str, Any]:  # fmt: skip
    domain = domain.lower().rstrip(".")
    report: dict[str, Any] = {"domain": domain, "port": port, "hosts": [], "ok": False}
    mx = await resolver.lookup(domain, "MX")
    report["mx"] = mx.describe()
    if mx.failed:
        report["problem"] = "the MX lookup failed: a sender defers"
        return report
    targets = sorted((int(r.preference), r.exchange.to_text(omit_final_dot=True).lower())
                     for r in mx.records) if mx.kind == "answer" else [(-1, domain)]  # fmt: skip
    if not mx.secure:
        report["problem"] = "the MX lookup is insecure: no DANE for this domain"
    all_ok = mx.secure
    for pref, name in targets:
        host: dict[str, Any] = {"name": name, "preference": None if pref < 0 else pref}
        report["hosts"].append(host)
        lookups = await asyncio.gather(resolver.lookup(name, "A"), resolver.lookup(name, "AAAA"))
        addresses = [r.address for lk in lookups if lk.kind == "answer" for r in lk.records]
        secure = all(lk.secure for lk in lookups) and bool(addresses)
        host["address_lookup"] = ", ".join(f"{lk.rdtype} {lk.describe()}" for lk in lookups)
        host["addresses"] = []
        if not secure:
            host["problem"] = "the address lookup is not secure: no TLSA lookup is made"
            all_ok = False
            continue
        # The TLSA base domain: a secure CNAME chain's target first, then the
        # name itself (RFC 7672 2.2.3), as the smtp transport looks.
        steps = await resolver.cname_chain(name)
        expanded = None
        if steps and all(lk.secure for _, lk in steps):
            expanded = steps[-1][1].records[0].target.to_text(omit_final_dot=True).lower()
            host["cname"] = expanded
        base = name
        for base in [n for n in (expanded, name) if n]:
            tlsa = await resolver.lookup(f"_{port}._tcp.{base}", "TLSA")
            if tlsa.failed or (tlsa.secure and tlsa.kind == "answer"):
                break
        host["tlsa_base"] = base
        host["tlsa_lookup"] = tlsa.describe()
        if tlsa.failed:
            host["problem"] = "the TLSA lookup failed: a sender passes this host over"
            all_ok = False
            continue
        if not tlsa.secure or tlsa.kind != "answer":
            host["problem"] = "no secure TLSA records: opportunistic TLS only"
            all_ok = False
            continue
        records = _records(tlsa)
        usable = dane.usable_records(records)
        host["records"] = [{"record": str(r), "type": r.label, "usable": r in usable,
                            "why": r.unusable() or ("" if r in usable else
                                                    "a stronger digest of the same kind exists")}
                           for r in records]  # fmt: skip
        host["rollover"] = _rollover(usable)
        if not usable:
            host["problem"] = "no usable TLSA records: TLS without authentication"
            all_ok = False
        names = [base, name]
        if mx.secure and mx.kind == "answer":
            names += [domain, mx.canonical]
        names = list(dict.fromkeys(n for n in names if n))
        for address in addresses:
            probe = await _probe(address, port, base, names, usable, timeout)
            host["addresses"].append(probe)
            all_ok = all_ok and probe["ok"]
    report["ok"] = all_ok and bool(report["hosts"])
    return report


def _print(report: dict[str, Any]) -> None:
    out = sys.stdout.write
    port = report["port"]
    out(f"{report['domain']}: MX {report['mx']}\n")
    if "problem" in report:
        out(f"  ! {report['problem']}\n")
    for h in report["hosts"]:
        pref = f" (MX {h['preference']})" if h["preference"] is not None else " (no MX: itself)"
        out(f"  {h['name']}{pref}\n    addresses: {h['address_lookup']}\n")
        if "cname" in h:
            out(f"    an alias of {h['cname']} (secure CNAME)\n")
        if "tlsa_lookup" in h:
            out(f"    TLSA at _{port}._tcp.{h['tlsa_base']}: {h['tlsa_lookup']}\n")
        for r in h.get("records", []):
            state = "usable" if r["usable"] else f"unusable: {r['why']}"
            out(f"      {r['record'][:60]}{'...' if len(r['record']) > 60 else ''}  "
                f"{r['type']}  {state}\n")  # fmt: skip
        if "rollover" in h:
            out(f"    key rollover: {h['rollover']}\n")
        if "problem" in h:
            out(f"    ! {h['problem']}\n")
        for a in h["addresses"]:
            mark = "ok" if a["ok"] else "FAILED"
            what = a.get("match") or a.get("failure") or a.get("error") or "TLS, unauthenticated"
            out(f"    [{mark}] {a['address']}: {a.get('tls', 'no TLS')}; {what}\n")
            for c in a.get("chain", []):
                out(f"        depth {c['depth']}: {c['subject']} (names: "
                    f"{', '.join(c['names']) or 'none'}; valid {c['not_before'][:10]} to "
                    f"{c['not_after'][:10]})\n")  # fmt: skip
    out("result: " + ("DANE verified for every MX host\n" if report["ok"] else "FAILED\n"))


def run(args: argparse.Namespace) -> int:
    resolver = SecureResolver(args.nameserver or (), timeout=args.timeout)
    report = asyncio.run(check(args.domain, resolver, args.port, args.timeout))
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print(report)
    return 0 if report["ok"] else 1
