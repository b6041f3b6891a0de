"""Delivery status reports: when one is due, what it holds (read back with
``smtpedge.dsn.parse_report`` and with Python's ``email`` package), and
reading other MTAs' reports in their formats."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from typing import Any

import pytest

from smtpedge.dsn import (
    DSNParseError,
    OriginalMessage,
    Outcome,
    build_report,
    parse_report,
    report_wanted,
    status_of,
)

ARRIVAL = dt.datetime(2026, 12, 1, 10, 0, 0, tzinfo=dt.UTC)
LAST = dt.datetime(2026, 12, 2, 11, 30, 0, tzinfo=dt.UTC)
CONTENT = b"Received: from x\r\nSubject: Quarterly figures\r\nFrom: a@example.org\r\n\r\nbody\r\n"


@pytest.mark.parametrize(("notify", "action", "sender", "wanted"), [
    (None, "failed", "a@b", True),
    (None, "delayed", "a@b", True),
    (None, "delivered", "a@b", False),
    (("SUCCESS",), "delivered", "a@b", True),
    (("SUCCESS",), "relayed", "a@b", True),
    (("SUCCESS",), "expanded", "a@b", True),
    (("SUCCESS",), "failed", "a@b", False),
    (("FAILURE",), "failed", "a@b", True),
    (("FAILURE",), "delayed", "a@b", False),
    (("DELAY", "FAILURE"), "delayed", "a@b", True),
    (("NEVER",), "failed", "a@b", False),
    (None, "failed", "", False),  # never to <>
    (("SUCCESS", "FAILURE"), "failed", "", False),
])  # fmt: skip
def test_when_a_report_is_due(notify: Any, action: str, sender: str, wanted: bool) -> None:
    assert report_wanted(notify, action, sender) is wanted


def test_status_of() -> None:
    assert status_of(550, "5.1.1") == "5.1.1"
    assert status_of(550, None) == "5.0.0"
    assert status_of(451, "5.1.1") == "4.0.0", "a status of another class is not believed"


def _failed(**kw: Any) -> list[Outcome]:
    return [
        Outcome("nobody@example.net", "failed", "5.1.1", notify=("FAILURE",),
                orcpt_type="rfc822", orcpt="Nobody+x@example.net", remote_mta="mx.example.net",
                diagnostic=("550-5.1.1 No such user here", "550 5.1.1 Really, none"),
                last_attempt=LAST, **kw),
        Outcome("other@example.net", "failed", "5.3.4", text="The message is too big.",
                last_attempt=LAST),
    ]  # fmt: skip


def _message(**kw: Any) -> OriginalMessage:
    values: dict[str, Any] = {"sender": "a@example.org", "content": CONTENT, "arrival": ARRIVAL,
              "envid": "QQ314159", "ret": "HDRS", "queue_id": "01ABC"} | kw  # fmt: skip
    return OriginalMessage(**values)


def test_failure_report_holds_every_field() -> None:
    report = build_report(_message(), _failed(), reporting_mta="mx.test", now=LAST)
    assert report.recipient == "a@example.org" and report.action == "failed"
    parsed = parse_report(report.content)
    assert parsed.reporting_mta == ("dns", "mx.test")
    assert parsed.original_envelope_id == "QQ314159"
    assert parsed.arrival_date == ARRIVAL
    first, second = parsed.recipients
    assert first.final_recipient == ("rfc822", "nobody@example.net")
    assert first.original_recipient == ("rfc822", "Nobody+x@example.net")
    assert first.action == "failed" and first.status == "5.1.1"
    assert first.remote_mta == ("dns", "mx.example.net")
    assert first.diagnostic_code == ("smtp", "550-5.1.1 No such user here 550 5.1.1 Really, none")
    assert first.last_attempt_date == LAST and first.will_retry_until is None
    assert second.original_recipient is None, "only when one was given"
    assert second.remote_mta is None, "only when one was given"
    assert second.diagnostic_code == ("x-smtpedge", "The message is too big."), "our own reason"
    assert "no such user here" in parsed.human.lower() and "too big" in parsed.human
    assert parsed.returned is not None and b"Subject: Quarterly figures" in parsed.returned
    assert b"body" not in parsed.returned, "RET=HDRS: the headers only"
    # The same report through Python's email package, as any reader would see it.
    msg = email.message_from_bytes(report.content, policy=email.policy.default)
    assert msg["From"] == "Mail Delivery System <Mailer-Daemon@mx.test>"
    assert msg["To"].addresses[0].addr_spec == "a@example.org"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    kinds = [p.get_content_type() for p in msg.iter_parts()]
    assert kinds == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert not msg.defects
    raw = report.content.decode()
    assert "Diagnostic-Code: smtp; 550-5.1.1 No such user here\r\n    550 5.1.1 Really" in raw


def test_no_envid_no_original_envelope_id() -> None:
    report = build_report(_message(envid=None), _failed(), reporting_mta="mx.test")
    assert b"Original-Envelope-Id" not in report.content
    assert parse_report(report.content).original_envelope_id is None


def test_ret_full_returns_the_message_up_to_the_limit() -> None:
    full = parse_report(build_report(_message(ret="FULL"), _failed(), reporting_mta="mx.test")
                        .content)  # fmt: skip
    assert full.returned is not None and full.returned.endswith(b"body\r\n")
    no_ret = parse_report(build_report(_message(ret=None), _failed(), reporting_mta="mx.test")
                          .content)  # fmt: skip
    assert no_ret.returned is not None and no_ret.returned.endswith(b"body\r\n"), "no RET: full"
    big = _message(ret="FULL", content=CONTENT + b"x" * 5000)
    report = build_report(big, _failed(), reporting_mta="mx.test", return_size_limit=1000)
    parsed = parse_report(report.content)
    assert parsed.returned is not None and b"xxxx" not in parsed.returned
    assert b"more than the 1000 returned in full" in report.content


def test_delay_report() -> None:
    until = LAST + dt.timedelta(days=3)
    outcome = Outcome("slow@example.net", "delayed", "4.4.1", remote_mta="mx.example.net",
                      diagnostic=("451 4.4.1 try later",), last_attempt=LAST,
                      will_retry_until=until)  # fmt: skip
    report = build_report(_message(ret="FULL"), [outcome], reporting_mta="mx.test")
    parsed = parse_report(report.content)
    [r] = parsed.recipients
    assert r.action == "delayed" and r.status == "4.4.1" and r.will_retry_until == until
    assert parsed.returned is not None and b"body" not in parsed.returned, "headers only"
    assert b"Subject: Mail delivery delayed" in report.content


@pytest.mark.parametrize("action", ["delivered", "relayed", "expanded"])
def test_success_reports(action: str) -> None:
    outcome = Outcome("b@example.net", action, "2.0.0", notify=("SUCCESS",))
    parsed = parse_report(build_report(_message(ret="FULL"), [outcome], reporting_mta="mx.test")
                          .content)  # fmt: skip
    assert parsed.recipients[0].action == action
    assert parsed.returned is not None and b"body" not in parsed.returned


def test_smtputf8_messages_get_global_reports() -> None:
    outcome = Outcome("j\u00f6rg@b\u00fccher.example", "failed", "5.1.1",
                      orcpt_type="utf-8", orcpt="J\u00f6rg@b\u00fccher.example")  # fmt: skip
    content = "Subject: Gr\u00fc\u00dfe\r\n\r\nHallo\r\n".encode()
    report = build_report(_message(smtputf8=True, content=content, ret="FULL"), [outcome],
                          reporting_mta="mx.test")  # fmt: skip
    parsed = parse_report(report.content)
    assert parsed.global_form
    assert parsed.recipients[0].final_recipient == ("utf-8", "j\u00f6rg@b\u00fccher.example")
    assert parsed.recipients[0].original_recipient == ("utf-8", "J\u00f6rg@b\u00fccher.example")
    msg = email.message_from_bytes(report.content, policy=email.policy.default)
    kinds = [p.get_content_type() for p in msg.iter_parts()]
    assert kinds == ["text/plain", "message/global-delivery-status", "message/global"]


def test_a_utf8_address_in_a_plain_report_is_xtext() -> None:
    outcome = Outcome("j\u00f6rg@example.net", "failed", "5.1.1")
    report = build_report(_message(), [outcome], reporting_mta="mx.test")
    assert b"Final-Recipient: utf-8;j\\x{F6}rg@example.net" in report.content
    assert parse_report(report.content).recipients[0].final_recipient[1] == "j\u00f6rg@example.net"


def test_remote_text_cannot_inject_headers() -> None:
    outcome = Outcome("b@example.net", "failed", "5.0.0", remote_mta="mx\r\nX-Evil: 1",
                      diagnostic=("550 no\r\nX-Evil: 2",))  # fmt: skip
    report = build_report(_message(), [outcome], reporting_mta="mx.test")
    assert b"\r\nX-Evil" not in report.content
    assert parse_report(report.content).recipients[0].diagnostic_code == (
        "smtp",
        "550 no X-Evil: 2",
    )


@pytest.mark.parametrize(("kw", "problem"), [
    ({"outcomes": []}, "at least one"),
    ({"message": _message(sender="")}, "null sender"),
    ({"outcomes": [Outcome("a@b", "failed", "5.0.0"), Outcome("c@d", "delayed", "4.0.0")]},
     "one report per action"),
])  # fmt: skip
def test_build_refuses(kw: dict[str, Any], problem: str) -> None:
    args: dict[str, Any] = {"message": _message(), "outcomes": _failed()} | kw
    with pytest.raises(ValueError, match=problem):
        build_report(args["message"], args["outcomes"], reporting_mta="mx.test")


def test_outcome_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="RFC 3463"):
        Outcome("a@b", "failed", "550")
    with pytest.raises(ValueError, match="unknown action"):
        Outcome("a@b", "bounced", "5.0.0")


# -- other MTAs' reports, in their formats ----------------------------------------------

POSTFIX = b"""\
From: MAILER-DAEMON@mx.example.org (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: a@example.org
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="4A1B2C3D.1764756000/mx.example.org"
Message-Id: <20261203100000.4A1B2C3D@mx.example.org>

This is a MIME-encapsulated message.

--4A1B2C3D.1764756000/mx.example.org
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.example.org.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

--4A1B2C3D.1764756000/mx.example.org
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org
X-Postfix-Queue-ID: 4A1B2C3D
X-Postfix-Sender: rfc822; a@example.org
Arrival-Date: Thu,  3 Dec 2026 10:00:00 +0000 (UTC)

Final-Recipient: rfc822; nobody@example.net
Original-Recipient: rfc822;nobody@example.net
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.example.net
Diagnostic-Code: smtp; 550 5.1.1 <nobody@example.net>: Recipient address
    rejected: User unknown in local recipient table

--4A1B2C3D.1764756000/mx.example.org
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

Subject: hi
From: a@example.org

--4A1B2C3D.1764756000/mx.example.org--
"""

EXIM = b"""\
From: Mail Delivery System <Mailer-Daemon@mx.example.org>
To: a@example.org
Content-Type: multipart/report; report-type=delivery-status; boundary=1764756000-eximdsn-846930886
MIME-Version: 1.0
Subject: Mail delivery failed: returning message to sender
Auto-Submitted: auto-replied

--1764756000-eximdsn-846930886
Content-type: text/plain; charset=us-ascii

This message was created automatically by mail delivery software.

--1764756000-eximdsn-846930886
Content-type: message/delivery-status

Reporting-MTA: dns; mx.example.org

Action: failed
Final-Recipient: rfc822;nobody@example.net
Status: 5.0.0
Remote-MTA: dns; mx.example.net
Diagnostic-Code: smtp; 550 No such user

Action: delayed
Final-Recipient: rfc822;slow@example.net
Status: 4.0.0
Remote-MTA: dns; slow.example.net
Diagnostic-Code: smtp; 451 Try again
Will-Retry-Until: Sat, 05 Dec 2026 10:00:00 +0000

--1764756000-eximdsn-846930886
Content-type: message/rfc822

Subject: hi
From: a@example.org

body
--1764756000-eximdsn-846930886--
"""


def test_postfix_format() -> None:
    parsed = parse_report(POSTFIX)
    assert parsed.reporting_mta == ("dns", "mx.example.org")
    assert parsed.fields["x-postfix-queue-id"] == "4A1B2C3D"
    [r] = parsed.recipients
    assert r.final_recipient == ("rfc822", "nobody@example.net")
    assert r.status == "5.1.1" and r.action == "failed"
    assert r.diagnostic_code == ("smtp", "550 5.1.1 <nobody@example.net>: Recipient address "
                                 "rejected: User unknown in local recipient table")  # fmt: skip
    assert parsed.returned is not None and b"Subject: hi" in parsed.returned
    assert "could not" in parsed.human


def test_exim_format() -> None:
    parsed = parse_report(EXIM)
    assert parsed.original_envelope_id is None and parsed.arrival_date is None
    failed, delayed = parsed.recipients
    assert failed.status == "5.0.0" and failed.diagnostic_code == ("smtp", "550 No such user")
    assert delayed.action == "delayed"
    assert delayed.will_retry_until == dt.datetime(2026, 12, 5, 10, 0, tzinfo=dt.UTC)
    assert parsed.returned is not None and b"\r\n\r\nbody" in parsed.returned


@pytest.mark.parametrize(("data", "problem"), [
    (b"Subject: hello\r\n\r\njust mail\r\n", "no multipart/report"),
    (POSTFIX.replace(b"message/delivery-status", b"text/plain"), "no message/delivery-status"),
    (POSTFIX.replace(b"Final-Recipient", b"X-Final"), "no Final-Recipient"),
    (POSTFIX.replace(b"Status: 5.1.1", b"Status: bounced"), "bad Status"),
    (POSTFIX.replace(b"Action: failed", b"Action: bounced"), "bad Action"),
    (POSTFIX.replace(b"Reporting-MTA", b"X-Reporting"), "no Reporting-MTA"),
    (EXIM.replace(b"Final-Recipient: rfc822;", b"Final-Recipient: "), "has no type"),
])  # fmt: skip
def test_what_is_not_a_report(data: bytes, problem: str) -> None:
    with pytest.raises(DSNParseError, match=problem):
        parse_report(data)
