"""``smtpedge ocsp serve`` and ``smtpedge ocsp fetch``, with OpenSSL's own
OCSP client and responder as the peers on the other side."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp as x509_ocsp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pki import Issued, issue, make_ca
from serverutil import free_port, peer, wait_for
from smtpedge.tls import ocsp
from smtpedge.tls.ocsp_responder import Responder, parse_index


def index_line(status: str, cert: Any, revoked: str = "") -> str:
    return f"{status}\t351231000000Z\t{revoked}\t{cert.serial_number:X}\tunknown\t/CN=x\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("ocsp-pki")
    ca = make_ca()
    other = make_ca("other CA")
    url_port = free_port()
    good = issue(ca, "good.example", aia_url=f"http://127.0.0.1:{url_port}")
    revoked = issue(ca, "revoked.example", aia_url=f"http://127.0.0.1:{url_port}")
    never = issue(ca, "never-issued.example")
    stranger = issue(other, "stranger.example")
    delegate = issue(ca, "ocsp.example", ocsp_signing=True)
    index = d / "index.txt"
    index.write_text(index_line("V", good.cert)
                     + index_line("R", revoked.cert, "240101000000Z,keyCompromise"))  # fmt: skip
    (d / "index.txt.attr").write_text("unique_subject = no\n")
    files = {}
    named = {"ca": ca, "good": good, "revoked": revoked, "never": never,
             "stranger": stranger, "delegate": delegate, "other": other}  # fmt: skip
    for name, item in named.items():
        (d / f"{name}.pem").write_bytes(item.pem())
        (d / f"{name}.key").write_bytes(item.key_pem())
        files[name] = d / f"{name}.pem"
    (d / "good-chain.pem").write_bytes(good.pem() + ca.pem())
    return {"dir": d, "ca": ca, "good": good, "revoked": revoked, "never": never,
            "stranger": stranger, "delegate": delegate, "other": other, "index": index,
            "files": files, "url_port": url_port}  # fmt: skip


def test_parse_index() -> None:
    text = ("V\t351231000000Z\t\t0A\tunknown\t/CN=a\n"
            "R\t351231000000Z\t240102030405Z,superseded\t0B\tunknown\t/CN=b\n"
            "junk line\nE\t200101000000Z\t\tzz\tunknown\t/CN=c\n")  # fmt: skip
    idx = parse_index(text)
    assert idx[10].status == "V" and idx[11].status == "R"
    assert idx[11].revoked_at == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert idx[11].reason is not None and idx[11].reason.name == "superseded"
    assert len(idx) == 2, "unparsable lines are skipped"


@pytest.mark.parametrize("signer", ["ca", "delegate"])
def test_responder_answers(pki: dict[str, Any], signer: str) -> None:
    ca: Issued = pki["ca"]
    s: Issued = pki[signer]
    r = Responder(ca.cert, s.cert, s.key, pki["index"])
    for name, want in (("good", "good"), ("revoked", "revoked"), ("never", "unknown")):
        der, _ = r.answer(ocsp.build_request(pki[name].cert, ca.cert))
        result = ocsp.verify(der, pki[name].cert, ca.cert)
        assert result.status == want, result.reason
        assert result.delegated == (signer == "delegate")
    der, nxt = r.answer(ocsp.build_request(pki["stranger"].cert, pki["other"].cert))
    assert nxt is None
    assert x509_ocsp.load_der_ocsp_response(der).response_status.name == "UNAUTHORIZED"
    for junk in (b"", b"\x30", b"\x30\x03\x02\x01\x05", os.urandom(300)):
        der, _ = r.answer(junk)
        assert x509_ocsp.load_der_ocsp_response(der).response_status.name == "MALFORMED_REQUEST"


class ResponderProcess:
    """``smtpedge ocsp serve`` in a child process, its log in a file."""

    def __init__(self, pki: dict[str, Any], *, ignore_sigint: bool = False) -> None:
        self.port = free_port()
        d = pki["dir"]
        self.log_path: Path = d / f"responder-{self.port}.log"
        self.err = open(self.log_path, "wb")

        def background_job() -> None:  # what a shell does to a job started with &
            signal.signal(signal.SIGINT, signal.SIG_IGN)

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smtpedge", "ocsp", "serve", "--ca", str(d / "ca.pem"),
             "--key", str(d / "ca.key"), "--index", str(pki["index"]), "--listen",
             f"127.0.0.1:{self.port}", "--validity", "4s"],
            stderr=self.err, preexec_fn=background_job if ignore_sigint else None,
        )  # fmt: skip
        assert wait_for(lambda: "listening on" in self.log or self.proc.poll() is not None)
        assert self.proc.poll() is None, self.log

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()
        return int(self.proc.returncode)


@pytest.fixture
def responder(pki: dict[str, Any]) -> Any:
    r = ResponderProcess(pki)
    yield r.port, r.proc
    assert r.stop() == 0, "stops cleanly on SIGTERM"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_responder_stops_on_signals_as_a_background_job(pki: dict[str, Any], sig: int) -> None:
    r = ResponderProcess(pki, ignore_sigint=True)
    assert r.stop(sig) == 0
    assert "OCSP responder stopping" in r.log


def _raw_post(port: int, pieces: list[bytes], *, pause: float = 0.3) -> tuple[int, bytes]:
    """Send a request in separate TCP segments; return the status and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i, piece in enumerate(pieces):
            if i:
                time.sleep(pause)  # let each piece go out as a segment of its own
            sock.sendall(piece)
        if pieces and pieces[-1] == b"":
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
                if len(body) >= length:
                    return int(head.split()[1]), body[:length]
    raise AssertionError(f"no whole response: {data!r}")


