"""STARTTLS in the server (RFC 3207), with OCSP stapling, over loopback:
Python's own client, openssl s_client and swaks."""

from __future__ import annotations

import logging
import smtplib
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pki import Issued, issue, make_ca, response, write_pair
from serverutil import Client, RunningServer, peer, swaks, wait_for
from smtpedge import proxy
from smtpedge.queue import Queue


@pytest.fixture(scope="module")
def pki() -> dict[str, Issued]:
    ca = make_ca()
    return {
        "ca": ca,
        "rsa": issue(ca, "mx.test", dns=["mx.test"]),
        "ec": issue(ca, "mx.test", kind="ec", dns=["mx.test"]),
        "delegate_old": issue(ca, "ocsp-old", ocsp_signing=True, not_after=time_in(days=1)),
        "delegate_expired": issue(
            ca,
            "ocsp-expired",
            ocsp_signing=True,
            not_before=time_in(days=-30),
            not_after=time_in(days=-2),
        ),
    }


def time_in(days: int) -> Any:
    import datetime as dt

    return dt.datetime.now(dt.UTC) + dt.timedelta(days=days)


@pytest.fixture
def tls_files(tmp_path: Path, pki: dict[str, Issued]) -> dict[str, Any]:
    rsa_c, rsa_k = write_pair(tmp_path, "rsa", pki["rsa"], pki["ca"])
    ec_c, ec_k = write_pair(tmp_path, "ec", pki["ec"], pki["ca"])
    return {
        "tls_certificate": [str(rsa_c), str(ec_c)],
        "tls_privatekey": [str(rsa_k), str(ec_k)],
        "tls_ocsp_file": [str(tmp_path / "rsa.ocsp"), str(tmp_path / "ec.ocsp")],
    }


def client_ssl() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_smtplib_starttls_delivers_and_received_records_tls(tmp_path: Path) -> None:
    with RunningServer(tmp_path / "spool") as srv:  # the self-signed default
        with smtplib.SMTP("127.0.0.1", srv.port) as c:
            c.ehlo("tls.example")
            assert c.has_extn("starttls")
            c.starttls(context=client_ssl())
            c.ehlo("tls.example")
            assert not c.has_extn("starttls"), "not offered twice"
            c.sendmail("a@example.org", ["b@example.net"], b"Subject: tls\r\n\r\nx\r\n")
        q = srv.queue()
        [msg] = list(q.messages())
        content = q.content(msg.id) or b""
        assert b"with ESMTPS" in content and b"(using TLSv1.3 with cipher" in content
        assert msg.client["protocol"] == "ESMTPS"
        assert (tmp_path / "spool" / "tls" / "selfsigned-rsa.pem").exists()


def test_proxied_address_survives_starttls(tmp_path: Path) -> None:
    seen: list[Any] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> None:
            seen.append((session.peer, session.proxy_local_address, session.tls,
                         session.tls_in_ocsp))  # fmt: skip

    with RunningServer(tmp_path / "spool", Handler(), hosts_proxy=["127.0.0.1"],
                       local_domains="c.example") as srv:  # fmt: skip
        c = Client(srv.port)
        c.send(proxy.build_header(2, "PROXY", ("203.0.113.50", 6000), ("127.0.0.1", 25)))
        c.reply()
        c.cmd("EHLO x")
        assert c.cmd("STARTTLS").startswith("220")
        tls = client_ssl().wrap_socket(c.sock)
        c.sock = tls
        assert "250-PIPELINING" in c.cmd("EHLO x")
        assert c.cmd("MAIL FROM:<a@b.example>").startswith("250"), "state reset, EHLO again"
        c.cmd("RCPT TO:<r@c.example>")
        c.cmd("DATA")
        c.send(b"x\r\n.\r\n")
        assert c.reply().startswith("250")
        [(peer_addr, proxy_addr, info, ocsp_state)] = seen
        assert ocsp_state == "notreq"
        assert peer_addr == ("203.0.113.50", 6000) and proxy_addr == "127.0.0.1"
        assert info is not None and info.version.startswith("TLSv1")
        content = Queue(tmp_path / "spool").content(Queue(tmp_path / "spool").ids()[0]) or b""
        assert b"[203.0.113.50]:6000 via proxy [127.0.0.1]" in content


def test_mail_before_starttls_is_refused_for_required_hosts(tmp_path: Path) -> None:
    with RunningServer(tmp_path / "spool", tls_required_hosts=["127.0.0.1"]) as srv:
        c = Client(srv.port)
        c.reply()
        c.cmd("EHLO x")
        assert c.cmd("MAIL FROM:<a@b.example>").startswith("530 5.7.0 Must issue a STARTTLS")


