"""OCSP (RFC 6960): build requests, and verify responses the way a client
must before trusting one, and a server before stapling one.

``verify(response, cert, issuer)`` does every check of RFC 6960 section
3.2 and returns an ``OCSPResult`` whose ``reason`` says, in an operator's
words, which check failed:

1. the response parses and its status is ``successful``;
2. it holds a SingleResponse whose CertID (hash of the issuer's name, hash of
   the issuer's key, serial number) is the certificate's;
3. its signer is the issuer itself, or a delegated responder certificate
   issued directly by the issuer with the id-kp-OCSPSigning purpose;
4. the signature verifies with the signer's key;
5. the signer is valid now and until nextUpdate (a delegate that expires
   before the response does is refused: a verifier after that date could
   not check the signature);
6. thisUpdate is not in the future and nextUpdate has not passed (with a
   small allowance for clock skew), and nextUpdate is present;
7. the status is ``good``.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

__all__ = [
    "OCSPResult",
    "build_request",
    "issuer_key_hash",
    "issuer_name_hash",
    "load_response",
    "verify",
]

OCSP_NOCHECK = ObjectIdentifier("1.3.6.1.5.5.7.48.1.5")
DEFAULT_SKEW = dt.timedelta(minutes=5)
_PEM = re.compile(rb"-----BEGIN OCSP RESPONSE-----(.*?)-----END OCSP RESPONSE-----", re.S)


@dataclass(frozen=True, slots=True)
class OCSPResult:
    """The outcome of ``verify``. ``ok`` only for a verified ``good`` answer."""

    ok: bool
    reason: str
    status: str | None = None  # "good", "revoked", "unknown"
    this_update: dt.datetime | None = None
    next_update: dt.datetime | None = None
    signer: x509.Certificate | None = None
    delegated: bool = False
    nocheck: bool = False
    revocation_time: dt.datetime | None = None


def build_request(
    cert: x509.Certificate, issuer: x509.Certificate, *, algorithm: str = "sha1"
) -> bytes:
    """A DER OCSPRequest for one certificate (CertID hashed with SHA-1, the
    algorithm every responder knows, or SHA-256)."""
    alg: hashes.HashAlgorithm = hashes.SHA256() if algorithm == "sha256" else hashes.SHA1()
    req = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, alg).build()
    return req.public_bytes(serialization.Encoding.DER)


def load_response(data: bytes) -> ocsp.OCSPResponse:
    """Parse a DER response, or a PEM one ("BEGIN OCSP RESPONSE"); ValueError
    if it is neither."""
    m = _PEM.search(data)
    if m is not None:
        data = base64.b64decode(b"".join(m.group(1).split()))
    return ocsp.load_der_ocsp_response(data)


def issuer_key_hash(cert: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    """Hash of the BIT STRING of subjectPublicKey (RFC 6960 4.1.1)."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # The SPKI is SEQUENCE { algorithm, BIT STRING }: hash the bit string's
    # contents without the unused-bits octet.
    key_bits = _last_bit_string(spki)
    h = hashes.Hash(algorithm)
    h.update(key_bits)
    return h.finalize()


def _der_len(data: bytes, i: int) -> tuple[int, int]:
    first = data[i]
    if first < 0x80:
        return first, i + 1
    n = first & 0x7F
    return int.from_bytes(data[i + 1 : i + 1 + n], "big"), i + 1 + n


def _last_bit_string(spki: bytes) -> bytes:
    # outer SEQUENCE
    _, i = _der_len(spki, 1)
    # AlgorithmIdentifier SEQUENCE: skip it
    alg_len, j = _der_len(spki, i + 1)
    i = j + alg_len
    if spki[i] != 0x03:
        raise ValueError("SubjectPublicKeyInfo without a BIT STRING")
    length, j = _der_len(spki, i + 1)
    return spki[j + 1 : j + length]  # skip the unused-bits octet