def _post_head(length: int) -> bytes:
    return (f"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/ocsp-request\r\n"
            f"Content-Length: {length}\r\nConnection: close\r\n\r\n").encode()  # fmt: skip


def test_responder_reads_a_body_in_several_segments(pki: dict[str, Any], responder: Any) -> None:
    port, _ = responder
    req = ocsp.build_request(pki["good"].cert, pki["ca"].cert)
    status, body = _raw_post(port, [_post_head(len(req)) + req[:10], req[10:40], req[40:]])
    assert status == 200
    resp = x509_ocsp.load_der_ocsp_response(body)
    assert resp.response_status == x509_ocsp.OCSPResponseStatus.SUCCESSFUL
    assert resp.certificate_status == x509_ocsp.OCSPCertStatus.GOOD


def test_responder_short_and_stalled_bodies(pki: dict[str, Any], tmp_path: Path) -> None:
    from smtpedge.tls.ocsp_responder import make_server

    req = ocsp.build_request(pki["good"].cert, pki["ca"].cert)
    r = Responder(pki["ca"].cert, pki["ca"].cert, pki["ca"].key, pki["index"])

    async def run() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        from aiohttp import web

        runner = web.ServerRunner(make_server(r, read_timeout=1.0))
        await runner.setup()
        port = free_port()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        try:
            short = asyncio.to_thread(_raw_post, port, [_post_head(len(req)) + req[:20], b""])
            stalled = asyncio.to_thread(_raw_post, port, [_post_head(len(req)) + req[:20]])
            return await asyncio.gather(short, stalled)
        finally:
            await runner.cleanup()

    (short_status, _), (stalled_status, _) = asyncio.run(run())
    assert short_status == 400, "shorter than its Content-Length"
    assert stalled_status == 408, "stalled past the time limit"


