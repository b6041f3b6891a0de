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
import signal
import urllib.parse
from dataclasses import dataclass
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import StreamReader, web, web_protocol
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp as x509_ocsp

from smtpedge.log import logger
from smtpedge.tls.ocsp import issuer_key_hash, issuer_name_hash

__all__ = ["IndexEntry", "Responder", "make_server", "parse_index", "serve"]

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
                       "unauthorized": 0, "error": 0}  # fmt: skip
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
        out, next_update, _ = self.answer_why(der, now)
        return out, next_update

    def answer_why(
        self, der: bytes, now: dt.datetime | None = None
    ) -> tuple[bytes, dt.datetime | None, str | None]:
        """``answer()``, plus why the request was refused (None if it was not):
        a short text for the log line."""
        try:
            req = x509_ocsp.load_der_ocsp_request(der)
            alg = req.hash_algorithm
            name_hash, key_hash, serial = req.issuer_name_hash, req.issuer_key_hash, \
                req.serial_number  # fmt: skip
        except Exception as exc:  # any parse failure is the client's
            return self._malformed(f"cannot parse the request ({_short(exc)})")
        if self._hashes.get(alg.name) != (name_hash, key_hash):
            out = self._unsuccessful(x509_ocsp.OCSPResponseStatus.UNAUTHORIZED, "unauthorized")
            return out, None, "unauthorized: not a certificate of this CA"
        if serial < 0:  # DER allows it; no CA issues one and the builder refuses it
            return self._malformed("negative serial number")
        try:
            self._load_index()
        except OSError as exc:
            out = self._unsuccessful(x509_ocsp.OCSPResponseStatus.INTERNAL_ERROR, "error")
            return out, None, f"internalError: cannot read {self.index_path}: {exc.strerror}"
        now = now or dt.datetime.now(dt.UTC).replace(microsecond=0)
        cached = self._cache.get((alg.name, serial))
        if cached is not None and cached[0] > now + self.validity / 2:
            entry = self._index.get(serial)
            self.counts[_status_name(entry)] += 1
            return cached[1], cached[0], None
        entry = self._index.get(serial)
        next_update = now + self.validity
        if entry is None:
            status, rev_time, rev_reason = x509_ocsp.OCSPCertStatus.UNKNOWN, None, None
        elif entry.status == "R":
            status = x509_ocsp.OCSPCertStatus.REVOKED
            rev_time, rev_reason = entry.revoked_at or now, entry.reason
        else:
            status, rev_time, rev_reason = x509_ocsp.OCSPCertStatus.GOOD, None, None
        try:
            builder = x509_ocsp.OCSPResponseBuilder().add_response_by_hash(
                issuer_name_hash=name_hash, issuer_key_hash=key_hash, serial_number=serial,
                algorithm=alg, cert_status=status, this_update=now, next_update=next_update,
                revocation_time=rev_time, revocation_reason=rev_reason,
            )  # fmt: skip
        except (ValueError, TypeError) as exc:  # a request field the builder cannot echo
            return self._malformed(f"cannot answer the request ({_short(exc)})")
        builder = builder.responder_id(x509_ocsp.OCSPResponderEncoding.HASH, self.signer)
        if self.signer != self.issuer:
            builder = builder.certificates([self.signer])
        sig_hash = None if _is_eddsa(self.key) else hashes.SHA256()
        out = builder.sign(self.key, sig_hash).public_bytes(serialization.Encoding.DER)
        self._cache[(alg.name, serial)] = (next_update, out)
        self.counts[_status_name(entry)] += 1
        return out, next_update, None

    def _malformed(self, why: str) -> tuple[bytes, None, str]:
        out = self._unsuccessful(x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST, "malformed")
        return out, None, "malformedRequest: " + why