def test_garbage_handshake_and_timeout_close_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="smtpedge")
    with RunningServer(tmp_path / "spool", tls_handshake_timeout="1s") as srv:
        bad = Client(srv.port)
        bad.reply()
        bad.cmd("EHLO x")
        assert bad.cmd("STARTTLS").startswith("220")
        bad.send(b"this is not a TLS client hello\r\n" * 4)
        assert closed_soon(bad), "closed (after an alert, perhaps)"
        slow = Client(srv.port)
        slow.reply()
        slow.cmd("EHLO x")
        slow.cmd("STARTTLS")
        assert wait_for(lambda: "TLS handshake timeout for [127.0.0.1]" in caplog.text)
        ok = Client(srv.port)
        assert ok.reply().startswith("220"), "everyone else is served"
    assert "TLS error with [127.0.0.1]" in caplog.text
    assert "TLS handshake timeout for [127.0.0.1]" in caplog.text


def closed_soon(c: Client, wait: float = 5.0) -> bool:
    """True once the server closes the connection (whatever it sent first)."""
    c.sock.settimeout(wait)
    try:
        while c.sock.recv(4096):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def s_client_status(port: int, *, sigalgs: str = "RSA") -> str:
    exe = peer("openssl")
    args = [exe, "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{port}", "-status",
            "-tls1_2", "-cipher", f"ECDHE-{sigalgs}-AES128-GCM-SHA256"]  # fmt: skip
    done = subprocess.run(args, input=b"QUIT\n", capture_output=True, timeout=30)
    return done.stdout.decode("latin-1")


def test_openssl_s_client_sees_the_staple_only_when_it_is_good(
    tmp_path: Path, pki: dict[str, Issued], tls_files: dict[str, Any]
) -> None:
    ca, leaf = pki["ca"], pki["rsa"]
    rsa_ocsp = Path(tls_files["tls_ocsp_file"][0])
    with RunningServer(tmp_path / "spool", **tls_files) as srv:
        assert "OCSP response: no response sent" in s_client_status(srv.port)
        rsa_ocsp.write_bytes(response(leaf.cert, ca.cert, ca))
        out = s_client_status(srv.port)
        assert "OCSP Response Status: successful" in out and "Cert Status: good" in out
        assert "OCSP response: no response sent" in s_client_status(srv.port, sigalgs="ECDSA")
        cases = {
            "expired": response(leaf.cert, ca.cert, ca,
                                this_update=time_in(-9), next_update=time_in(-2)),
            "revoked": response(leaf.cert, ca.cert, ca, status="revoked"),
            "other certificate": response(pki["ec"].cert, ca.cert, ca),
            "delegate expiring before nextUpdate": response(
                leaf.cert, ca.cert, pki["delegate_old"], include_signer=True),
            "expired delegate": response(leaf.cert, ca.cert, pki["delegate_expired"],
                                         include_signer=True),
            "garbage": b"\x30\x82garbage",
        }  # fmt: skip
        for name, der in cases.items():
            tmp = rsa_ocsp.with_suffix(".new")
            tmp.write_bytes(der)
            tmp.replace(rsa_ocsp)  # atomically, as a refresher would
            out = s_client_status(srv.port)
            assert "OCSP response: no response sent" in out, name
        rsa_ocsp.write_bytes(response(leaf.cert, ca.cert, ca))
        assert "Cert Status: good" in s_client_status(srv.port), "picked up without a restart"


def test_swaks_tls_delivers(tmp_path: Path, tls_files: dict[str, Any]) -> None:
    with RunningServer(tmp_path / "spool", **tls_files) as srv:
        out = swaks(srv.port, "--tls", "--from", "a@example.org", "--to", "b@example.net")
        assert "=== TLS started with cipher" in out
        assert "250 2.0.0 OK id=" in out
        assert len(srv.queue()) == 1


def test_unusable_certificate_stops_serve_with_a_clear_message(tmp_path: Path) -> None:
    from smtpedge.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text(f'tls_certificate = ["{tmp_path}/nope.pem"]\n'
                   f'tls_privatekey = ["{tmp_path}/nope.key"]\n'
                   f'spool_directory = "{tmp_path}/data"\n')  # fmt: skip
    with pytest.raises(SystemExit, match="option tls_certificate / tls_privatekey: cannot load"):
        main(["serve", "--config", str(bad)])
    mismatched = tmp_path / "mismatched.toml"
    mismatched.write_text('tls_certificate = ["a.pem"]\n')
    assert main(["serve", "--config", str(mismatched)]) == 2, "one key per certificate"