def _negative_serial_request(good_req: bytes, serial: int) -> bytes:
    raw = serial.to_bytes((serial.bit_length() + 8) // 8, "big")
    encoded = b"\x02" + bytes([len(raw)]) + raw
    assert good_req.count(encoded) == 1
    return good_req.replace(encoded, b"\x02" + bytes([len(raw)]) + b"\x80" + raw[1:])


def test_negative_serial_is_malformed_not_500(pki: dict[str, Any], responder: Any) -> None:
    port, _ = responder
    good_req = ocsp.build_request(pki["good"].cert, pki["ca"].cert)
    bad = _negative_serial_request(good_req, pki["good"].cert.serial_number)
    assert x509_ocsp.load_der_ocsp_request(bad).serial_number < 0
    status, body = _raw_post(port, [_post_head(len(bad)) + bad])
    assert status == 200
    resp = x509_ocsp.load_der_ocsp_response(body)
    assert resp.response_status == x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    log = (pki["dir"] / f"responder-{port}.log").read_text()
    assert wait_for(lambda: "negative serial number" in
                    (pki["dir"] / f"responder-{port}.log").read_text())  # fmt: skip
    assert "Traceback" not in log


@pytest.fixture(scope="module")
def mutation_responder(pki: dict[str, Any]) -> Any:
    r = ResponderProcess(pki)
    yield r
    r.stop()


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_requests_get_an_ocsp_answer_or_4xx(
    pki: dict[str, Any], mutation_responder: ResponderProcess, data: Any
) -> None:
    """Flip, cut, insert and overwrite bytes of valid requests: every answer
    is a well-formed OCSP response (or a 4xx), never a 500, and the log gets
    at most one short line for it."""
    good_req = ocsp.build_request(pki["good"].cert, pki["ca"].cert)
    req = bytearray(good_req)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "set", "cut", "insert"]))
        i = data.draw(st.integers(0, len(req) - 1)) if req else 0
        if op == "flip" and req:
            req[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set" and req:
            req[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del req[i : i + data.draw(st.integers(1, 8))]
        else:
            req[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    status, body = _raw_post(mutation_responder.port, [_post_head(len(req)) + bytes(req)])
    assert status == 200 or 400 <= status < 500, status
    if status == 200:
        resp = x509_ocsp.load_der_ocsp_response(body)
        assert resp.public_bytes(serialization.Encoding.DER) == body


def test_mutations_left_the_responder_well(
    pki: dict[str, Any], mutation_responder: ResponderProcess
) -> None:
    r = mutation_responder
    assert r.proc.poll() is None
    out = openssl_query(pki, r.port, "good")
    assert "Response verify OK" in out and ": good" in out
    log = r.log
    assert "Traceback" not in log and "Error handling request" not in log
    assert max(len(line) for line in log.splitlines()) < 300, "short log lines"
    assert r.stop() == 0


def openssl_query(pki: dict[str, Any], port: int, name: str) -> str:
    d = pki["dir"]
    done = subprocess.run(
        [peer("openssl"), "ocsp", "-issuer", str(d / "ca.pem"), "-cert", str(d / f"{name}.pem"),
         "-url", f"http://127.0.0.1:{port}", "-CAfile", str(d / "ca.pem"), "-timeout", "10"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return done.stdout + done.stderr


def test_openssl_client_queries_smtpedge_responder(pki: dict[str, Any], responder: Any) -> None:
    port, _ = responder
    out = openssl_query(pki, port, "good")
    assert "Response verify OK" in out and ": good" in out
    out = openssl_query(pki, port, "revoked")
    assert ": revoked" in out and "Reason: keyCompromise" in out


def test_responder_survives_thousands_of_bad_requests(pki: dict[str, Any], responder: Any) -> None:
    port, proc = responder
    good_req = ocsp.build_request(pki["good"].cert, pki["ca"].cert)
    base = f"http://127.0.0.1:{port}/"
    bad: list[tuple[str, bytes]] = []
    for i in range(1, len(good_req)):
        bad.append(("POST", good_req[:i]))  # every truncation
    for i in range(1500):
        bad.append(("POST", os.urandom(i % 200)))
        bad.append(("GET", os.urandom(1 + i % 60)))
    bad.append(("POST", b"x" * 100_000))  # too big

    async def flood() -> dict[int, int]:
        statuses: dict[int, int] = {}
        async with aiohttp.ClientSession() as s:
            sem = asyncio.Semaphore(50)

            async def one(method: str, body: bytes) -> None:
                async with sem:
                    if method == "POST":
                        cm = s.post(base, data=body)
                    else:
                        cm = s.get(base + base64.urlsafe_b64encode(body).decode())
                    async with cm as r:
                        await r.read()
                        statuses[r.status] = statuses.get(r.status, 0) + 1

            await asyncio.gather(*(one(m, b) for m, b in bad))
        return statuses

    t0 = time.monotonic()
    statuses = asyncio.run(flood())
    assert sum(statuses.values()) == len(bad) > 3000
    assert set(statuses) <= {200, 413}, statuses
    assert proc.poll() is None, "still running"
    out = openssl_query(pki, port, "good")
    assert "Response verify OK" in out and ": good" in out, "and still right"
    print(f"\n{len(bad)} bad requests in {time.monotonic() - t0:.1f}s: {statuses}")


def test_fetch_from_openssl_responder(pki: dict[str, Any], tmp_path: Path) -> None:
    """OpenSSL's responder listens on every address, so it runs in a private
    network namespace (tests/ns_fetch.py) with the fetches it answers."""
    peer("openssl")
    out = tmp_path / "good.ocsp"
    script = Path(__file__).parent / "ns_fetch.py"
    done = subprocess.run(
        ["unshare", "--net", sys.executable, str(script), str(pki["dir"]),
         str(pki["url_port"]), str(out)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout)
    assert r["aia"]["rc"] == 0, r["aia"]["stderr"]  # the URL came from the certificate's AIA
    kept = bytes.fromhex(r["aia"]["file"])
    result = ocsp.verify(kept, pki["good"].cert, pki["ca"].cert)
    assert result.ok and result.status == "good"
    # A revoked certificate's answer verifies as a response but is not good: refused.
    assert r["revoked"]["rc"] == 1 and "revoked" in r["revoked"]["stderr"]
    assert r["wrong_issuer"]["rc"] == 1
    assert r["down"]["rc"] == 1 and "cannot reach the responder" in r["down"]["stderr"]
    for case in ("revoked", "wrong_issuer", "down"):
        assert bytes.fromhex(r[case]["file"]) == kept, f"{case}: the old proof stays"


def test_fetch_watch_refreshes(pki: dict[str, Any], responder: Any, tmp_path: Path) -> None:
    port, _ = responder  # answers with 4 s of validity
    d = pki["dir"]
    out = tmp_path / "watched.ocsp"
    proc = subprocess.Popen(
        [sys.executable, "-m", "smtpedge", "ocsp", "fetch", "--cert",
         str(d / "good-chain.pem"), "--out", str(out), "--url", f"http://127.0.0.1:{port}",
         "--watch", "--min-interval", "1"],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        seen: set[Any] = set()
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and len(seen) < 3:
            if out.exists():
                r = ocsp.verify(out.read_bytes(), pki["good"].cert, pki["ca"].cert)
                assert r.ok, r.reason
                seen.add(r.this_update)
            time.sleep(0.2)
        assert len(seen) >= 3, "refreshed halfway through each 4 s window"
    finally:
        proc.terminate()
        proc.wait(10)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_responder_der_is_cacheable(pki: dict[str, Any], responder: Any) -> None:
    port, _ = responder
    req = ocsp.build_request(pki["good"].cert, pki["ca"].cert)

    async def get() -> tuple[int, dict[str, str], bytes]:
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{port}/" + base64.b64encode(req).decode()
            async with s.get(url) as r:
                return r.status, dict(r.headers), await r.read()

    status, headers, body = asyncio.run(get())
    headers = {k.lower(): v for k, v in headers.items()}
    assert status == 200 and headers["content-type"] == "application/ocsp-response"
    assert "max-age=" in headers["cache-control"] and headers["etag"].startswith('"')
    resp = x509_ocsp.load_der_ocsp_response(body)
    assert resp.public_bytes(serialization.Encoding.DER) == body
