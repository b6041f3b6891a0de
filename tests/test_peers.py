"""smtpedge serve against real peers on loopback: swaks, haproxy (send-proxy
and send-proxy-v2) and Postfix's smtp-source. scripts/install-peers installs
them; under CI=true a missing peer fails the run instead of skipping."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from serverutil import ServeProcess, free_port, peer, swaks, wait_for, wait_port
from smtpedge.queue import Queue


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "data"


def queued(spool: Path) -> Queue:
    return Queue(spool)


def test_swaks_plain_and_pipelined(spool: Path) -> None:
    with ServeProcess(spool) as srv:
        swaks(srv.port, "--from", "a@example.org", "--to", "b@example.net")
        out = swaks(srv.port, "--pipeline", "--from", "a@example.org",
                    "--to", "c@example.net,d@example.net")  # fmt: skip
        assert "250 2.0.0 OK id=" in out
        # A pipelined group: MAIL, RCPT, RCPT and DATA are written before any reply.
        assert re.search(r" -> MAIL FROM:.*\n -> RCPT TO:.*\n -> RCPT TO:.*\n -> DATA", out)
    q = queued(spool)
    assert len(q) == 2
    rcpts = sorted(r.address for m in q.messages() for r in m.recipients)
    assert rcpts == ["b@example.net", "c@example.net", "d@example.net"]


def test_swaks_bdat_is_not_used_but_chunking_is_offered(spool: Path) -> None:
    with ServeProcess(spool) as srv:
        out = swaks(srv.port, "--quit-after", "EHLO")
        assert "250-CHUNKING" in out and "250-PIPELINING" in out


# swaks 20201014 (Debian 12) has no DSN options and writes MAIL FROM:<$from>
# and RCPT TO:<$to> literally, so parameters ride inside the address argument;
# the closing ">" it appends lands at the end of the last parameter.
def test_swaks_dsn_parameters(spool: Path) -> None:
    with ServeProcess(spool, dsn_advertise_hosts=["127.0.0.1"]) as srv:
        rcpt = "b@example.net> NOTIFY=SUCCESS ORCPT=rfc822;b+2Bx@example.net"
        out = swaks(srv.port, "--from", "a@example.org> RET=HDRS ENVID=Q+2B1", "--to", rcpt)
        assert "250-DSN" in out and "250 2.0.0 OK id=" in out
        bad = swaks(srv.port, "--from", "a@example.org", "--to",
                    "b@example.net> NOTIFY=SOMETIMES ORCPT=rfc822;x", expect=24)  # fmt: skip
        assert "501 5.5.4 Invalid NOTIFY parameter: must be NEVER or a list" in bad
        bad = swaks(srv.port, "--from", "a@example.org", "--to",
                    "b@example.net> NOTIFY=FAILURE NOTIFY=DELAY ORCPT=x", expect=24)  # fmt: skip
        assert "501 5.5.4 Duplicate NOTIFY parameter" in bad
        bad = swaks(srv.port, "--from", "a@example.org> RET=SOME", "--to", "b@example.net",
                    expect=23)  # fmt: skip
        assert "501 5.5.4 Invalid RET parameter" in bad
        bad = swaks(srv.port, "--from", "a@example.org> ENVID=a+2 RET=FULL", "--to",
                    "b@example.net", expect=23)  # fmt: skip
        assert "501 5.5.4 Invalid ENVID parameter: not valid xtext" in bad
    [msg] = list(queued(spool).messages())
    assert msg.mail_params.ret == "HDRS"
    assert msg.mail_params.envid == "Q+1>"
    [recipient] = msg.recipients
    assert recipient.params.notify == ("SUCCESS",)
    assert recipient.params.orcpt == "b+x@example.net>"
    assert recipient.params.orcpt_xtext == "rfc822;b+2Bx@example.net>"


def test_swaks_dsn_parameters_without_the_offer_get_555(spool: Path) -> None:
    with ServeProcess(spool) as srv:
        out = swaks(srv.port, "--from", "a@example.org> RET=HDRS", "--to", "b@example.net",
                    expect=23)  # fmt: skip
        assert "555 5.5.4 RET parameter not supported (DSN not offered)" in out


@pytest.mark.parametrize("version", ["1", "2"])
def test_swaks_proxy_protocol(spool: Path, version: str) -> None:
    with ServeProcess(spool, hosts_proxy=["127.0.0.1"], local_domains=["example.net"]) as srv:
        family = "TCP4" if version == "1" else "AF_INET"
        out = swaks(srv.port, "--from", "a@example.org", "--to", "postmaster@example.net",
                    "--proxy-version", version, "--proxy-family", family,
                    "--proxy-source", "192.0.2.44", "--proxy-source-port", "4444",
                    "--proxy-dest", "198.51.100.1", "--proxy-dest-port", "25")  # fmt: skip
        assert "250 2.0.0 OK id=" in out
        # The log is written off the event loop: wait for the line, not a moment.
        log = srv.wait_log("H=(swaks.example) [192.0.2.44]:4444 PX=[127.0.0.1]:")
    [msg] = list(queued(spool).messages())
    content = queued(spool).content(msg.id) or b""
    assert b"from swaks.example ([192.0.2.44]:4444 via proxy [127.0.0.1])" in content
    assert "H=(swaks.example) [192.0.2.44]:4444 PX=[127.0.0.1]:" in log


def test_swaks_without_proxy_header_is_closed_without_banner(spool: Path) -> None:
    with ServeProcess(spool, hosts_proxy=["127.0.0.1"], proxy_protocol_timeout="1s") as srv:
        out = swaks(srv.port, "--to", "b@example.net", expect=6)  # no banner: swaks times out
        assert "220" not in out
        assert wait_for(
            lambda: (
                "PROXY header refused from proxy [127.0.0.1]" in srv.log
                or ("PROXY header timeout from proxy [127.0.0.1]" in srv.log)
            )
        )


HAPROXY_CFG = """
global
    maxconn 2000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend v1
    bind 127.0.0.1:{v1}
    default_backend smtp_v1
