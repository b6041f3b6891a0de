"""Running smtpedge in production: JSON log lines for log shippers, the
Prometheus metrics endpoint, graceful drain and reload."""

from __future__ import annotations

import json
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

import pki
from serverutil import Client, ScriptedServer, ServeProcess, free_port, metric, scrape, wait_for
from smtpedge import proxy
from smtpedge.queue import Queue


def test_json_log_lines_carry_the_text_lines_fields(tmp_path: Path) -> None:
    with ServeProcess(tmp_path / "data", log_format="json") as srv:
        c = Client(srv.port)
        c.reply()
        c.cmd("EHLO json.example")
        assert c.send_message("a@example.org", ["r@example.net"], b"x").startswith("250")
        c.cmd("QUIT")
        srv.wait_log("closed by QUIT")
    lines = [json.loads(line) for line in srv.log.splitlines()]
    assert all({"time", "pid", "level", "msg"} <= set(o) for o in lines)
    [arrival] = [o for o in lines if o.get("flag") == "<="]
    assert arrival["address"] == "a@example.org"
    assert arrival["H"].startswith("(json.example) [127.0.0.1]:")
    assert arrival["P"] == "esmtp" and int(arrival["S"]) > 0
    assert len(arrival["id"]) == 16 and arrival["msg"].startswith(arrival["id"] + " <= <a@")
    assert arrival["time"].endswith("Z") and arrival["level"] == "info"
    assert any(o["msg"].startswith("smtpedge ready") for o in lines)


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_match_what_was_sent(tmp_path: Path, workers: int) -> None:
    address = f"127.0.0.1:{free_port()}"
    srv = ServeProcess(tmp_path / "data", workers=workers, metrics_address=address,
                       message_size_limit="10K")  # fmt: skip
    sizes = []
    for i in range(6):
        c = Client(srv.port)
        c.reply()
        c.cmd("EHLO metrics.example")
        body = b"Subject: %d\r\n\r\n" % i + b"x" * (100 * i)
        assert c.send_message(f"s{i}@example.org", ["r@example.net"], body).startswith("250")
        sizes.append(len(body))
        c.cmd("QUIT")
        c.close()
    big = Client(srv.port)
    big.reply()
    big.cmd("EHLO metrics.example")
    assert big.send_message("s@example.org", ["r@example.net"], b"y" * 20_000).startswith("552")
    big.close()
    assert (
        "smtpedge_messages" in urllib.request.urlopen(f"http://{address}/metrics").read().decode()
    )
    m = scrape(address)
    assert m['smtpedge_messages_total{result="accepted"}'] == 6
    assert m['smtpedge_messages_total{result="5xx"}'] == 1
    assert m['smtpedge_connections_total{outcome="accepted"}'] == 7
    assert m["smtpedge_accept_seconds_count"] == 6
    assert m["smtpedge_received_bytes_total"] >= sum(sizes)
    assert m["smtpedge_group_commit_messages_sum"] == 6
    assert 1 <= m["smtpedge_group_commits_total"] <= 6
    assert m["smtpedge_queue_messages"] == 6, "queue_only: all six wait in the queue"
    assert m["smtpedge_queue_oldest_seconds"] > 0
    assert srv.stop() == 0


def test_metrics_are_off_by_default(tmp_path: Path) -> None:
    with ServeProcess(tmp_path / "data") as srv:
        assert "metrics on" not in srv.log


