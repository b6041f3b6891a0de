"""RFC 6960 verification: each check, in RSA and ECDSA."""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp as x509_ocsp

from pki import NOW, Issued, issue, make_ca, response
from smtpedge.tls import ocsp


@pytest.fixture(scope="module", params=["rsa", "ec"])
def pki(request: pytest.FixtureRequest) -> dict[str, Issued]:
    kind = request.param
    ca = make_ca(kind=kind)
    other_ca = make_ca("other CA", kind=kind)
    return {
        "ca": ca,
        "other_ca": other_ca,
        "leaf": issue(ca, "mx.example.net", kind=kind, dns=["mx.example.net"]),
        "other_leaf": issue(ca, "other.example.net", kind=kind),
        "delegate": issue(ca, "ocsp.example.net", kind=kind, ocsp_signing=True, nocheck=True),
        "no_eku": issue(ca, "not-a-responder", kind=kind),
        "foreign_delegate": issue(other_ca, "ocsp.other", kind=kind, ocsp_signing=True),
        "short_delegate": issue(
            ca, "ocsp-short", kind=kind, ocsp_signing=True, not_after=NOW + dt.timedelta(days=1)
        ),
        "expired_delegate": issue(
            ca,
            "ocsp-old",
            kind=kind,
            ocsp_signing=True,
            not_before=NOW - dt.timedelta(days=30),
            not_after=NOW - dt.timedelta(days=2),
        ),
    }


def check(p: dict[str, Issued], der: bytes, leaf: str = "leaf") -> ocsp.OCSPResult:
    return ocsp.verify(der, p[leaf].cert, p["ca"].cert)


def test_good_signed_by_the_issuer(pki: dict[str, Issued]) -> None:
    r = check(pki, response(pki["leaf"].cert, pki["ca"].cert, pki["ca"]))
    assert r.ok and r.status == "good" and not r.delegated
    assert r.reason.startswith("good until")
    by_hash = response(pki["leaf"].cert, pki["ca"].cert, pki["ca"], by_key_hash=True)
    assert check(pki, by_hash).ok


def test_good_signed_by_a_delegate(pki: dict[str, Issued]) -> None:
    der = response(pki["leaf"].cert, pki["ca"].cert, pki["delegate"], include_signer=True)
    r = check(pki, der)
    assert r.ok and r.delegated and r.nocheck
    assert r.signer == pki["delegate"].cert


def test_pem_is_accepted(pki: dict[str, Issued]) -> None:
    der = response(pki["leaf"].cert, pki["ca"].cert, pki["ca"])
    pem = b"-----BEGIN OCSP RESPONSE-----\n" + base64.encodebytes(der) + (
        b"-----END OCSP RESPONSE-----\n")  # fmt: skip
    assert check(pki, pem).ok


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("garbage", "not an OCSP response"),
        ("unauthorized", "answered 'unauthorized'"),
        ("other_cert", "for another certificate"),
        ("revoked", "was revoked on"),
        ("unknown", "does not know the certificate"),
        ("expired", "the response expired"),
        ("future", "is in the future"),
        ("no_next_update", "has no nextUpdate"),
        ("unknown_signer", "unknown responder"),
        ("no_eku", "lacks the OCSP signing purpose"),
        ("foreign_delegate", "was not issued by the certificate's issuer"),
        ("short_delegate", "before the response's nextUpdate"),
        ("expired_delegate", "the signer certificate expired"),
        ("bad_signature", "signature does not verify"),
    ],
)
def test_failures_say_which_check_failed(pki: dict[str, Issued], case: str, fragment: str) -> None:
    leaf, ca = pki["leaf"].cert, pki["ca"].cert
    if case == "garbage":
        der = b"\x30\x03\x0a\x01"
    elif case == "unauthorized":
        der = x509_ocsp.OCSPResponseBuilder.build_unsuccessful(
            x509_ocsp.OCSPResponseStatus.UNAUTHORIZED
        ).public_bytes(Encoding.DER)
    elif case == "other_cert":
        der = response(pki["other_leaf"].cert, ca, pki["ca"])
    elif case in ("revoked", "unknown"):
        der = response(leaf, ca, pki["ca"], status=case)
    elif case == "expired":
        der = response(leaf, ca, pki["ca"], this_update=NOW - dt.timedelta(days=9),
                       next_update=NOW - dt.timedelta(days=2))  # fmt: skip
    elif case == "future":
        der = response(leaf, ca, pki["ca"], this_update=NOW + dt.timedelta(days=1))
    elif case == "no_next_update":
        der = response(leaf, ca, pki["ca"], next_update=False)
    elif case == "unknown_signer":
        der = response(leaf, ca, pki["delegate"], include_signer=False)
    elif case in ("no_eku", "foreign_delegate", "short_delegate", "expired_delegate"):
        der = response(leaf, ca, pki[case], include_signer=True)
    else:  # bad_signature: flip a byte of the signature
        good = bytearray(response(leaf, ca, pki["ca"]))
        good[-5] ^= 0x55
        der = bytes(good)
    r = check(pki, der)
    assert not r.ok
    assert fragment in r.reason, r.reason


def test_build_request_round_trips(pki: dict[str, Issued]) -> None:
    for alg in ("sha1", "sha256"):
        der = ocsp.build_request(pki["leaf"].cert, pki["ca"].cert, algorithm=alg)
        req = x509_ocsp.load_der_ocsp_request(der)
        assert req.serial_number == pki["leaf"].cert.serial_number
        assert req.hash_algorithm.name == alg
