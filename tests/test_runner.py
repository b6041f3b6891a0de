"""The sending half end to end: ``smtpedge serve`` takes mail, its queue
runner routes and delivers it (maildirs, the next hop by SMTP) and sends the
delivery reports each outcome calls for, which are parsed back."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from serverutil import Client, ScriptedServer, ServeProcess, swaks, wait_for
from smtpedge.dsn import DeliveryReport, parse_report
from smtpedge.esmtp import Recipient
from smtpedge.queue import Queue
from smtpedge.sending import OutgoingMessage, SMTPClient

HOP = "next.test"


def _config(tmp_path: Path, hop_port: int | None = None, **extra: Any) -> dict[str, Any]:
    """smtpedge as mx.test: alice, bob, carol and sender are local users, the
    aliases file has a list; every other domain goes to the next hop."""
    aliases = tmp_path / "aliases"
    aliases.write_text("team: alice, bob, carol\nfwd: dave\nbroken: :fail: no such list\n"
                       "gone: :defer: moving house\nnull: :blackhole:\n")  # fmt: skip
    routers: list[dict[str, Any]] = []
    if hop_port is not None:
        routers.append(
            {
                "name": "hop",
                "driver": "manualroute",
                "domains": ["! +local_domains"],
                "route_list": [f"* [127.0.0.1]:{hop_port}"],
                "transport": "remote_smtp",
            }
        )
    routers += [
        {"name": "aliases", "driver": "redirect", "file": str(aliases)},
        {"name": "users", "driver": "accept", "transport": "local_delivery",
         "local_parts": ["alice", "bob", "carol", "dave", "sender"]},
    ]  # fmt: skip
    options: dict[str, Any] = {
        "queue_only": False,
        "local_domains": ["mx.test"],
        "dsn_advertise_hosts": ["*"],
        "routers": routers,
        "retry_rules": ["* * F,4s,1s"],
        "delay_warning": ["1s", "1h"],  # one delay report, then one an hour
        "queue_poll_interval": "0.2s",
    }
    options.update(extra)
    return options


def _maildir(spool: Path, user: str) -> list[bytes]:
    new = spool / "mail" / user / "new"
    if not new.is_dir():
        return []
    return [(new / n).read_bytes() for n in sorted(os.listdir(new))]


def _reports(spool: Path, user: str = "sender", count: int = 1) -> list[DeliveryReport]:
    assert wait_for(lambda: len(_maildir(spool, user)) >= count), f"{count} report(s) for {user}"
    out = []
    for raw in _maildir(spool, user):
        # Parsed by smtpedge and, as a cross-check, by Python's email package.
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert msg.get_content_type() == "multipart/report"
        assert msg.get_param("report-type") == "delivery-status"
        assert msg["Auto-Submitted"] == "auto-replied"
        assert msg["From"] == "Mail Delivery System <Mailer-Daemon@mx.test>"
        parts = [p.get_content_type() for p in msg.iter_parts()]
        assert parts[:2] == ["text/plain", "message/delivery-status"]
        assert raw.startswith(b"Return-Path: <>\n"), "reports come from the null sender"
        out.append(parse_report(raw))
    return out


def _params(text: str) -> tuple[tuple[str, str | None], ...]:
    return tuple((k, v or None) for k, _, v in (p.partition("=") for p in text.split()))


def submit(port: int, sender: str, recipients: list[str], content: bytes = b"Subject: test\r\n"
           b"\r\nbody\r\n") -> None:  # fmt: skip
    """Send with the client library, DSN parameters after each address
    (``"a@b NOTIFY=SUCCESS"``): swaks 20201014 cannot send them cleanly."""
    mail_addr, _, mail_rest = sender.partition(" ")
    rcpts = []
    for r in recipients:
        addr, _, rest = r.partition(" ")
        rcpts.append(Recipient(addr, raw_params=_params(rest)))

    async def go() -> None:
        async with SMTPClient("127.0.0.1", port, helo_name="submit.test") as client:
            result = await client.send(OutgoingMessage(mail_addr, rcpts, content,
                                                       _params(mail_rest)))  # fmt: skip
            assert len(result.accepted) == len(rcpts), result

    asyncio.run(go())


def _done(srv: ServeProcess, count: int = 1) -> None:
    srv.wait_log("Completed", count)


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "data"


def test_local_delivery_with_a_success_report(tmp_path: Path, spool: Path) -> None:
    with ServeProcess(spool, **_config(tmp_path)) as srv:
        submit(srv.port, "sender@mx.test RET=HDRS ENVID=env+2B1",
               ["alice@mx.test NOTIFY=SUCCESS ORCPT=rfc822;Alice+40mx.test"],
               b"Subject: hello alice\r\n\r\nthe body\r\n")  # fmt: skip
        _done(srv, 2)  # the message and its report
        log = srv.log
    [delivered] = _maildir(spool, "alice")
    assert delivered.startswith(b"Return-Path: <sender@mx.test>\nDelivered-To: alice@mx.test\n")
    assert b"Subject: hello alice" in delivered
    [report] = _reports(spool)
    assert report.reporting_mta == ("dns", "mx.test")
    assert report.original_envelope_id == "env+1"
    [r] = report.recipients
    assert (r.action, r.status) == ("delivered", "2.0.0")
    assert r.final_recipient == ("rfc822", "alice@mx.test")
    assert r.original_recipient == ("rfc822", "Alice@mx.test")
    assert r.remote_mta is None and r.diagnostic_code is None
    assert r.last_attempt_date is not None and report.arrival_date is not None
    assert report.returned is not None and b"Subject: hello alice" in report.returned
    assert b"the body" not in report.returned, "RET=HDRS: headers only"
    assert "=> <alice@mx.test> R=users T=local_delivery" in log
    assert len(Queue(spool)) == 0


def test_unknown_local_users_are_refused_at_rcpt(tmp_path: Path, spool: Path) -> None:
    with ServeProcess(spool, **_config(tmp_path)) as srv:
        c = Client(srv.port)
        c.reply()
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<x@example.org>")
        assert c.cmd("RCPT TO:<nobody@mx.test>") == "550 5.1.1 Unrouteable address"
        assert c.cmd("RCPT TO:<broken@mx.test>") == "550 5.1.1 no such list"
        assert c.cmd("RCPT TO:<gone@mx.test>") == "451 4.4.3 moving house"
        assert c.cmd("RCPT TO:<team@mx.test>").startswith("250")
        assert c.cmd("RCPT TO:<ALICE@MX.TEST>").startswith("250"), "case does not matter"
        c.cmd("QUIT")
        srv.wait_log("rejected RCPT <nobody@mx.test>: unknown recipient")


def test_an_alias_with_several_targets_gives_an_expanded_report(tmp_path: Path,
                                                                spool: Path) -> None:  # fmt: skip
    with ServeProcess(spool, **_config(tmp_path)) as srv:
        submit(
            srv.port,
            "sender@mx.test",
            ["team@mx.test NOTIFY=SUCCESS,FAILURE", "fwd@mx.test NOTIFY=SUCCESS"],
        )
        _done(srv, 3)  # the message, the expanded and the delivered report
        log = srv.log
    for user in ("alice", "bob", "carol", "dave"):
        assert len(_maildir(spool, user)) == 1, user
    reports = {r.recipients[0].action: r for r in _reports(spool, count=2)}
    assert sorted(reports) == ["delivered", "expanded"]
    [expanded] = reports["expanded"].recipients
    assert expanded.final_recipient == ("rfc822", "team@mx.test")
    assert expanded.status == "2.0.0"
    # One address forwarded (fwd -> dave) keeps its NOTIFY=SUCCESS: delivered.
    [forwarded] = reports["delivered"].recipients
    assert forwarded.final_recipient == ("rfc822", "dave@mx.test")
    assert forwarded.original_recipient == ("rfc822", "fwd@mx.test")
    assert "<team@mx.test> R=aliases expanded to <alice@mx.test> <bob@mx.test>" in log


def test_dsn_parameters_go_to_a_dsn_aware_next_hop_byte_exact(tmp_path: Path,
                                                              spool: Path) -> None:  # fmt: skip
    hop_spool = tmp_path / "hop"
    with ServeProcess(hop_spool, local_domains=[HOP], dsn_advertise_hosts=["*"],
                      routers=[{"name": "all", "driver": "accept",
                                "transport": "local_delivery"}]) as hop:  # fmt: skip
        with ServeProcess(spool, **_config(tmp_path, hop.port)) as srv:
            submit(
                srv.port,
                "sender@mx.test RET=FULL ENVID=abc+2Bdef",
                [f"u1@{HOP} NOTIFY=SUCCESS,DELAY ORCPT=rfc822;first+2Bx@{HOP}", f"u2@{HOP}"],
            )
            _done(srv)
            log = srv.log
        [msg] = list(Queue(hop_spool).messages())
    assert msg.sender == "sender@mx.test"
    dsn = [(k, v) for k, v in msg.raw_mail_params if k in ("RET", "ENVID")]
    assert dsn == [("RET", "FULL"), ("ENVID", "abc+2Bdef")]
    r1, r2 = msg.recipients
    assert r1.raw_params == (("NOTIFY", "SUCCESS,DELAY"), ("ORCPT", f"rfc822;first+2Bx@{HOP}"))
    assert r2.raw_params == (("ORCPT", f"rfc822;u2@{HOP}"),), "an ORCPT is added when none came"
    assert "R=hop T=remote_smtp H=127.0.0.1" in log
    assert "tls_out_ocsp=" in log
    assert not _maildir(spool, "sender"), "a DSN-aware hop takes the notifications on"


def test_a_next_hop_without_dsn_gets_no_parameters_and_a_relayed_report(
    tmp_path: Path, spool: Path
) -> None:
    with ScriptedServer() as hop:
        with ServeProcess(spool, **_config(tmp_path, hop.port)) as srv:
            submit(srv.port, "sender@mx.test ENVID=e1", [f"u1@{HOP} NOTIFY=SUCCESS"])
            _done(srv, 2)
    assert [c for c in hop.commands if c.startswith(("MAIL", "RCPT"))] == [
        "MAIL FROM:<sender@mx.test> BODY=8BITMIME",
        f"RCPT TO:<u1@{HOP}>",
    ] or [c for c in hop.commands if c.startswith(("MAIL", "RCPT"))] == [
        "MAIL FROM:<sender@mx.test>",
        f"RCPT TO:<u1@{HOP}>",
    ]
    [report] = _reports(spool)
    [r] = report.recipients
    assert (r.action, r.status) == ("relayed", "2.0.0")
    assert r.remote_mta == ("dns", "127.0.0.1")
    assert report.original_envelope_id == "e1"


def test_a_multi_line_550_gives_a_failure_report(tmp_path: Path, spool: Path) -> None:
    refusal = "550-5.1.1 <u1@next.test>: no such user here\r\n550 5.1.1 try another address"
    with ScriptedServer({"RCPT": refusal}) as hop:
        with ServeProcess(spool, **_config(tmp_path, hop.port)) as srv:
            submit(
                srv.port,
                "sender@mx.test RET=FULL",
                [f"u1@{HOP}"],
                b"Subject: to fail\r\n\r\nreturned whole\r\n",
            )
            _done(srv, 2)
            log = srv.log
    [report] = _reports(spool)
    [r] = report.recipients
    assert (r.action, r.status) == ("failed", "5.1.1")
    assert r.remote_mta == ("dns", "127.0.0.1")
    assert r.diagnostic_code == (
        "smtp",
        "550-5.1.1 <u1@next.test>: no such user here 550 5.1.1 try another address",
    )
    assert report.returned is not None and b"returned whole" in report.returned, "RET=FULL"
    assert "no such user here" in report.human
    assert f"** <u1@{HOP}> R=hop T=remote_smtp" in log


def test_a_deferring_host_gives_a_delay_then_a_failure_report(tmp_path: Path,
                                                             spool: Path) -> None:  # fmt: skip
    with ScriptedServer({"RCPT": "451 4.2.1 mailbox busy, try later"}) as hop:
        with ServeProcess(spool, **_config(tmp_path, hop.port)) as srv:
            swaks(srv.port, "--from", "sender@mx.test", "--to", f"u1@{HOP}")
            srv.wait_log("failed report")
            _reports(spool, count=2)
            log = srv.log
    reports = {r.recipients[0].action: r for r in _reports(spool, count=2)}
    assert sorted(reports) == ["delayed", "failed"]
    [delayed] = reports["delayed"].recipients
    assert delayed.status == "4.2.1"
    assert delayed.will_retry_until is not None
    assert delayed.diagnostic_code == ("smtp", "451 4.2.1 mailbox busy, try later")
    [failed] = reports["failed"].recipients
    assert failed.status == "5.2.1"
    assert failed.diagnostic_code == ("smtp", "451 4.2.1 mailbox busy, try later")
    attempts = log.count(f"== <u1@{HOP}> R=hop T=remote_smtp defer (rcpt_4xx)")
    assert attempts >= 2, "retried on the fast schedule"
    assert sum(c.startswith("RCPT") for c in hop.commands) == attempts + 1
    assert (
        f"** <u1@{HOP}> R=hop T=remote_smtp H=127.0.0.1: retry time exceeded: "
        "451 4.2.1 mailbox busy, try later"
    ) in log


def test_a_report_that_cannot_be_delivered_is_dropped_never_bounced(
    tmp_path: Path, spool: Path
) -> None:
    with ScriptedServer({"RCPT": "550 5.1.1 unknown"}) as hop:
        with ServeProcess(spool, **_config(tmp_path, hop.port)) as srv:
            # The failure report goes to far@next.test, which refuses it too.
            swaks(srv.port, "--from", f"far@{HOP}", "--to", f"u1@{HOP}")
            _done(srv, 2)
            srv.wait_log("no failed report: the sender is <>")
    assert len(Queue(spool)) == 0


def test_null_sender_mail_gets_no_report(tmp_path: Path, spool: Path) -> None:
    with ScriptedServer({"RCPT": "550 5.1.1 unknown"}) as hop:
        with ServeProcess(spool, **_config(tmp_path, hop.port)) as srv:
            c = Client(srv.port)
            c.reply()
            c.cmd("EHLO c.test")
            assert c.send_message("", [f"u1@{HOP}"], b"Subject: a bounce").startswith("250")
            c.cmd("QUIT")
            _done(srv)
            srv.wait_log(f"no failed report: the sender is <> (<u1@{HOP}>)")
    assert len(Queue(spool)) == 0


def _queue(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smtpedge", "queue", *args, "--config",
                           str(config)], capture_output=True, text=True, timeout=60)  # fmt: skip


def test_queue_list_flush_and_retry_beside_a_running_server(tmp_path: Path, spool: Path) -> None:
    replies: dict[str, Any] = {"RCPT": "451 4.3.2 not now"}
    with ScriptedServer(replies) as hop:
        options = _config(tmp_path, hop.port, retry_rules=["* * F,1h,10m"])
        with ServeProcess(spool, **options) as srv:
            submit(srv.port, "sender@mx.test", [f"u1@{HOP}", "alice@mx.test"])
            srv.wait_log(
                f"== <u1@{HOP}> R=hop T=remote_smtp defer (rcpt_4xx) H=127.0.0.1: 451 4.3.2 not now"
            )
            srv.wait_log("=> <alice@mx.test>")
            listing = _queue(srv.config_path, "list")
            assert listing.returncode == 0, listing.stderr
            lines = listing.stdout.splitlines()
            assert lines[0].split()[-1] == "<sender@mx.test>"
            assert lines[1].startswith(f"  deferred  <u1@{HOP}> attempts=1 next=")
            assert lines[1].endswith("last error: not now")
            assert lines[2] == "  delivered <alice@mx.test>"
            assert lines[-1] == "1 message(s) queued"
            [qid] = Queue(spool).ids()
            show = _queue(srv.config_path, "show", qid)
            assert f"  state: deferred  <u1@{HOP}> attempts=1" in show.stdout
            # The next attempt is an hour away; retry makes it now.
            replies["RCPT"] = None
            assert _queue(srv.config_path, "retry", qid).stdout == f"{qid} due now\n"
            srv.wait_log(f"=> <u1@{HOP}> R=hop T=remote_smtp")
            srv.wait_log(f"{qid} Completed")
            assert _queue(srv.config_path, "list").stdout == "queue is empty\n"
            # flush does the same for every message.
            replies["RCPT"] = "451 4.3.2 not now"
            submit(srv.port, "sender@mx.test", [f"u2@{HOP}"])
            srv.wait_log(f"== <u2@{HOP}> R=hop")
            replies["RCPT"] = None
            assert _queue(srv.config_path, "flush").stdout == "1 message(s) due now\n"
            srv.wait_log(f"=> <u2@{HOP}> R=hop")
            run = _queue(srv.config_path, "run")
            assert run.returncode == 1
            assert "its queue runner delivers" in run.stderr
    assert len(Queue(spool)) == 0


def test_queue_run_delivers_once_with_the_server_stopped(tmp_path: Path, spool: Path) -> None:
    options = _config(tmp_path, queue_only=True)
    with ServeProcess(spool, **options) as srv:
        submit(srv.port, "sender@mx.test", ["alice@mx.test", "team@mx.test"])
        config = srv.config_path
    assert not _maildir(spool, "alice"), "queue_only: nothing is delivered by the server"
    run = _queue(config, "run")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "1 message(s) tried: 3 recipient(s) delivered, 0 deferred, 0 failed\n"
    # alice is named twice (directly and through team): she gets one copy.
    assert [len(_maildir(spool, u)) for u in ("alice", "bob", "carol")] == [1, 1, 1]
    assert len(Queue(spool)) == 0
    again = _queue(config, "run")
    assert again.stdout.startswith("0 message(s) tried")
