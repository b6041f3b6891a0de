"""DANE for SMTP: TLSA records (RFC 6698), which of them an SMTP client may
use (RFC 7672 section 3.1, RFC 7671 section 9 for digest agility), and the
check of the chain a server presented against them.

- DANE-EE(3): the leaf certificate, or its public key, matches; nothing else
  is checked: no name, no expiry, no chain (RFC 7672 section 3.1.1).
- DANE-TA(2): a certificate of the presented chain matches (or, for a record
  carrying a whole certificate or key, signs the top of the chain); the
  chain from the leaf up to it is validated, expiry included, and the leaf
  must carry one of the reference identifiers (RFC 7672 section 3.1.2).
- PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP, as are unknown selectors
  and matching types and digests of the wrong length.

``verify_chain(chain, records, names)`` returns the ``Match`` (the record and
the depth it matched at) or raises ``DaneFailure`` saying why.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa

from smtpedge import certnames

__all__ = [
    "DANE_EE",
    "DANE_TA",
    "DaneFailure",
    "Match",
    "TLSARecord",
    "certificate_names",
    "make_record",
    "usable_records",
    "verify_chain",
]

PKIX_TA, PKIX_EE, DANE_TA, DANE_EE = 0, 1, 2, 3
USAGES = {0: "PKIX-TA", 1: "PKIX-EE", 2: "DANE-TA", 3: "DANE-EE"}
SELECTORS = {0: "Cert", 1: "SPKI"}
MTYPES = {0: "Full", 1: "SHA2-256", 2: "SHA2-512"}
_DIGEST_SIZE = {1: 32, 2: 64}
#: Digest strength for agility (RFC 7671 section 9): the strongest present wins.
_STRENGTH = {1: 1, 2: 2}


@dataclass(frozen=True, slots=True)
class TLSARecord:
    """One TLSA record: certificate usage, selector, matching type, data."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    @classmethod
    def parse(cls, text: str) -> TLSARecord:
        """``"3 1 1 8f3a..."`` (presentation form; the hex may have spaces)."""
        parts = text.split()
        if len(parts) < 4:
            raise ValueError(f"a TLSA record is 'usage selector mtype hex', not {text!r}")
        try:
            usage, selector, mtype = (int(p) for p in parts[:3])
            data = bytes.fromhex("".join(parts[3:]))
        except ValueError:
            raise ValueError(f"a TLSA record is 'usage selector mtype hex', not {text!r}") from None
        for value, what in ((usage, "usage"), (selector, "selector"), (mtype, "matching type")):
            if not 0 <= value <= 255:
                raise ValueError(f"TLSA {what} {value} is not 0-255")
        return cls(usage, selector, mtype, data)

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"

    @property
    def label(self) -> str:
        """``DANE-EE(3) SPKI(1) SHA2-256(1)``."""
        return " ".join(f"{names.get(v, 'unknown')}({v})" for names, v in (
            (USAGES, self.usage), (SELECTORS, self.selector), (MTYPES, self.mtype)))  # fmt: skip

    def unusable(self) -> str | None:
        """Why an SMTP client cannot use this record, or None."""
        if self.usage in (PKIX_TA, PKIX_EE):
            return f"{USAGES[self.usage]}({self.usage}) is not used with SMTP (RFC 7672 3.1.3)"
        if self.usage not in (DANE_TA, DANE_EE):
            return f"unknown certificate usage {self.usage}"
        if self.selector not in SELECTORS:
            return f"unknown selector {self.selector}"
        if self.mtype not in MTYPES:
            return f"unknown matching type {self.mtype}"
        if self.mtype in _DIGEST_SIZE and len(self.data) != _DIGEST_SIZE[self.mtype]:
            return (f"a {MTYPES[self.mtype]} digest has {_DIGEST_SIZE[self.mtype]} bytes, "
                    f"not {len(self.data)}")  # fmt: skip
        if self.mtype == 0 and not self.data:
            return "no data"
        if self.mtype == 0 and self.usage == DANE_TA:
            # A whole trust anchor from the DNS must be one.
            try:
                _anchor_key(self)
            except ValueError as exc:
                return str(exc)
        return None


def make_record(cert: x509.Certificate, usage: int = DANE_EE, selector: int = 1,
                mtype: int = 1) -> TLSARecord:  # fmt: skip
    """The TLSA record for a certificate (for DANE-TA, the CA's)."""
    if selector not in SELECTORS or mtype not in MTYPES:
        raise ValueError(f"selector 0-1 and matching type 0-2, not {selector} and {mtype}")
    return TLSARecord(usage, selector, mtype, _digest(_selected(cert, selector), mtype))


