"""Delivery Status Notifications: when one is due (RFC 3461 sections 5-6) and
what it looks like (RFC 3464, with RFC 3463 status codes and the RFC 6533
forms for messages received with SMTPUTF8).

    kinds = [o for o in outcomes if report_wanted(o.notify, o.action, sender)]
    report = build_report(message, outcomes, reporting_mta="mx.example.org")
    # queue report.content from <> to <report.recipient>

A report is ``multipart/report; report-type=delivery-status``: a first part
that says in plain words what happened, then ``message/delivery-status``
(``message/global-delivery-status`` for SMTPUTF8 messages), then what RET
asked for of the original message: its headers (``text/rfc822-headers``,
``message/global-headers``), or on failure with RET=FULL the whole message
(``message/rfc822``, ``message/global``) up to ``return_size_limit``.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ACTIONS",
    "Outcome",
    "OriginalMessage",
    "Report",
    "build_report",
    "report_wanted",
    "status_of",
]

ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")
_SUBJECTS = {
    "failed": "Mail delivery failed: returning message to sender",
    "delayed": "Mail delivery delayed",
    "delivered": "Mail delivered",
    "relayed": "Mail relayed (no further notification)",
    "expanded": "Mail delivered to a list (expanded)",
}
_SAYS = {
    "failed": "could not be delivered to the recipient(s) below. This is a permanent "
    "error; the message will not be tried again",
    "delayed": "has not yet been delivered to the recipient(s) below. Delivery will go on "
    "being tried; you need do nothing now",
    "delivered": "was delivered to the recipient(s) below",
    "relayed": "was passed on to a server that does not send delivery notifications, for "
    "the recipient(s) below: you will hear no more about it from there",
    "expanded": "was delivered to the recipient(s) below, each an alias or list that sent it "
    "on to several addresses; no further notifications will come from them",
}


def report_wanted(notify: Sequence[str] | None, action: str, sender: str) -> bool:
    """Is a report of ``action`` due for a recipient with this NOTIFY
    (None: not given)? RFC 3461 sections 4.1 and 5: failures and delays are
    reported unless NOTIFY says otherwise, successes only on request, nothing
    for NOTIFY=NEVER, and never to the null sender ``<>``."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    if not sender:
        return False
    keywords = {k.upper() for k in notify} if notify is not None else None
    if keywords is not None and "NEVER" in keywords:
        return False
    if action == "failed":
        return keywords is None or "FAILURE" in keywords
    if action == "delayed":
        return keywords is None or "DELAY" in keywords
    return keywords is not None and "SUCCESS" in keywords