frontend v2
    bind 127.0.0.1:{v2}
    default_backend smtp_v2
backend smtp_v1
    server s1 127.0.0.1:{smtp} send-proxy
backend smtp_v2
    server s1 127.0.0.1:{smtp} send-proxy-v2
"""


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[tuple[int, int, int]]:
    exe = peer("haproxy")
    smtp, v1, v2 = free_port(), free_port(), free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(v1=v1, v2=v2, smtp=smtp))
    proc = subprocess.Popen([exe, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_port(v1)
        wait_port(v2)
        yield smtp, v1, v2
    finally:
        proc.terminate()
        proc.wait(10)


def test_haproxy_send_proxy_v1_and_v2(spool: Path, haproxy: tuple[int, int, int]) -> None:
    smtp, v1, v2 = haproxy
    with ServeProcess(spool, port=smtp, hosts_proxy=["127.0.0.1"]) as srv:
        swaks(v1, "--from", "one@example.org", "--to", "b@example.net",
              "--local-interface", "127.0.0.5")  # fmt: skip
        swaks(v2, "--from", "two@example.org", "--to", "b@example.net",
              "--local-interface", "127.0.0.6")  # fmt: skip
        log = srv.wait_log(" <= <", 2)
    q = queued(spool)
    by_sender = {m.sender: m for m in q.messages()}
    for sender, ip in (("one@example.org", "127.0.0.5"), ("two@example.org", "127.0.0.6")):
        msg = by_sender[sender]
        assert msg.client["address"] == ip
        assert msg.client["proxy"][0] == "127.0.0.1"
        content = q.content(msg.id) or b""
        assert f"from swaks.example ([{ip}]:".encode() in content
        assert re.search(rf"<= <{sender}> H=\(swaks.example\) \[{re.escape(ip)}\]:\d+ PX=", log)


def test_haproxy_health_checks_and_direct_clients(
    spool: Path, haproxy: tuple[int, int, int]
) -> None:
    """A client that bypasses the proxy from a proxy address is refused, while
    a client through haproxy is served."""
    smtp, v1, _ = haproxy
    with ServeProcess(spool, port=smtp, hosts_proxy=["127.0.0.1"],
                      proxy_protocol_timeout="1s") as srv:  # fmt: skip
        swaks(smtp, "--to", "b@example.net", expect=6)
        swaks(v1, "--from", "a@example.org", "--to", "b@example.net",
              "--local-interface", "127.0.0.7")  # fmt: skip
        assert "H=(swaks.example) [127.0.0.7]" in srv.wait_log("H=(swaks.example) [127.0.0.7]")


@pytest.mark.parametrize("reuse", [False, True], ids=["new-connection-each", "reuse"])
def test_smtp_source_thousands_of_messages(spool: Path, reuse: bool) -> None:
    exe = peer("smtp-source")
    count = 2000
    with ServeProcess(spool) as srv:
        args = [exe, "-s", "20", "-m", str(count), "-l", "2048", "-f", "load@example.org",
                "-t", "sink@example.net", "-M", "source.example"]  # fmt: skip
        if reuse:
            args.append("-d")
        done = subprocess.run([*args, f"127.0.0.1:{srv.port}"], capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert srv.stop() == 0
    q = queued(spool)
    assert len(q) == count, "every message smtp-source sent is in the queue"
    ids = q.ids()
    assert len(set(ids)) == count
    sample = q.content(ids[len(ids) // 2]) or b""
    assert b"Received: from source.example ([127.0.0.1]:" in sample
    assert len(sample) > 2048