def usable_records(records: Iterable[TLSARecord]) -> list[TLSARecord]:
    """The records an SMTP client uses: the usable ones, and of the digests
    for each usage and selector only the strongest type present (Full(0)
    records are always kept), RFC 7671 section 9."""
    good = [r for r in records if r.unusable() is None]
    best: dict[tuple[int, int], int] = {}
    for r in good:
        if r.mtype in _STRENGTH:
            key = (r.usage, r.selector)
            best[key] = max(best.get(key, 0), _STRENGTH[r.mtype])
    return [r for r in good if r.mtype == 0 or _STRENGTH[r.mtype] == best[(r.usage, r.selector)]]


@dataclass(frozen=True, slots=True)
class Match:
    """The record that authenticated the server and the chain depth it
    matched at (0: the leaf). For a trust anchor that came whole from the
    DNS, the depth is that of the certificate it signed plus one for a
    certificate (``2 0 0``), or that of the signed certificate for a bare
    key (``2 1 0``), as OpenSSL counts."""

    record: TLSARecord
    depth: int

    def describe(self) -> str:
        """Postfix's log wording, so that the two can be compared:
        ``Matched DANE EE certificate at depth 0: 3 1 1 8E02DA...``."""
        r = self.record
        kind = "EE" if r.usage == DANE_EE else "TA"
        return (f"Matched DANE {kind} certificate at depth {self.depth}: "
                f"{r.usage} {r.selector} {r.mtype} {r.data.hex().upper()}")  # fmt: skip


