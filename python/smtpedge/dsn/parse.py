"""Reading delivery status reports (RFC 3464, and the RFC 6533 global form):
smtpedge's own, and those of other MTAs (Postfix, Exim, ...), so that a
program can act on its bounces.

    report = parse_report(raw_message)
    for r in report.recipients:
        print(r.final_recipient[1], r.action, r.status, r.diagnostic_code)

Every field is kept (``fields``, names in lower case, folded values
unfolded); the ones RFC 3464 defines are also typed. Input that is not a
delivery status report raises ``DSNParseError`` saying what is missing.
"""

from __future__ import annotations

import datetime as dt
import email
import email.message
import email.parser
import email.policy
import email.utils
import re
from dataclasses import dataclass, field

from smtpedge.errors import SmtpedgeError

__all__ = ["DSNParseError", "DeliveryReport", "RecipientStatus", "parse_report"]

_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")
_STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")


class DSNParseError(SmtpedgeError, ValueError):
    """Not a delivery status report, or one missing a required field."""


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """One per-recipient block. Typed fields are (type, value) pairs where
    RFC 3464 gives them a type: ``("rfc822", "a@b")``, ``("dns", "mx.b")``,
    ``("smtp", "550 5.1.1 ...")``."""

    final_recipient: tuple[str, str]
    action: str
    status: str
    original_recipient: tuple[str, str] | None = None
    remote_mta: tuple[str, str] | None = None
    diagnostic_code: tuple[str, str] | None = None
    last_attempt_date: dt.datetime | None = None
    will_retry_until: dt.datetime | None = None
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """The per-message fields, each recipient's block, the human-readable
    part and what was returned of the original message (its headers or all
    of it, as bytes; None if nothing)."""

    reporting_mta: tuple[str, str]
    original_envelope_id: str | None
    arrival_date: dt.datetime | None
    recipients: tuple[RecipientStatus, ...]
    fields: dict[str, str]
    human: str
    returned: bytes | None
    global_form: bool


def _unfold(value: str) -> str:
    return re.sub(r"\r?\n[ \t]+", " ", value).strip()


def _typed(value: str | None, name: str) -> tuple[str, str] | None:
    if value is None:
        return None
    kind, sep, rest = value.partition(";")
    if not sep:
        raise DSNParseError(f"{name}: {value!r} has no type (want e.g. 'rfc822; a@b')")
    return kind.strip().lower(), rest.strip()


def _address(value: str | None, name: str, global_form: bool) -> tuple[str, str] | None:
    typed = _typed(value, name)
    if typed is not None and typed[0] == "utf-8" and not global_form:
        from smtpedge import xtext

        try:
            return typed[0], xtext.decode_utf8_addr(typed[1])
        except ValueError as exc:
            raise DSNParseError(f"{name}: bad utf-8-addr-xtext {typed[1]!r}: {exc}") from None
    return typed


def _date(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


def _blocks(part: email.message.Message) -> list[dict[str, str]]:
    payload = part.get_payload()
    if isinstance(payload, list) and part.get_content_type() == "message/delivery-status":
        # email parses message/delivery-status into its blocks already.
        return [{k.lower(): _unfold(str(v)) for k, v in m.items()}
                for m in payload if isinstance(m, email.message.Message)]  # fmt: skip
    if isinstance(payload, list):  # message/global-delivery-status, read as one message/*
        raw_bytes = b"".join(m.as_bytes() for m in payload if isinstance(m, email.message.Message))
        text = raw_bytes.decode("utf-8", "replace")
    else:
        raw = part.get_payload(decode=True)
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(payload)
    out = []
    for chunk in re.split(r"\r?\n[ \t]*\r?\n", text.strip()):
        if chunk.strip():
            msg = email.parser.HeaderParser().parsestr(chunk.strip() + "\n")
            out.append({k.lower(): _unfold(str(v)) for k, v in msg.items()})
    return out


def _find_report(msg: email.message.Message) -> email.message.Message:
    for part in msg.walk():
        if part.get_content_type() == "multipart/report":
            return part
    raise DSNParseError("not a delivery status report: no multipart/report part")


def parse_report(message: bytes | str | email.message.Message) -> DeliveryReport:
    """Parse a delivery status report (see the module docstring)."""
    if isinstance(message, bytes):
        msg = email.message_from_bytes(message)
    elif isinstance(message, str):
        msg = email.message_from_string(message)
    else:
        msg = message
    report = _find_report(msg)
    payload = report.get_payload()
    if not isinstance(payload, list):
        raise DSNParseError("multipart/report without parts")
    parts = [p for p in payload if isinstance(p, email.message.Message)]
    status_at = next((i for i, p in enumerate(parts) if p.get_content_type() in _STATUS_TYPES),
                     None)  # fmt: skip
    if status_at is None:
        raise DSNParseError("no message/delivery-status part")
    status_part = parts[status_at]
    global_form = status_part.get_content_type() == "message/global-delivery-status"
    blocks = _blocks(status_part)
    if len(blocks) < 2:
        raise DSNParseError("the delivery-status part has no per-recipient block")
    per_message, rest = blocks[0], blocks[1:]
    reporting = _typed(per_message.get("reporting-mta"), "Reporting-MTA")
    if reporting is None:
        raise DSNParseError("the delivery-status part has no Reporting-MTA field")
    recipients = []
    for n, block in enumerate(rest, 1):
        final = _address(block.get("final-recipient"), "Final-Recipient", global_form)
        action = block.get("action", "").lower().split(" ")[0]
        status = block.get("status", "").split(" ")[0]
        if final is None:
            raise DSNParseError(f"recipient block {n} has no Final-Recipient field")
        if action not in _ACTIONS:
            raise DSNParseError(f"recipient block {n}: bad Action {block.get('action')!r}")
        if not _STATUS.fullmatch(status):
            raise DSNParseError(f"recipient block {n}: bad Status {block.get('status')!r}")
        recipients.append(RecipientStatus(
            final_recipient=final, action=action, status=status,
            original_recipient=_address(block.get("original-recipient"), "Original-Recipient",
                                        global_form),
            remote_mta=_typed(block.get("remote-mta"), "Remote-MTA"),
            diagnostic_code=_typed(block.get("diagnostic-code"), "Diagnostic-Code"),
            last_attempt_date=_date(block.get("last-attempt-date")),
            will_retry_until=_date(block.get("will-retry-until")),
            fields=block,
        ))  # fmt: skip
    human = ""
    if status_at > 0 and parts[0].get_content_maintype() == "text":
        raw = parts[0].get_payload(decode=True)
        charset = parts[0].get_content_charset() or "utf-8"
        if isinstance(raw, bytes):
            human = raw.decode(charset, "replace")
    returned = None
    for part in parts[status_at + 1 :]:
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global") and part.is_multipart():
            inner = part.get_payload(0)
            if isinstance(inner, email.message.Message):
                returned = inner.as_bytes(policy=email.policy.SMTP)
        elif ctype in ("text/rfc822-headers", "message/global-headers", "message/rfc822",
                       "message/global"):  # fmt: skip
            raw = part.get_payload(decode=True)
            returned = raw if isinstance(raw, bytes) else None
    return DeliveryReport(
        reporting_mta=reporting,
        original_envelope_id=per_message.get("original-envelope-id"),
        arrival_date=_date(per_message.get("arrival-date")),
        recipients=tuple(recipients),
        fields=per_message,
        human=human,
        returned=returned,
        global_form=global_form,
    )
