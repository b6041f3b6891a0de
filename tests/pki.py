"""A test PKI built with cryptography: a CA, leaf certificates, delegated OCSP
responders and OCSP responses, in RSA and ECDSA."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def new_key(kind: str = "rsa") -> Key:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Issued:
    cert: x509.Certificate
    key: Key

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())  # fmt: skip


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str = "smtpedge test CA", kind: str = "rsa") -> Issued:
    key = new_key(kind)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=30))
        .not_valid_after(NOW + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue(
    ca: Issued,
    cn: str,
    *,
    kind: str = "rsa",
    dns: list[str] | None = None,
    ocsp_signing: bool = False,
    nocheck: bool = False,
    not_after: dt.datetime | None = None,
    not_before: dt.datetime | None = None,
    aia_url: str | None = None,
) -> Issued:
    key = new_key(kind)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - dt.timedelta(days=1))
        .not_valid_after(not_after or NOW + dt.timedelta(days=365))
    )
    if dns:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), False)
    if ocsp_signing:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), False)
    if nocheck:
        b = b.add_extension(x509.OCSPNoCheck(), False)
    if aia_url:
        b = b.add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(aia_url))]),
            False)  # fmt: skip
    return Issued(b.sign(ca.key, hashes.SHA256()), key)


def response(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    signer: Issued,
    *,
    status: str = "good",
    this_update: dt.datetime | None = None,
    next_update: dt.datetime | bool | None = True,
    include_signer: bool = False,
    by_key_hash: bool = False,
) -> bytes:
    st = {"good": ocsp.OCSPCertStatus.GOOD, "revoked": ocsp.OCSPCertStatus.REVOKED,
          "unknown": ocsp.OCSPCertStatus.UNKNOWN}[status]  # fmt: skip
    this = this_update or NOW - dt.timedelta(hours=1)
    nxt: dt.datetime | None
    if next_update is True:
        nxt = NOW + dt.timedelta(days=3)
    elif next_update is False:
        nxt = None
    else:
        nxt = next_update
    b = ocsp.OCSPResponseBuilder().add_response(
        cert=cert, issuer=issuer, algorithm=hashes.SHA1(), cert_status=st,
        this_update=this, next_update=nxt,
        revocation_time=NOW - dt.timedelta(days=2) if status == "revoked" else None,
        revocation_reason=x509.ReasonFlags.key_compromise if status == "revoked" else None,
    )  # fmt: skip
    enc = ocsp.OCSPResponderEncoding.HASH if by_key_hash else ocsp.OCSPResponderEncoding.NAME
    b = b.responder_id(enc, signer.cert)
    if include_signer:
        b = b.certificates([signer.cert])
    return b.sign(signer.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def write_pair(directory: Path, name: str, leaf: Issued, ca: Issued) -> tuple[Path, Path]:
    """A certificate file (leaf then CA) and its key file."""
    cert = directory / f"{name}.crt"
    key = directory / f"{name}.key"
    cert.write_bytes(leaf.pem() + ca.pem())
    key.write_bytes(leaf.key_pem())
    return cert, key
