"""A real MTA beside smtpedge: Postfix (Debian's package, a private instance
on loopback) as smtpedge's next hop, as a sender to smtpedge, and as the
author of bounces that ``smtpedge.dsn.parse_report`` reads."""

from __future__ import annotations

import asyncio
import email
import email.policy
from pathlib import Path
from typing import Any

from postfix import Postfix
from serverutil import ServeProcess
from smtpedge.dsn import parse_report
from smtpedge.esmtp import Recipient
from smtpedge.queue import Queue
from smtpedge.sending import OutgoingMessage, SMTPClient
from test_runner import _config, _maildir, submit


def test_postfix_as_next_hop_gets_the_dsn_parameters(tmp_path: Path) -> None:
    with Postfix(qmgr=False) as pf:
        options = _config(tmp_path, pf.port)
        with ServeProcess(tmp_path / "data", **options) as srv:
            submit(srv.port, "sender@mx.test RET=HDRS ENVID=env+2B42",
                   ["u1@next.test NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Orig+2Bone@next.test",
                    "u2@next.test NOTIFY=NEVER"])  # fmt: skip
            srv.wait_log("Completed")
            log = srv.log
        [queue_file] = pf.queued()
        envelope = pf.postcat(queue_file)
    assert "R=hop T=remote_smtp H=127.0.0.1" in log
    # Postfix's records, in order: ENVID decoded, RET=HDRS (ret_flags 2), then
    # per recipient NOTIFY (Postfix's bits: NEVER 1, SUCCESS 2, FAILURE 4) and
    # ORCPT, the one smtpedge added for u2 included.
    records = [line.split(": ", 1)[1] for line in envelope.splitlines()
               if line.startswith(("named_attribute: envelope_id", "named_attribute: ret_flags",
                                   "named_attribute: notify_flags", "named_attribute: dsn_orig",
                                   "recipient:", "sender:"))]  # fmt: skip
    assert records == [
        "envelope_id=env+42", "ret_flags=2", "sender@mx.test",
        "notify_flags=6", "dsn_orig_rcpt=rfc822;Orig+one@next.test", "u1@next.test",
        "notify_flags=1", "dsn_orig_rcpt=rfc822;u2@next.test", "u2@next.test",
    ]  # fmt: skip


def _send(port: int, sender: str, mail: tuple[tuple[str, str | None], ...],
          rcpts: list[Recipient]) -> None:  # fmt: skip
    async def go() -> None:
        async with SMTPClient("127.0.0.1", port, helo_name="client.test") as client:
            result = await client.send(OutgoingMessage(sender, rcpts, b"Subject: via postfix"
                                                       b"\r\n\r\nhello\r\n", mail))  # fmt: skip
            assert len(result.accepted) == len(rcpts), result

    asyncio.run(go())


def test_postfix_sends_to_smtpedge_with_dsn(tmp_path: Path) -> None:
    spool = tmp_path / "data"
    options: dict[str, Any] = {"local_domains": ["mx.test"], "dsn_advertise_hosts": ["*"],
                               "routers": [{"name": "all", "driver": "accept",
                                            "transport": "local_delivery"}]}  # fmt: skip
    with ServeProcess(spool, **options) as srv:
        with Postfix(("127.0.0.1", srv.port)) as pf:
            _send(
                pf.port,
                "a@client.test",
                (("RET", "FULL"), ("ENVID", "pf+2B1")),
                [
                    Recipient(
                        "alice@mx.test",
                        raw_params=(("NOTIFY", "DELAY,FAILURE"), ("ORCPT", "rfc822;al+40mx.test")),
                    )
                ],
            )
            pf.wait_log("status=sent")
            srv.wait_log("<= <a@client.test>")
    [msg] = list(Queue(spool).messages())
    params = dict(msg.raw_mail_params)
    assert params["RET"] == "FULL" and params["ENVID"] == "pf+2B1"
    [r] = msg.recipients
    assert r.params.notify == ("FAILURE", "DELAY") or r.params.notify == ("DELAY", "FAILURE")
    assert (r.params.orcpt_type, r.params.orcpt) == ("rfc822", "al@mx.test")


def test_postfix_bounce_is_parsed(tmp_path: Path) -> None:
    """smtpedge refuses an unknown user at RCPT; Postfix bounces the message
    to its sender, a local user of smtpedge; the bounce is parsed."""
    spool = tmp_path / "data"
    with ServeProcess(spool, **_config(tmp_path)) as srv:
        with Postfix(("127.0.0.1", srv.port)) as pf:
            _send(
                pf.port,
                "sender@mx.test",
                (("ENVID", "bounce+2B1"),),
                [Recipient("nobody@mx.test", raw_params=(("NOTIFY", "FAILURE"),))],
            )
            pf.wait_log("status=bounced")
            srv.wait_log("<= <> H=(postfix.test)")
            srv.wait_log("=> <sender@mx.test>")
    [raw] = _maildir(spool, "sender")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    report = parse_report(raw)
    assert report.reporting_mta == ("dns", "postfix.test")
    assert report.original_envelope_id == "bounce+1"
    [r] = report.recipients
    assert (r.action, r.status) == ("failed", "5.1.1")
    assert r.final_recipient == ("rfc822", "nobody@mx.test")
    assert r.remote_mta == ("dns", "127.0.0.1")
    assert r.diagnostic_code is not None and r.diagnostic_code[0] == "smtp"
    assert "550 5.1.1 Unrouteable address" in r.diagnostic_code[1]