def issuer_name_hash(cert: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    """Hash of the DER subject name (the issuerNameHash of a CertID)."""
    h = hashes.Hash(algorithm)
    h.update(cert.subject.public_bytes())
    return h.finalize()


def _verify_signature(signer: x509.Certificate, resp: ocsp.OCSPResponse) -> bool:
    key = signer.public_key()
    sig, data = resp.signature, resp.tbs_response_bytes
    alg = resp.signature_hash_algorithm
    try:
        if isinstance(key, rsa.RSAPublicKey):
            assert alg is not None
            key.verify(sig, data, padding.PKCS1v15(), alg)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            assert alg is not None
            key.verify(sig, data, ec.ECDSA(alg))
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(sig, data)
        else:
            return False
    except (InvalidSignature, AssertionError, ValueError):
        return False
    return True


def _same_key(a: x509.Certificate, b: x509.Certificate) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return a.public_key().public_bytes(*fmt) == b.public_key().public_bytes(*fmt)


def _identifies(resp: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    """Does the ResponderID name this certificate?"""
    if resp.responder_name is not None:
        return resp.responder_name == cert.subject
    if resp.responder_key_hash is not None:
        return resp.responder_key_hash == issuer_key_hash(cert, hashes.SHA1())
    return False


def _fmt(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def verify(
    response: bytes | ocsp.OCSPResponse,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    now: dt.datetime | None = None,
    skew: dt.timedelta = DEFAULT_SKEW,
) -> OCSPResult:
    """Check an OCSP response for ``cert`` (issued by ``issuer``); see the
    module docstring for the checks, in order."""
    now = now or dt.datetime.now(dt.UTC)
    if isinstance(response, bytes | bytearray):
        try:
            resp = load_response(bytes(response))
        except ValueError as exc:
            return OCSPResult(False, f"not an OCSP response ({exc})")
    else:
        resp = response
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        name = resp.response_status.name.lower()
        return OCSPResult(False, f"the responder answered '{name}', not 'successful'")

    single: ocsp.OCSPSingleResponse | None = None
    serials = []
    for s in resp.responses:
        serials.append(s.serial_number)
        alg = s.hash_algorithm
        if (
            s.serial_number == cert.serial_number
            and s.issuer_name_hash == issuer_name_hash(issuer, alg)
            and s.issuer_key_hash == issuer_key_hash(issuer, alg)
        ):
            single = s
            break
    if single is None:
        listed = ", ".join(f"{n:x}" for n in serials) or "none"
        return OCSPResult(
            False,
            f"the response is for another certificate (serial {listed}; wanted "
            f"{cert.serial_number:x} issued by {issuer.subject.rfc4514_string()})",
        )

    # Who signed it: the issuer, or a delegate whose certificate is included.
    signer: x509.Certificate | None = None
    delegated = False
    if _identifies(resp, issuer):
        signer = issuer
    else:
        for c in resp.certificates:
            if _identifies(resp, c):
                signer, delegated = c, True
                break
    if signer is None:
        return OCSPResult(False, "the response is signed by an unknown responder "
                          "(neither the issuer nor an included delegate)")  # fmt: skip
    nocheck = False
    if delegated and not (signer.subject == issuer.subject and _same_key(signer, issuer)):
        try:
            signer.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            return OCSPResult(False, "the delegated responder certificate "
                              f"({signer.subject.rfc4514_string()}) was not issued by the "
                              "certificate's issuer", signer=signer, delegated=True)  # fmt: skip
        try:
            eku = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = None
        if eku is None or ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            return OCSPResult(False, "the delegated responder certificate lacks the "
                              "OCSP signing purpose (id-kp-OCSPSigning)", signer=signer,
                              delegated=True)  # fmt: skip
        nocheck = any(ext.oid == OCSP_NOCHECK for ext in signer.extensions)
    if not _verify_signature(signer, resp):
        return OCSPResult(False, "the response's signature does not verify", signer=signer,
                          delegated=delegated)  # fmt: skip

    this_update = single.this_update_utc
    next_update = single.next_update_utc
    status = single.certificate_status.name.lower()

    def result(ok: bool, reason: str, revoked: dt.datetime | None = None) -> OCSPResult:
        return OCSPResult(ok, reason, status, this_update, next_update, signer, delegated,
                          nocheck, revoked)  # fmt: skip

    if signer.not_valid_before_utc > now + skew:
        return result(False, f"the signer certificate is not valid until "
                      f"{_fmt(signer.not_valid_before_utc)}")  # fmt: skip
    if signer.not_valid_after_utc < now - skew:
        return result(False, f"the signer certificate expired on "
                      f"{_fmt(signer.not_valid_after_utc)}")  # fmt: skip
    if next_update is not None and signer.not_valid_after_utc < next_update:
        return result(False, f"the signer certificate expires on "
                      f"{_fmt(signer.not_valid_after_utc)}, before the response's nextUpdate "
                      f"{_fmt(next_update)}")  # fmt: skip
    if this_update > now + skew:
        return result(False, f"thisUpdate {_fmt(this_update)} is in the future")
    if next_update is None:
        return result(False, "the response has no nextUpdate, so its freshness cannot be judged")
    if next_update < now - skew:
        return result(False, f"the response expired: nextUpdate {_fmt(next_update)} has passed")
    if status == "revoked":
        when = single.revocation_time_utc
        why = single.revocation_reason.name if single.revocation_reason else "no reason given"
        return result(False, f"the certificate was revoked on "
                      f"{_fmt(when) if when else 'an unknown date'} ({why})", when)  # fmt: skip
    if status != "good":
        return result(False, "the responder does not know the certificate (status 'unknown')")
    return result(True, f"good until {_fmt(next_update)}")
