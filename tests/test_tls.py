"""The TLS engine on plain bytes (two engines wired together in memory),
server contexts with several certificates, SNI and OCSP stapling."""

from __future__ import annotations

from pathlib import Path

import pytest
from OpenSSL import SSL

from pki import Issued, issue, make_ca, response, write_pair
from smtpedge.errors import TLSError
from smtpedge.tls.engine import TLSEngine
from smtpedge.tls.server import CertificatePair, ServerTLS, TLSConfigError, make_self_signed


def pump(a: TLSEngine, b: TLSEngine) -> None:
    """Run both handshakes, moving bytes both ways, until neither side has
    anything more to say."""
    for _ in range(20):
        for e in (a, b):
            if not e.established:
                e.handshake()
        moved = False
        for src, dst in ((a, b), (b, a)):
            data = src.outgoing()
            if data:
                dst.receive(data)
                moved = True
        if not moved:
            return


def client_context(*, sigalgs: str | None = None) -> SSL.Context:
    """A client context; ``sigalgs`` "ECDSA" or "RSA" limits it to TLS 1.2
    suites that need that kind of server certificate."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)
    if sigalgs:
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        kind = "ECDSA" if sigalgs.startswith("ECDSA") else "RSA"
        ctx.set_cipher_list(f"ECDHE-{kind}-AES128-GCM-SHA256".encode())
    ctx.set_ocsp_client_callback(lambda conn, data, _: True)
    return ctx


@pytest.fixture(scope="module")
def pki() -> dict[str, Issued]:
    ca = make_ca()
    return {
        "ca": ca,
        "rsa": issue(ca, "mx.example.net", dns=["mx.example.net"]),
        "ec": issue(ca, "mx.example.net", kind="ec", dns=["mx.example.net"]),
        "sni": issue(ca, "other.example.org", dns=["other.example.org"]),
    }


def server_tls(tmp_path: Path, pki: dict[str, Issued], ocsp: bool = False) -> ServerTLS:
    rsa_c, rsa_k = write_pair(tmp_path, "rsa", pki["rsa"], pki["ca"])
    ec_c, ec_k = write_pair(tmp_path, "ec", pki["ec"], pki["ca"])
    write_pair(tmp_path, "sni-other.example.org", pki["sni"], pki["ca"])
    return ServerTLS([
        CertificatePair(str(rsa_c), str(rsa_k), str(tmp_path / "rsa.ocsp") if ocsp else ""),
        CertificatePair(str(ec_c), str(ec_k), str(tmp_path / "ec.ocsp") if ocsp else ""),
        CertificatePair(str(tmp_path / "sni-{sni}.crt"), str(tmp_path / "sni-{sni}.key")),
    ])  # fmt: skip


def handshake(
    srv: ServerTLS, *, sni: str | None = None, sigalgs: str | None = None
) -> tuple[TLSEngine, TLSEngine]:
    s = TLSEngine(srv.context(), server_side=True)
    c = TLSEngine(client_context(sigalgs=sigalgs), server_side=False, server_hostname=sni,
                  request_ocsp=True)  # fmt: skip
    pump(c, s)
    assert s.established and c.established
    return s, c


def test_engines_talk_in_memory(tmp_path: Path, pki: dict[str, Issued]) -> None:
    s, c = handshake(server_tls(tmp_path, pki))
    c.write(b"EHLO client.example\r\n")
    s.receive(c.outgoing())
    assert s.read() == b"EHLO client.example\r\n"
    s.write(b"250 ok\r\n")
    c.receive(s.outgoing())
    assert c.read() == b"250 ok\r\n"
    info = c.info()
    assert info.version in ("TLSv1.3", "TLSv1.2") and info.cipher
    assert info.peer_certificate is not None
    assert [x.subject for x in info.peer_chain][-1] == pki["ca"].cert.subject
    c.close()
    s.receive(c.outgoing())
    assert s.read() == b"" and s.closed, "close_notify seen"


def test_byte_at_a_time(tmp_path: Path, pki: dict[str, Issued]) -> None:
    s = TLSEngine(server_tls(tmp_path, pki).context(), server_side=True)
    c = TLSEngine(client_context(), server_side=False)
    for _ in range(50):
        for src, dst in ((c, s), (s, c)):
            for byte in src.outgoing():
                dst.receive(bytes([byte]))
                if not dst.established:
                    dst.handshake()
        if not c.established:
            c.handshake()
        if s.established and c.established:
            break
    assert s.established and c.established


def test_certificate_chosen_by_the_client_signature_algorithms(
    tmp_path: Path, pki: dict[str, Issued]
) -> None:
    srv = server_tls(tmp_path, pki)
    _, c = handshake(srv, sigalgs="ECDSA+SHA256")
    assert c.info().peer_certificate == pki["ec"].cert
    _, c = handshake(srv, sigalgs="RSA-PSS+SHA256:RSA+SHA256")
    assert c.info().peer_certificate == pki["rsa"].cert


def test_sni_picks_files(tmp_path: Path, pki: dict[str, Issued]) -> None:
    srv = server_tls(tmp_path, pki)
    s, c = handshake(srv, sni="other.example.org")
    assert c.info().peer_certificate == pki["sni"].cert
    assert s.info().sni == "other.example.org"
    _, c = handshake(srv, sni="unknown.example", sigalgs="RSA+SHA256")
    assert c.info().peer_certificate == pki["rsa"].cert, "no files for that name: the default"


def test_garbage_handshake_raises(tmp_path: Path, pki: dict[str, Issued]) -> None:
    s = TLSEngine(server_tls(tmp_path, pki).context(), server_side=True)
    s.receive(b"EHLO this is not TLS\r\n" * 10)
    with pytest.raises(TLSError):
        s.handshake()


def test_bad_configuration_fails_at_start(tmp_path: Path, pki: dict[str, Issued]) -> None:
    cert, _ = write_pair(tmp_path, "rsa", pki["rsa"], pki["ca"])
    _, other_key = write_pair(tmp_path, "ec", pki["ec"], pki["ca"])
    with pytest.raises(TLSConfigError, match="is not the key of"):
        ServerTLS([CertificatePair(str(cert), str(other_key))])
    with pytest.raises(TLSConfigError, match="cannot load"):
        ServerTLS([CertificatePair(str(tmp_path / "missing.crt"), str(other_key))])


def test_self_signed_default(tmp_path: Path) -> None:
    pairs = make_self_signed(tmp_path / "tls", "mx.test")
    srv = ServerTLS(pairs)
    _, c = handshake(srv)
    peer = c.info().peer_certificate
    assert peer is not None and "mx.test" in peer.subject.rfc4514_string()
    assert make_self_signed(tmp_path / "tls", "mx.test") == pairs, "made once"
    assert (tmp_path / "tls" / "selfsigned-rsa.key").stat().st_mode & 0o077 == 0


def test_ocsp_stapled_only_when_it_verifies(tmp_path: Path, pki: dict[str, Issued]) -> None:
    srv = server_tls(tmp_path, pki, ocsp=True)
    rsa_file = tmp_path / "rsa.ocsp"
    ca = pki["ca"]

    def stapled(sigalgs: str = "RSA+SHA256") -> bool:
        s, _ = handshake(srv, sigalgs=sigalgs)
        assert s.info().ocsp_requested
        return s.info().ocsp_stapled

    assert not stapled(), "no file yet"
    rsa_file.write_bytes(response(pki["rsa"].cert, ca.cert, ca))
    assert stapled(), "a good proof is stapled"
    assert not stapled("ECDSA+SHA256"), "the ECDSA certificate has no proof"
    rsa_file.write_bytes(response(pki["rsa"].cert, ca.cert, ca, status="revoked"))
    assert not stapled(), "a replaced file is read on the next connection"
    rsa_file.write_bytes(response(pki["ec"].cert, ca.cert, ca))
    assert not stapled(), "a proof for another certificate"
    rsa_file.write_bytes(b"garbage")
    assert not stapled()
    (tmp_path / "ec.ocsp").write_bytes(response(pki["ec"].cert, ca.cert, ca))
    assert stapled("ECDSA+SHA256")