class DaneFailure(Exception):
    """The chain does not authenticate by these records. ``kind`` is
    ``no-usable-records``, ``no-match``, ``name-mismatch`` (a trust anchor
    matched, the leaf is not for any reference name) or ``chain`` (a
    certificate below the trust anchor is expired or not signed by the next
    one); ``depth`` is the depth of the trust anchor that matched, if one did."""

    def __init__(self, kind: str, reason: str, depth: int | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.depth = depth


def certificate_names(cert: x509.Certificate) -> tuple[list[str], list[str], list[str]]:
    """The SAN dNSNames, subject CNs and SAN IP addresses of a certificate,
    as ``certnames.verify_names`` takes them."""
    dns: list[str] = []
    ips: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = list(san.get_values_for_type(x509.DNSName))
        ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    except ValueError:  # a malformed extension names nothing
        pass
    cns = [str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    return dns, cns, ips


def _selected(cert: x509.Certificate, selector: int) -> bytes:
    if selector == 0:
        return cert.public_bytes(serialization.Encoding.DER)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(serialization.Encoding.DER, spki)


def _digest(data: bytes, mtype: int) -> bytes:
    if mtype == 1:
        return hashlib.sha256(data).digest()
    if mtype == 2:
        return hashlib.sha512(data).digest()
    return data


def _matches(record: TLSARecord, cert: x509.Certificate, cache: dict[tuple[int, int], bytes],
             depth: int) -> bool:  # fmt: skip
    key = (depth, record.selector)
    if key not in cache:
        cache[key] = _selected(cert, record.selector)
    return _digest(cache[key], record.mtype) == record.data


def _anchor_key(record: TLSARecord) -> tuple[x509.Certificate | None, object]:
    """The certificate (for ``2 0 0``) and public key of a trust anchor
    carried whole in a record."""
    if record.selector == 0:
        try:
            cert = x509.load_der_x509_certificate(record.data)
            return cert, cert.public_key()
        except (ValueError, UnsupportedAlgorithm):
            raise ValueError("the record's data is not a certificate") from None
    try:
        return None, serialization.load_der_public_key(record.data)
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("the record's data is not a public key") from None


def _signed_by(cert: x509.Certificate, key: object) -> bool:
    """Whether ``key`` made the signature on ``cert``."""
    try:
        data, sig = cert.tbs_certificate_bytes, cert.signature
        if isinstance(key, rsa.RSAPublicKey):
            pad = cert.signature_algorithm_parameters
            if not isinstance(pad, padding.PSS | padding.PKCS1v15):
                pad = padding.PKCS1v15()
            algorithm = cert.signature_hash_algorithm
            if algorithm is None:
                return False
            key.verify(sig, data, pad, algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            algorithm = cert.signature_hash_algorithm
            if algorithm is None:
                return False
            key.verify(sig, data, ec.ECDSA(algorithm))
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(sig, data)
        elif isinstance(key, dsa.DSAPublicKey):
            algorithm = cert.signature_hash_algorithm
            if algorithm is None:
                return False
            key.verify(sig, data, algorithm)
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return False
    return True


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    return cert.issuer == issuer.subject and _signed_by(cert, issuer.public_key())


def _chain_problem(chain: Sequence[x509.Certificate], top: int, now: dt.datetime,
                   *, top_too: bool) -> str | None:  # fmt: skip
    """Why the certificates below the trust anchor are not a valid chain up
    to it, or None: ``chain[0..top-1]`` each signed by the next and valid
    now, and with ``top_too`` (the anchor came from the DNS and signed
    ``chain[top]``) ``chain[top]`` valid now as well."""
    for i in range(top):
        if not _issued_by(chain[i], chain[i + 1]):
            return f"the certificate at depth {i} is not issued by the one at depth {i + 1}"
    for i in range(top + 1 if top_too else top):
        expired = _expired(chain[i], now)
        if expired:
            return f"the certificate at depth {i} {expired}"
    return None


def _expired(cert: x509.Certificate, now: dt.datetime) -> str | None:
    if now < cert.not_valid_before_utc:
        return f"is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
    if now > cert.not_valid_after_utc:
        return f"expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
    return None


def _name_problem(leaf: x509.Certificate, names: Sequence[str]) -> str | None:
    dns, cns, ips = certificate_names(leaf)
    if any(certnames.verify_names(dns, cns, ips, n) for n in names):
        return None
    shown = ", ".join(dns or cns) or "no name"
    return f"the certificate is for {shown}, not {' or '.join(names) or 'a name'}"


def verify_chain(
    chain: Sequence[x509.Certificate | bytes],
    records: Iterable[TLSARecord],
    names: Sequence[str],
    *,
    now: dt.datetime | None = None,
    check_names: bool = True,
) -> Match:
    """Authenticate a presented chain (leaf first, DER or parsed) by TLSA
    records, RFC 7672's way. ``names`` are the reference identifiers for
    DANE-TA (the TLSA base domain, and the next-hop domain after a secure MX
    lookup). A DANE-EE match wins over any DANE-TA one, and a trust anchor
    nearer the leaf over one further up."""
    certs = [c if isinstance(c, x509.Certificate) else x509.load_der_x509_certificate(c)
             for c in chain]  # fmt: skip
    if not certs:
        raise DaneFailure("no-match", "the server presented no certificate")
    usable = usable_records(records)
    if not usable:
        raise DaneFailure("no-usable-records", "no usable TLSA records")
    when = now or dt.datetime.now(dt.UTC)
    cache: dict[tuple[int, int], bytes] = {}
    for r in usable:
        if r.usage == DANE_EE and _matches(r, certs[0], cache, 0):
            return Match(r, 0)
    anchors = [r for r in usable if r.usage == DANE_TA]
    failure: DaneFailure | None = None

    def accept(record: TLSARecord, top: int, depth: int, from_dns: bool) -> Match | None:
        nonlocal failure
        problem = _chain_problem(certs, top, when, top_too=from_dns)
        if problem is not None:
            failure = failure or DaneFailure("chain", problem, depth)
            return None
        if check_names:
            problem = _name_problem(certs[0], names)
            if problem is not None:
                failure = DaneFailure("name-mismatch", problem, depth)
                return None
        return Match(record, depth)

    # A trust anchor in the presented chain, the nearest to the leaf first.
    for depth, cert in enumerate(certs):
        for r in anchors:
            if _matches(r, cert, cache, depth):
                found = accept(r, depth, depth, False)
                if found is not None:
                    return found
    # A trust anchor carried whole in the DNS that signed a presented certificate.
    for r in anchors:
        if r.mtype != 0:
            continue
        anchor, key = _anchor_key(r)
        for i, cert in enumerate(certs):
            if (anchor is not None and _issued_by(cert, anchor)) or (
                anchor is None and _signed_by(cert, key)
            ):
                found = accept(r, i, i + 1 if anchor is not None else i, True)
                if found is not None:
                    return found
                break
    if failure is not None:
        raise failure
    raise DaneFailure("no-match", "no TLSA record matches the certificate chain")
