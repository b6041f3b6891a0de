"""Server-side TLS: certificates, SNI and OCSP stapling (Exim's
``tls_certificate``, ``tls_privatekey`` and ``tls_ocsp_file``).

Several certificate/key pairs (say an RSA and an ECDSA one) share one
context; OpenSSL serves the one the client's signature algorithms allow.
``{sni}`` in a path picks files by the name the client asked for; when those
files do not exist the default ones are used. Files are checked for changes on
each connection, so a renewed certificate is picked up without a restart.

OCSP stapling follows Exim's own notes on what stapling should be: the proof is
re-read on every connection that asks for one (so an atomically replaced file
takes effect at once), and is stapled only when ``smtpedge.tls.ocsp.verify``
accepts it for exactly the certificate being served. Otherwise nothing is
stapled, and the reason is logged once per change of the file.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from smtpedge.log import logger
from smtpedge.tls import ocsp

__all__ = ["CertificatePair", "ServerTLS", "TLSConfigError", "make_self_signed"]

_SNI_SAFE = re.compile(r"[^a-z0-9.-]")


class TLSConfigError(ValueError):
    """Certificates or keys that cannot be used."""


@dataclass(frozen=True, slots=True)
class CertificatePair:
    """One certificate file (leaf first, then its chain), its key, and the
    OCSP proof file for it (optional). Paths may hold ``{sni}``."""

    certificate: str
    key: str
    ocsp_file: str = ""


@dataclass(frozen=True, slots=True)
class _Loaded:
    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    ocsp_file: str


def _stamp(paths: Sequence[str]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out.append((0, 0, 0))
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


class _Staple:
    """The last verdict on one OCSP file, kept until the file changes."""

    __slots__ = ("der", "expires", "reason", "stamp")

    def __init__(
        self, stamp: tuple[int, int, int], der: bytes, reason: str, expires: dt.datetime | None
    ) -> None:
        self.stamp, self.der, self.reason, self.expires = stamp, der, reason, expires


class ServerTLS:
    """Builds and caches server contexts; one per SNI name that has files."""

    def __init__(self, pairs: Sequence[CertificatePair], *, min_version: int = SSL.TLS1_2_VERSION):
        if not pairs:
            raise TLSConfigError("no certificate configured")
        self.pairs = tuple(pairs)
        self.min_version = min_version
        self._lock = threading.Lock()
        self._contexts: dict[str | None, tuple[tuple[tuple[int, int, int], ...], SSL.Context,
                                                 tuple[_Loaded, ...]]] = {}  # fmt: skip
        self._staples: dict[str, _Staple] = {}
        self.context()  # fail at start, not at the first client

    # -- contexts --------------------------------------------------------------------

    def _paths(self, sni: str | None) -> list[CertificatePair]:
        out = []
        for p in self.pairs:
            templated = "{sni}" in p.certificate or "{sni}" in p.key
            if sni is None and not templated:
                out.append(p)
            elif sni is not None and templated:
                out.append(CertificatePair(p.certificate.replace("{sni}", sni),
                                           p.key.replace("{sni}", sni),
                                           p.ocsp_file.replace("{sni}", sni)))  # fmt: skip
        return out

    def context(self, sni: str | None = None) -> SSL.Context:
        """The context for this SNI name (None: the default)."""
        pairs = self._paths(sni)
        if sni is not None and not (pairs and all(os.path.exists(p.certificate) for p in pairs)):
            return self.context(None)
        if not pairs:
            raise TLSConfigError("every tls_certificate holds {sni}: there is no default")
        stamp = _stamp([x for p in pairs for x in (p.certificate, p.key)])
        with self._lock:
            cached = self._contexts.get(sni)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        try:
            ctx, loaded = self._build(pairs)
        except TLSConfigError as exc:
            if cached is None:
                raise
            # The files changed into something unusable (a certificate written
            # before its key, say): go on with the pair that worked, say so once.
            logger.error("TLS: %s; still using the certificate loaded before", exc)
            with self._lock:
                self._contexts[sni] = (stamp, cached[1], cached[2])
            return cached[1]
        with self._lock:
            self._contexts[sni] = (stamp, ctx, loaded)
        return ctx

    def _build(self, pairs: list[CertificatePair]) -> tuple[SSL.Context, tuple[_Loaded, ...]]:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(self.min_version)
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
        loaded = []
        for p in pairs:
            try:
                certs = x509.load_pem_x509_certificates(Path(p.certificate).read_bytes())
                key = serialization.load_pem_private_key(Path(p.key).read_bytes(), None)
            except (OSError, ValueError) as exc:
                raise TLSConfigError(f"cannot load {p.certificate} / {p.key}: {exc}") from None
            try:
                ctx.use_certificate(certs[0])
                ctx.use_privatekey(key)  # type: ignore[arg-type]
                for extra in certs[1:]:
                    ctx.add_extra_chain_cert(extra)
                ctx.check_privatekey()
            except SSL.Error:
                raise TLSConfigError(f"{p.key} is not the key of {p.certificate}") from None
            loaded.append(_Loaded(certs[0], tuple(certs[1:]), p.ocsp_file))
        ctx.set_tlsext_servername_callback(self._on_sni)
        ctx.set_ocsp_server_callback(self._on_ocsp)
        return ctx, tuple(loaded)

    def _on_sni(self, conn: SSL.Connection) -> None:
        name = conn.get_servername()
        if not name:
            return
        sni = _SNI_SAFE.sub("", name.decode("ascii", "replace").lower().rstrip("."))
        if not sni or not any("{sni}" in p.certificate for p in self.pairs):
            return
        try:
            ctx = self.context(sni)
        except TLSConfigError as exc:
            logger.error("TLS: certificate for SNI %s unusable: %s", sni, exc)
            return
        conn.set_context(ctx)

    # -- OCSP stapling -----------------------------------------------------------------

    def _on_ocsp(self, conn: SSL.Connection, data: object) -> bytes:
        engine = conn.get_app_data()
        if engine is not None:
            engine.ocsp_requested = True
        served = conn.get_certificate(as_cryptography=True)
        if served is None:
            return b""
        sni_raw = conn.get_servername()
        sni = _SNI_SAFE.sub("", sni_raw.decode("ascii", "replace").lower()) if sni_raw else None
        with self._lock:
            entry = self._contexts.get(sni) or self._contexts.get(None)
        if entry is None:
            return b""
        for item in entry[2]:
            if item.leaf == served:
                der = self.staple_for(item)
                if der and engine is not None:
                    engine.ocsp_stapled = True
                return der
        return b""

    def staple_for(self, item: _Loaded) -> bytes:
        """The verified OCSP proof to staple for this certificate, or b""."""
        path = item.ocsp_file
        if not path:
            return b""
        stamp = _stamp([path])[0]
        cached = self._staples.get(path)
        if cached is not None and cached.stamp == stamp:
            # Verified when read (signer valid until nextUpdate included): only
            # the clock can make it stale until the file changes.
            if cached.der and cached.expires and dt.datetime.now(dt.UTC) > cached.expires:
                cached.der = b""
                logger.info("TLS: OCSP proof %s expired: not stapled", path)
            return cached.der
        der, reason, expires = self._check(path, item)
        self._staples[path] = _Staple(stamp, der, reason, expires)
        if der:
            logger.info("TLS: stapling OCSP proof %s (%s)", path, reason)
        else:
            logger.info("TLS: not stapling %s: %s", path, reason)
        return der

    def _check(self, path: str, item: _Loaded) -> tuple[bytes, str, dt.datetime | None]:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            return b"", f"cannot read it ({exc.strerror})", None
        if not item.chain:
            return b"", "the certificate file has no issuer certificate after the leaf", None
        result = ocsp.verify(raw, item.leaf, item.chain[0])
        if not result.ok:
            return b"", result.reason, None
        resp = ocsp.load_response(raw)
        expires = result.next_update + ocsp.DEFAULT_SKEW if result.next_update else None
        return resp.public_bytes(serialization.Encoding.DER), result.reason, expires


def make_self_signed(directory: Path, hostname: str) -> list[CertificatePair]:
    """Create (once) an ECDSA and an RSA self-signed certificate for
    ``hostname`` in ``directory``, so STARTTLS works out of the box."""
    directory.mkdir(parents=True, exist_ok=True)
    pairs = []
    for kind in ("ecdsa", "rsa"):
        cert_path = directory / f"selfsigned-{kind}.pem"
        key_path = directory / f"selfsigned-{kind}.key"
        if not (cert_path.exists() and key_path.exists()):
            key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
            if kind == "ecdsa":
                key = ec.generate_private_key(ec.SECP256R1())
            else:
                key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            now = dt.datetime.now(dt.UTC)
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])])
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1))
                .not_valid_after(now + dt.timedelta(days=825))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), False)
                .sign(key, hashes.SHA256())
            )
            tmp = key_path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))  # fmt: skip
            os.replace(tmp, key_path)
            cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pairs.append(CertificatePair(str(cert_path), str(key_path)))
    return pairs
