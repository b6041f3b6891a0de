"""``smtpedge ocsp serve``: an OCSP responder (RFC 6960 appendix A, RFC 5019)
for a CA the operator runs, that keeps answering whatever clients send.

Certificate status comes from an OpenSSL CA database (``index.txt``, as
``openssl ca`` writes it), re-read when it changes. Requests arrive by POST
(``application/ocsp-request``) or GET (``/<base64 of the DER request>``).
Garbage gets ``malformedRequest``, a request about another CA's certificates
``unauthorized``, a serial the CA never issued ``unknown``. Requests are
bounded in size and time; responses carry RFC 5019 cache headers.

HTTP is aiohttp's; nothing here parses HTTP by hand.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import os
import urllib.parse
from dataclasses import dataclass
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp as x509_ocsp

from smtpedge.log import logger
from smtpedge.ocsp import issuer_key_hash, issuer_name_hash

__all__ = ["IndexEntry", "Responder", "parse_index", "serve"]

MAX_REQUEST = 8 * 1024
_REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keycompromise": x509.ReasonFlags.key_compromise,
    "cacompromise": x509.ReasonFlags.ca_compromise,
    "affiliationchanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationofoperation": x509.ReasonFlags.cessation_of_operation,
    "certificatehold": x509.ReasonFlags.certificate_hold,
    "removefromcrl": x509.ReasonFlags.remove_from_crl,
}


@dataclass(frozen=True, slots=True)
class IndexEntry:
    status: str  # "V", "R" or "E"
    serial: int
    revoked_at: dt.datetime | None
    reason: x509.ReasonFlags | None


def _asn1_time(text: str) -> dt.datetime:
    fmt = "%y%m%d%H%M%SZ" if len(text) == 13 else "%Y%m%d%H%M%SZ"
    return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.UTC)


def parse_index(text: str) -> dict[int, IndexEntry]:
    """OpenSSL's CA database: status, expiry, revocation[,reason], serial (hex),
    file name, subject; tab-separated. Lines that do not parse are skipped."""
    out = {}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) < 4 or fields[0] not in ("V", "R", "E"):
            continue
        try:
            serial = int(fields[3], 16)
            revoked_at = reason = None
            if fields[0] == "R" and fields[2]:
                when, _, why = fields[2].partition(",")
                revoked_at = _asn1_time(when)
                reason = _REASONS.get(why.lower()) if why else None
        except ValueError:
            continue
        out[serial] = IndexEntry(fields[0], serial, revoked_at, reason)
    return out


class Responder:
    """Answers OCSP requests for one issuer, signed by the issuer or by a
    delegated responder certificate."""

    def __init__(
        self,
        issuer: x509.Certificate,
        signer: x509.Certificate,
        key: Any,
        index_path: Path,
        *,
        validity: dt.timedelta = dt.timedelta(hours=1),
    ) -> None:
        self.issuer, self.signer, self.key = issuer, signer, key
        self.index_path = index_path
        self.validity = validity
        self._index: dict[int, IndexEntry] = {}
        self._stamp: tuple[int, int] | None = None
        self._cache: dict[tuple[str, int], tuple[dt.datetime, bytes]] = {}
        self.counts = {"good": 0, "revoked": 0, "unknown": 0, "malformed": 0,
                       "unauthorized": 0}  # fmt: skip
        self._hashes = {
            alg.name: (issuer_name_hash(issuer, alg), issuer_key_hash(issuer, alg))
            for alg in (hashes.SHA1(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512())
        }

    def _load_index(self) -> None:
        st = os.stat(self.index_path)
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._index = parse_index(self.index_path.read_text("utf-8", "replace"))
            self._stamp = stamp
            self._cache.clear()

    def _unsuccessful(self, status: x509_ocsp.OCSPResponseStatus, count: str) -> bytes:
        self.counts[count] += 1
        resp = x509_ocsp.OCSPResponseBuilder.build_unsuccessful(status)
        return resp.public_bytes(serialization.Encoding.DER)

    def answer(
        self, der: bytes, now: dt.datetime | None = None
    ) -> tuple[bytes, dt.datetime | None]:
        """The DER response to a DER request, and its nextUpdate (None for an
        unsuccessful response). Never raises for anything a client sends."""
        try:
            req = x509_ocsp.load_der_ocsp_request(der)
            alg = req.hash_algorithm
            name_hash, key_hash, serial = req.issuer_name_hash, req.issuer_key_hash, \
                req.serial_number  # fmt: skip
        except Exception:  # any parse failure is the client's
            return self._unsuccessful(x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
                                      "malformed"), None  # fmt: skip
        if self._hashes.get(alg.name) != (name_hash, key_hash):
            return self._unsuccessful(x509_ocsp.OCSPResponseStatus.UNAUTHORIZED,
                                      "unauthorized"), None  # fmt: skip
        self._load_index()
        now = now or dt.datetime.now(dt.UTC).replace(microsecond=0)
        cached = self._cache.get((alg.name, serial))
        if cached is not None and cached[0] > now + self.validity / 2:
            entry = self._index.get(serial)
            self.counts[_status_name(entry)] += 1
            return cached[1], cached[0]
        entry = self._index.get(serial)
        next_update = now + self.validity
        if entry is None:
            status, rev_time, rev_reason = x509_ocsp.OCSPCertStatus.UNKNOWN, None, None
        elif entry.status == "R":
            status = x509_ocsp.OCSPCertStatus.REVOKED
            rev_time, rev_reason = entry.revoked_at or now, entry.reason
        else:
            status, rev_time, rev_reason = x509_ocsp.OCSPCertStatus.GOOD, None, None
        builder = x509_ocsp.OCSPResponseBuilder().add_response_by_hash(
            issuer_name_hash=name_hash, issuer_key_hash=key_hash, serial_number=serial,
            algorithm=alg, cert_status=status, this_update=now, next_update=next_update,
            revocation_time=rev_time, revocation_reason=rev_reason,
        )  # fmt: skip
        builder = builder.responder_id(x509_ocsp.OCSPResponderEncoding.HASH, self.signer)
        if self.signer != self.issuer:
            builder = builder.certificates([self.signer])
        sig_hash = None if _is_eddsa(self.key) else hashes.SHA256()
        out = builder.sign(self.key, sig_hash).public_bytes(serialization.Encoding.DER)
        self._cache[(alg.name, serial)] = (next_update, out)
        self.counts[_status_name(entry)] += 1
        return out, next_update


def _status_name(entry: IndexEntry | None) -> str:
    if entry is None:
        return "unknown"
    return "revoked" if entry.status == "R" else "good"


def _is_eddsa(key: Any) -> bool:
    from cryptography.hazmat.primitives.asymmetric import ed448, ed25519

    return isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)


def _http_response(der: bytes, next_update: dt.datetime | None) -> web.Response:
    headers = {"Content-Type": "application/ocsp-response"}
    if next_update is not None:
        now = dt.datetime.now(dt.UTC)
        max_age = max(int((next_update - now).total_seconds()), 0)
        headers.update({
            "Cache-Control": f"max-age={max_age}, public, no-transform, must-revalidate",
            "Expires": format_datetime(next_update, usegmt=True),
            "Last-Modified": format_datetime(now, usegmt=True),
            "ETag": '"' + hashlib.sha1(der).hexdigest() + '"',
        })  # fmt: skip
    else:
        headers["Cache-Control"] = "no-store"
    return web.Response(body=der, headers=headers)


def make_app(responder: Responder, *, max_request: int = MAX_REQUEST,
             read_timeout: float = 10.0) -> web.Application:  # fmt: skip
    async def post(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > max_request:
            raise web.HTTPRequestEntityTooLarge(max_size=max_request,
                                                actual_size=request.content_length)  # fmt: skip
        try:
            body = await asyncio.wait_for(request.content.read(max_request + 1), read_timeout)
        except TimeoutError:
            raise web.HTTPRequestTimeout() from None
        if len(body) > max_request:
            raise web.HTTPRequestEntityTooLarge(max_size=max_request, actual_size=len(body))
        return _http_response(*responder.answer(body))

    async def get(request: web.Request) -> web.Response:
        encoded = request.match_info.get("req", "")
        if len(encoded) > max_request * 2:
            raise web.HTTPRequestURITooLong()
        try:
            der = base64.b64decode(urllib.parse.unquote(encoded), validate=False)
        except (binascii.Error, ValueError):
            der = b""
        return _http_response(*responder.answer(der))

    app = web.Application(client_max_size=max_request)
    app.router.add_post("/{tail:.*}", post)
    app.router.add_get("/{req:.*}", get)
    return app


async def serve(responder: Responder, host: str, port: int) -> None:
    """Serve until cancelled."""
    runner = web.AppRunner(make_app(responder), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    logger.info("OCSP responder for %s listening on [%s]:%d",
                responder.issuer.subject.rfc4514_string(), host, port)  # fmt: skip
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
