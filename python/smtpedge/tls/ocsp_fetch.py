"""``smtpedge ocsp fetch``: get an OCSP proof for a certificate, verify it,
and write it atomically where ``tls_ocsp_file`` points; ``--watch`` keeps it
fresh.

The responder URL comes from the certificate's Authority Information Access
(or ``--url``). Small requests go by GET (RFC 5019), larger ones by POST;
there is a timeout and a cap on the response size. The file is replaced
(temporary file, fsync, rename, fsync of the directory) only by a proof that
``smtpedge.tls.ocsp.verify`` accepts; on any failure the old file stays and the
reason is printed.

Refresh schedule under ``--watch``: halfway through the proof's validity,
but never later than the signer certificate's expiry allows; retries back off
from one minute to an hour; a proof is never replaced by an older one; a
warning is logged once the current proof has less than a quarter of its life
left.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import AuthorityInformationAccessOID

from smtpedge.log import logger
from smtpedge.tls import ocsp

__all__ = ["FetchError", "fetch_once", "next_refresh", "responder_url", "watch", "write_atomic"]

MAX_RESPONSE = 64 * 1024


class FetchError(Exception):
    """The proof could not be fetched or did not verify; the old file stays."""


def responder_url(cert: x509.Certificate) -> str:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        raise FetchError("the certificate names no OCSP responder (no AIA); use --url") from None
    for desc in aia:
        if desc.access_method == AuthorityInformationAccessOID.OCSP:
            return str(desc.access_location.value)
    raise FetchError("the certificate's AIA has no OCSP responder; use --url")


def load_chain(cert_path: Path, issuer_path: Path | None) -> tuple[x509.Certificate,
                                                                   x509.Certificate]:  # fmt: skip
    certs = x509.load_pem_x509_certificates(cert_path.read_bytes())
    if issuer_path is not None:
        return certs[0], x509.load_pem_x509_certificates(issuer_path.read_bytes())[0]
    if len(certs) < 2:
        raise FetchError(f"{cert_path} holds no issuer certificate; give --issuer")
    return certs[0], certs[1]


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Fetched:
    der: bytes
    result: ocsp.OCSPResult


async def fetch_once(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    url: str | None = None,
    timeout: float = 10.0,
) -> Fetched:
    """Ask the responder and verify the answer; FetchError says why not."""
    url = url or responder_url(cert)
    request = ocsp.build_request(cert, issuer)
    encoded = base64.b64encode(request).decode()
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    try:
        async with aiohttp.ClientSession(timeout=client_timeout) as session:
            if len(encoded) <= 255:  # RFC 5019 section 5: GET for small requests
                target = url.rstrip("/") + "/" + urllib.parse.quote(encoded, safe="")
                resp_cm = session.get(target)
            else:
                kind = {"Content-Type": "application/ocsp-request"}
                resp_cm = session.post(url, data=request, headers=kind)
            async with resp_cm as resp:
                if resp.status != 200:
                    raise FetchError(f"the responder {url} answered HTTP {resp.status}")
                body = await resp.content.read(MAX_RESPONSE + 1)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        why = str(exc) or type(exc).__name__
        raise FetchError(f"cannot reach the responder {url}: {why}") from None
    if len(body) > MAX_RESPONSE:
        raise FetchError(f"the responder's answer is larger than {MAX_RESPONSE} bytes")
    result = ocsp.verify(body, cert, issuer)
    if not result.ok:
        raise FetchError(f"the responder's answer does not verify: {result.reason}")
    der = ocsp.load_response(body).public_bytes(serialization.Encoding.DER)
    return Fetched(der, result)


def current(path: Path, cert: x509.Certificate, issuer: x509.Certificate) -> ocsp.OCSPResult | None:
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    return ocsp.verify(raw, cert, issuer)


def next_refresh(
    result: ocsp.OCSPResult, now: dt.datetime, min_interval: float = 60.0
) -> dt.datetime:
    """Halfway through the validity window, clamped to the signer's expiry,
    and not sooner than ``min_interval`` seconds from now."""
    assert result.this_update is not None and result.next_update is not None
    due = result.this_update + (result.next_update - result.this_update) / 2
    if result.signer is not None:
        signer_end = result.signer.not_valid_after_utc - dt.timedelta(hours=1)
        due = min(due, signer_end)
    return max(due, now + dt.timedelta(seconds=min_interval))


async def fetch_to_file(
    cert: x509.Certificate, issuer: x509.Certificate, out: Path, *, url: str | None,
    timeout: float,
) -> ocsp.OCSPResult:  # fmt: skip
    """Fetch, verify, and replace ``out`` unless what it holds is newer."""
    fetched = await fetch_once(cert, issuer, url=url, timeout=timeout)
    old = current(out, cert, issuer)
    new = fetched.result
    if old is not None and old.ok and old.this_update and new.this_update and \
            new.this_update < old.this_update:  # fmt: skip
        raise FetchError("the responder sent an older proof than the one in place; kept it")
    write_atomic(out, fetched.der)
    return new


async def watch(
    cert: x509.Certificate, issuer: x509.Certificate, out: Path, *, url: str | None,
    timeout: float, min_backoff: float = 60.0, max_backoff: float = 3600.0,
    min_interval: float = 60.0,
) -> None:  # fmt: skip
    """Keep ``out`` fresh forever (see the module docstring)."""
    backoff = min_backoff
    while True:
        now = dt.datetime.now(dt.UTC)
        try:
            result = await fetch_to_file(cert, issuer, out, url=url, timeout=timeout)
        except FetchError as exc:
            logger.error("ocsp fetch: %s; retrying in %.0fs", exc, backoff)
            held = current(out, cert, issuer)
            if held is None or not held.ok:
                logger.error("ocsp fetch: %s holds no valid proof: nothing is stapled", out)
            elif held.next_update and held.this_update and \
                    held.next_update - now < (held.next_update - held.this_update) / 4:  # fmt: skip
                logger.warning("ocsp fetch: the proof in %s expires at %s", out,
                               held.next_update.isoformat())  # fmt: skip
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)
            continue
        backoff = min_backoff
        due = next_refresh(result, now, min_interval)
        logger.info("ocsp fetch: wrote %s (%s); next refresh at %s", out, result.reason,
                    due.isoformat())  # fmt: skip
        await asyncio.sleep(max((due - dt.datetime.now(dt.UTC)).total_seconds(), 1.0))