def status_of(code: int, status: str | None) -> str:
    """The RFC 3463 status for a reply: its own enhanced code when it gave one
    of the same class, else the class alone (``5.0.0``): all that is known."""
    cls = str(code // 100)
    if status and status.split(".", 1)[0] == cls:
        return status
    return f"{cls}.0.0"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one recipient.

    ``recipient`` is the address tried (Final-Recipient); ``orcpt_type`` and
    ``orcpt`` the decoded ORCPT the client gave, if any; ``status`` an
    RFC 3463 code (see ``status_of``); ``remote_mta`` the host that answered
    and ``diagnostic`` its reply, line by line as sent (``550-5.1.1 ...``),
    when a remote host answered; ``text`` what smtpedge itself says of it.
    """

    recipient: str
    action: str
    status: str
    notify: tuple[str, ...] | None = None
    orcpt_type: str | None = None
    orcpt: str | None = None
    remote_mta: str | None = None
    diagnostic: tuple[str, ...] = ()
    text: str = ""
    last_attempt: dt.datetime | None = None
    will_retry_until: dt.datetime | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}")
        parts = self.status.split(".")
        if (
            len(parts) != 3
            or parts[0] not in ("2", "4", "5")
            or not all(p.isdigit() for p in parts)
        ):
            raise ValueError(f"not an RFC 3463 status code: {self.status!r}")


@dataclass(frozen=True, slots=True)
class OriginalMessage:
    """The message the report is about: its sender, the decoded ENVID and RET
    it came with, when it arrived, whether it came with SMTPUTF8, its content."""

    sender: str
    content: bytes
    arrival: dt.datetime
    envid: str | None = None
    ret: str | None = None
    smtputf8: bool = False
    queue_id: str | None = None


@dataclass(frozen=True, slots=True)
class Report:
    """A report to queue: from ``<>`` to ``recipient``."""

    recipient: str
    content: bytes
    action: str


def _date(when: dt.datetime) -> str:
    return email.utils.format_datetime(when if when.tzinfo else when.replace(tzinfo=dt.UTC))


def _headers_of(content: bytes) -> bytes:
    end = content.find(b"\r\n\r\n")
    if end < 0:
        end = content.find(b"\n\n")
        return content if end < 0 else content[: end + 1]
    return content[: end + 2]


def _fold(name: str, value_lines: Sequence[str]) -> str:
    """A header whose value spans lines: each later line folded under it."""
    return f"{name}: " + "\r\n    ".join(value_lines) + "\r\n"


def _clean(text: str) -> str:
    """No CR or LF may reach a header from a remote reply or an address."""
    return " ".join(text.replace("\r", " ").replace("\n", " ").split())


def _address_field(addr_type: str, address: str, utf8: bool) -> str:
    """``rfc822;a@b``; a UTF-8 address as ``utf-8;`` text in a global report,
    as utf-8-addr-xtext in a plain one (RFC 6533 section 3)."""
    from smtpedge import xtext

    if address.isascii():
        return f"{addr_type};{address}"
    if utf8:
        return f"utf-8;{address}"
    return "utf-8;" + xtext.encode_utf8_addr(address)


def build_report(
    message: OriginalMessage,
    outcomes: Sequence[Outcome],
    *,
    reporting_mta: str,
    dsn_from: str | None = None,
    return_size_limit: int = 100 * 1024,
    now: dt.datetime | None = None,
) -> Report:
    """One report for ``outcomes`` (all of one action) of ``message``."""
    if not outcomes:
        raise ValueError("a report needs at least one recipient")
    actions = {o.action for o in outcomes}
    if len(actions) != 1:
        raise ValueError(f"one report per action, not {sorted(actions)}")
    action = actions.pop()
    if not message.sender:
        raise ValueError("no report goes to the null sender <>")
    now = now or dt.datetime.now(dt.UTC)
    utf8 = message.smtputf8
    sender_from = dsn_from or f"Mail Delivery System <Mailer-Daemon@{reporting_mta}>"
    boundary = f"=_smtpedge_{os.urandom(9).hex()}"
    head = [
        f"From: {sender_from}",
        f"To: <{message.sender}>",
        f"Subject: {_SUBJECTS[action]}",
        f"Date: {_date(now)}",
        f"Message-ID: <{os.urandom(12).hex()}@{reporting_mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    out = ["\r\n".join(head), "\r\n\r\nThis is a MIME-encapsulated delivery status report.\r\n"]

    # Part 1: in words.
    about = f"The message from <{message.sender}>"
    if message.envid:
        about += f" (envelope ID {_clean(message.envid)})"
    about += f", received {_date(message.arrival)}, {_SAYS[action]}."
    words = [*textwrap.wrap(about, 72, break_long_words=False, break_on_hyphens=False), ""]
    for o in outcomes:
        words.append(f"  <{_clean(o.recipient)}>")
        said = ""
        if o.remote_mta and o.diagnostic:
            said = f"{_clean(o.remote_mta)} said: " + _clean(" ".join(o.diagnostic))
        for line in (said, _clean(o.text) if o.text else ""):
            if line:
                words += textwrap.wrap(line, 72, initial_indent="    ", subsequent_indent="      ",
                                       break_long_words=False, break_on_hyphens=False)  # fmt: skip
        if o.will_retry_until is not None:
            words.append(f"    Delivery will be tried until {_date(o.will_retry_until)}.")
    words.append("")
    words.append(f"-- the mail system at {reporting_mta}")
    out.append(f"\r\n--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n"
               "Content-Transfer-Encoding: 8bit\r\n\r\n" + "\r\n".join(words) + "\r\n")  # fmt: skip

    # Part 2: for machines.
    fields = [f"Reporting-MTA: dns; {reporting_mta}\r\n"]
    if message.envid is not None:
        fields.append(f"Original-Envelope-Id: {_clean(message.envid)}\r\n")
    fields.append(f"Arrival-Date: {_date(message.arrival)}\r\n")
    for o in outcomes:
        block = ["\r\n"]
        if o.orcpt is not None:
            original = _address_field(o.orcpt_type or "rfc822", _clean(o.orcpt), utf8)
            block.append(f"Original-Recipient: {original}\r\n")
        final = _address_field("rfc822", _clean(o.recipient), utf8)
        block.append(f"Final-Recipient: {final}\r\n")
        block.append(f"Action: {o.action}\r\n")
        block.append(f"Status: {o.status}\r\n")
        if o.remote_mta:
            block.append(f"Remote-MTA: dns; {_clean(o.remote_mta)}\r\n")
            if o.diagnostic:
                lines = [_clean(line) for line in o.diagnostic]
                lines[0] = "smtp; " + lines[0]
                block.append(_fold("Diagnostic-Code", lines))
        elif o.text and o.action in ("failed", "delayed"):
            # No remote host answered: RFC 3464 2.3.6 still wants a diagnostic
            # for failed and delayed recipients; the reason is our own.
            block.append(_fold("Diagnostic-Code", [f"X-smtpedge; {_clean(o.text)}"]))
        if o.last_attempt is not None:
            block.append(f"Last-Attempt-Date: {_date(o.last_attempt)}\r\n")
        if o.action == "delayed" and o.will_retry_until is not None:
            block.append(f"Will-Retry-Until: {_date(o.will_retry_until)}\r\n")
        fields.append("".join(block))
    status_type = "message/global-delivery-status" if utf8 else "message/delivery-status"
    out.append(f"\r\n--{boundary}\r\nContent-Type: {status_type}\r\n\r\n" + "".join(fields))

    # Part 3: what RET asked for.
    content = message.content
    # A failure returns the whole message unless RET=HDRS asked for less (with
    # no RET, as Exim and Postfix do: the sender sees what did not arrive).
    full = action == "failed" and (message.ret or "FULL").upper() == "FULL"
    note = ""
    if full and len(content) > return_size_limit:
        full = False
        note = (f"The message was {len(content)} bytes, more than the {return_size_limit} "
                "returned in full: here are its headers.")  # fmt: skip
    if full:
        kind = "message/global" if utf8 else "message/rfc822"
        body = content
    else:
        kind = "message/global-headers" if utf8 else "text/rfc822-headers"
        body = _headers_of(content)
    part = f"\r\n--{boundary}\r\n"
    if note:
        part += f"Content-Type: text/plain; charset=utf-8\r\n\r\n{note}\r\n\r\n--{boundary}\r\n"
    out.append(part + f"Content-Type: {kind}\r\n\r\n")
    tail = f"\r\n--{boundary}--\r\n".encode()
    data = "".join(out).encode("utf-8") + body
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return Report(message.sender, data + tail, action)