def test_a_metrics_port_in_use_stops_start_up_naming_the_option(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(RuntimeError, match="option metrics_address: cannot listen"):
            ServeProcess(tmp_path / "data", metrics_address=f"127.0.0.1:{port}")


# -- drain ----------------------------------------------------------------------------


def _health_check(port: int) -> str:
    """What HAProxy's smtpchk with check-send-proxy sees: a PROXY v2 LOCAL
    header, then the banner."""
    c = Client(port)
    c.send(proxy.build_header(2, "LOCAL"))
    try:
        return c.reply()
    finally:
        c.close()


def test_drain_finishes_transactions_and_refuses_new_sessions(tmp_path: Path) -> None:
    srv = ServeProcess(tmp_path / "data", drain_timeout="20s")
    busy = Client(srv.port)
    busy.reply()
    busy.cmd("EHLO busy.example")
    assert busy.cmd("MAIL FROM:<a@example.org>").startswith("250")
    assert busy.cmd("RCPT TO:<r@example.net>").startswith("250")
    srv.proc.send_signal(signal.SIGTERM)
    srv.wait_log("draining: refusing new sessions")
    late = Client(srv.port)
    assert late.reply().startswith("421 4.3.2"), "new sessions are refused with a reply"
    assert busy.cmd("DATA").startswith("354")
    busy.send(b"Subject: in flight\r\n\r\nbody\r\n.\r\n")
    assert busy.reply().startswith("250"), "the transaction under way finishes"
    assert busy.reply().startswith("421 4.3.2"), "then the session is closed with 421"
    srv.proc.wait(30)
    assert srv.proc.returncode == 0
    assert len(Queue(tmp_path / "data")) == 1


def test_drain_sends_421_after_its_deadline(tmp_path: Path) -> None:
    srv = ServeProcess(tmp_path / "data", drain_timeout="1s")
    slow = Client(srv.port, timeout=30)
    slow.reply()
    slow.cmd("EHLO slow.example")
    slow.cmd("MAIL FROM:<a@example.org>")
    srv.proc.send_signal(signal.SIGTERM)
    assert slow.reply().startswith("421 4.3.2")
    srv.proc.wait(30)
    assert srv.proc.returncode == 0


def test_drain_fails_health_checks_before_refusing_sessions(tmp_path: Path) -> None:
    srv = ServeProcess(tmp_path / "data", hosts_proxy="127.0.0.1", drain_health_checks=2,
                       relay_from_hosts="192.0.2.0/24")  # fmt: skip
    assert _health_check(srv.port).startswith("220"), "healthy"
    srv.proc.send_signal(signal.SIGTERM)
    srv.wait_log("draining: failing health checks")
    assert _health_check(srv.port).startswith("421 4.3.2")
    # The proxy has not marked the node down yet: its clients are still served.
    c = Client(srv.port)
    c.send(proxy.build_header(2, "PROXY", ("192.0.2.7", 4000), ("192.0.2.1", 25)))
    assert c.reply().startswith("220")
    c.cmd("EHLO client.example")
    assert c.send_message("a@example.org", ["r@example.net"], b"x").startswith("250")
    assert _health_check(srv.port).startswith("421 4.3.2")
    srv.wait_log("draining: refusing new sessions")
    assert c.reply().startswith("421 4.3.2"), "the idle session is closed with 421"
    srv.proc.wait(30)
    assert srv.proc.returncode == 0
    assert "health check from [127.0.0.1]" in srv.log


# -- reload and smtpedge ctl -----------------------------------------------------------


def _ctl(srv: ServeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "smtpedge", "ctl", *args, "--config", str(srv.config_path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


class _Load(threading.Thread):
    """Sessions one after another, each with a message, until stopped."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stopped = threading.Event()
        self.sent = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=20) as s:
                    s.sendmail("load@example.org", ["r@example.net"], b"Subject: load\r\n\r\nx")
                self.sent += 1
            except Exception as exc:
                self.errors.append(repr(exc))

    def stop(self) -> None:
        self.stopped.set()
        self.join(30)


@pytest.mark.parametrize("workers", [1, 2])
def test_reload_under_load_drops_nothing_and_refuses_a_broken_file(
    tmp_path: Path, workers: int
) -> None:
    srv = ServeProcess(tmp_path / "data", workers=workers, smtp_banner="old banner")
    idle = Client(srv.port)
    assert "old banner" in idle.reply()
    idle.cmd("EHLO idle.example")
    load = _Load(srv.port)
    load.start()
    assert wait_for(lambda: load.sent >= 3)
    text = srv.config_path.read_text()
    srv.config_path.write_text(text.replace("old banner", "new banner"))
    assert _ctl(srv, "reload").returncode == 0
    srv.wait_log("configuration reloaded", count=workers)
    assert "new banner" in Client(srv.port).reply()
    # A broken file is refused, naming the option; the running one stays.
    srv.config_path.write_text(text.replace("old banner", "newer") + 'smtp_accept_max = "lots"\n')
    refused = _ctl(srv, "reload")
    assert refused.returncode == 2, "smtpedge ctl checks the file before it signals"
    assert "option smtp_accept_max: must be an integer" in refused.stderr
    srv.proc.send_signal(signal.SIGHUP)  # the server checks it too
    log = srv.wait_log("reload refused")
    assert "option smtp_accept_max: must be an integer" in log
    assert log.count("reload refused") == 1, "checked once, by the supervisor"
    assert "new banner" in Client(srv.port).reply()
    # An option that needs a restart is kept, and the log says so.
    srv.config_path.write_text(text.replace(f"[{srv.port}]", "[1]"))
    assert _ctl(srv, "reload").returncode == 0
    assert "daemon_smtp_ports changed; a restart is needed" in srv.wait_log("restart is needed")
    sent = load.sent
    assert wait_for(lambda: load.sent >= sent + 3)
    load.stop()
    assert load.errors == [], "no session failed across the reloads"
    assert idle.send_message("a@example.org", ["r@example.net"], b"x").startswith("250")
    assert srv.stop() == 0
    assert len(Queue(tmp_path / "data")) == load.sent + 1


def test_ctl_status_and_drain(tmp_path: Path) -> None:
    srv = ServeProcess(tmp_path / "data")
    status = _ctl(srv, "status")
    assert status.returncode == 0 and f"PID {srv.proc.pid}" in status.stdout
    done = _ctl(srv, "drain", "--wait")
    assert done.returncode == 0 and "has exited" in done.stdout, done.stdout + done.stderr
    assert srv.proc.wait(10) == 0
    gone = _ctl(srv, "status")
    assert gone.returncode == 3 and "no server runs" in gone.stdout


def _certificate_cn(port: int) -> str:
    c = Client(port)
    c.reply()
    c.cmd("EHLO tls.example")
    assert c.cmd("STARTTLS").startswith("220")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = ctx.wrap_socket(c.sock, server_hostname="mx.test")
    der = tls.getpeercert(binary_form=True)
    # A reply over TLS: the server has finished its side of the handshake too.
    tls.sendall(b"EHLO tls.example\r\n")
    assert tls.recv(4096).startswith(b"250")
    tls.close()
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_reload_rereads_certificates_and_routers(tmp_path: Path) -> None:
    ca = pki.make_ca()
    cert, key = pki.write_pair(tmp_path, "mx", pki.issue(ca, "first.test"), ca)
    users = {"name": "users", "driver": "accept", "local_parts": ["alice"],
             "transport": "local_delivery"}  # fmt: skip
    address = f"127.0.0.1:{free_port()}"
    srv = ServeProcess(tmp_path / "data", tls_certificate=[str(cert)], tls_privatekey=[str(key)],
                       routers=[users], metrics_address=address)  # fmt: skip
    c = Client(srv.port)
    c.reply()
    c.cmd("EHLO r.example")
    c.cmd("MAIL FROM:<a@example.org>")
    assert c.cmd("RCPT TO:<bob@mx.test>").startswith("550 5.1.1")
    assert _certificate_cn(srv.port) == "first.test"
    # The same files with new contents, and a router that knows bob.
    pki.write_pair(tmp_path, "mx", pki.issue(ca, "second.test"), ca)
    text = srv.config_path.read_text()
    srv.config_path.write_text(text.replace('["alice"]', '["alice", "bob"]'))
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait_log("configuration reloaded")
    assert _certificate_cn(srv.port) == "second.test"
    assert c.cmd("RCPT TO:<bob@mx.test>").startswith("250"), "the session under way too"
    assert c.cmd("DATA").startswith("354")
    c.send(b"Subject: reloaded\r\n\r\nx\r\n.\r\n")
    assert c.reply().startswith("250")
    # A key that does not fit its certificate is refused; the old pair stays.
    other = pki.issue(ca, "third.test")
    cert.write_bytes(other.pem() + ca.pem())
    srv.proc.send_signal(signal.SIGHUP)
    assert "reload refused: option tls_certificate / tls_privatekey" in srv.wait_log("refused")
    assert _certificate_cn(srv.port) == "second.test"
    m = scrape(address)
    assert metric(m, "smtpedge_tls_handshakes_total", 'outcome="ok"') == 3
    assert metric(m, "smtpedge_ocsp_staples_total", 'outcome="none"') == 3
    assert srv.stop() == 0


def test_reload_applies_new_limits_and_counts_proxy_refusals(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    srv = ServeProcess(tmp_path / "data", smtp_accept_max_per_host=1, metrics_address=address,
                       hosts_proxy="127.0.0.61")  # fmt: skip
    first = Client(srv.port, source="127.0.0.60")
    assert first.reply().startswith("220")
    assert Client(srv.port, source="127.0.0.60").reply().startswith("421")
    text = srv.config_path.read_text()
    srv.config_path.write_text(
        text.replace("smtp_accept_max_per_host = 1", "smtp_accept_max_per_host = 3")
    )
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait_log("configuration reloaded")
    assert Client(srv.port, source="127.0.0.60").reply().startswith("220"), "the new limit"
    bad = Client(srv.port, source="127.0.0.61")
    bad.send(b"PROXY TCP4 1.2.3.4\r\n")
    assert bad.closed_without_data()
    srv.wait_log("PROXY header refused")
    m = scrape(address)
    assert metric(m, "smtpedge_connections_total", 'outcome="refused_per_host"') == 1
    assert metric(m, "smtpedge_proxy_rejected_total") == 1
    assert srv.stop() == 0


def test_drain_lets_the_delivery_under_way_finish(tmp_path: Path) -> None:
    with ScriptedServer(data_delay=1.5) as hop:
        hop_router = {"name": "hop", "driver": "manualroute", "route_list": [
            f"* [127.0.0.1]:{hop.port}"], "transport": "remote_smtp"}  # fmt: skip
        srv = ServeProcess(tmp_path / "data", queue_only=False, routers=[hop_router])
        c = Client(srv.port)
        c.reply()
        c.cmd("EHLO d.example")
        assert c.send_message("a@example.org", ["r@example.net"], b"x").startswith("250")
        c.cmd("QUIT")
        assert wait_for(lambda: "DATA" in hop.commands), "the delivery is under way"
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(30) == 0
        assert len(hop.messages) == 1, "it finished before the server exited"
    assert "=> <r@example.net> R=hop T=remote_smtp" in srv.log
    assert len(Queue(tmp_path / "data")) == 0