def _short(exc: BaseException) -> str:
    """An exception as a few words for a log line, never the client's bytes."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:100]


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


def _peer(request: web.BaseRequest) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return f"[{peer[0]}]:{peer[1]}" if peer else "[unknown]"


class _RequestHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler, except that a client which shuts down its
    sending side in the middle of a body still gets an answer (the body ends
    there: 400) instead of a dropped connection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bodies: set[StreamReader] = set()  # request bodies being read
        self.eof_seen = False

    def eof_received(self) -> bool:  # type: ignore[override]  # True keeps it open
        if not self.bodies:
            return False  # nothing is being read: close, as aiohttp does
        self.eof_seen = True
        for body in self.bodies:
            body.feed_eof()
        return True  # keep the sending side open for the reply


class _Refused(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


class _Server(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        loop = asyncio.get_running_loop()
        return _RequestHandler(self, loop=loop, access_log=None)


def make_server(responder: Responder, *, max_request: int = MAX_REQUEST,
                read_timeout: float = 10.0) -> web.Server:  # fmt: skip
    """The responder's HTTP server (aiohttp's low-level server): POST to any
    path, or GET ``/<base64 of the DER request>``."""

    def refuse(request: web.BaseRequest, exc: web.HTTPException, why: str) -> _Refused:
        logger.info("OCSP %s from %s: %d %s", request.method, _peer(request), exc.status, why)
        return _Refused(web.Response(status=exc.status, text=f"{exc.status} {exc.reason}\n",
                                     headers=exc.headers))  # fmt: skip

    def respond(request: web.BaseRequest, der: bytes) -> web.Response:
        out, next_update, why = responder.answer_why(der)
        if why is not None:
            logger.info("OCSP %s from %s: %s", request.method, _peer(request), why)
        return _http_response(out, next_update)

    async def read_body(request: web.BaseRequest) -> bytes:
        """The whole body however many segments it came in: exactly
        Content-Length bytes, or up to the end of a chunked body."""
        length = request.content_length
        if length is not None:
            if length > max_request:
                raise refuse(request, web.HTTPRequestEntityTooLarge(
                    max_size=max_request, actual_size=length), "body too large")  # fmt: skip
            if length == 0:
                return b""
            try:
                return await request.content.readexactly(length)
            except asyncio.IncompleteReadError as exc:
                raise refuse(
                    request,
                    web.HTTPBadRequest(),
                    f"body ended after {len(exc.partial)} of {length} bytes",
                ) from None
        body = b""
        while len(body) <= max_request:
            chunk = await request.content.read(max_request + 1 - len(body))
            if not chunk:
                return body
            body += chunk
        raise refuse(request, web.HTTPRequestEntityTooLarge(
            max_size=max_request, actual_size=len(body)), "body too large")  # fmt: skip

    async def post(request: web.BaseRequest) -> web.Response:
        handler = request.protocol
        assert isinstance(handler, _RequestHandler)
        bodies = handler.bodies
        bodies.add(request.content)
        try:
            body = await asyncio.wait_for(read_body(request), read_timeout)
        except TimeoutError:
            raise refuse(
                request, web.HTTPRequestTimeout(), f"body not complete within {read_timeout:g}s"
            ) from None
        except (ConnectionError, aiohttp.ClientPayloadError, aiohttp.http.HttpProcessingError):
            raise refuse(request, web.HTTPBadRequest(), "unreadable body") from None
        finally:
            bodies.discard(request.content)
        return respond(request, body)

    async def get(request: web.BaseRequest) -> web.Response:
        encoded = request.path[1:]
        if len(encoded) > max_request * 2:
            raise refuse(request, web.HTTPRequestURITooLong(), "request too long")
        try:
            der = base64.b64decode(urllib.parse.unquote(encoded), validate=False)
        except (binascii.Error, ValueError):
            der = b""
        return respond(request, der)

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        response: web.Response
        try:
            if request.method == "POST":
                response = await post(request)
            elif request.method in ("GET", "HEAD"):
                response = await get(request)
            else:
                raise refuse(request, web.HTTPMethodNotAllowed(request.method, ["GET", "POST"]),
                             "method not allowed")  # fmt: skip
        except _Refused as refused:
            response = refused.response
        handler = request.protocol
        if isinstance(handler, _RequestHandler) and handler.eof_seen:
            response.force_close()  # the client has stopped sending: nothing more to read
        return response

    return _Server(handle)


async def serve(responder: Responder, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT (also when started as a background job,
    whose SIGINT the shell ignores), or until cancelled."""
    runner = web.ServerRunner(make_server(responder))
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logger.info("OCSP responder for %s listening on [%s]:%d",
                responder.issuer.subject.rfc4514_string(), host, port)  # fmt: skip
    try:
        await stop.wait()
        logger.info("OCSP responder stopping")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
