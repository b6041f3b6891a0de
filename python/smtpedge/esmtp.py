"""MAIL and RCPT parameters: SIZE (RFC 1870), BODY (RFC 6152), SMTPUTF8
(RFC 6531) and the DSN parameters of RFC 3461 (RET, ENVID, NOTIFY, ORCPT).

Each function takes the parameters the command parser returned and either
gives back a checked, decoded record or raises SMTPError with the reply.
A parameter that appears twice or has a bad value gets ``501`` naming it; a
parameter of an extension the client was not offered gets ``555``.

RFC 3461 grammar (section 4):

    ret-value    = "FULL" / "HDRS"
    envid-value  = xtext                       ; at most 100 characters decoded
    notify-esmtp-value = "NEVER" / 1#notify-list-element
    notify-list-element = "SUCCESS" / "FAILURE" / "DELAY"
    orcpt-value  = addr-type ";" xtext         ; at most 500 characters
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from smtpedge import xtext
from smtpedge.errors import SMTPError, XtextError

__all__ = [
    "MailParams",
    "Offered",
    "RcptParams",
    "Recipient",
    "parse_mail_params",
    "parse_rcpt_params",
]

Params = Sequence[tuple[str, str | None]]


@dataclass(frozen=True, slots=True)
class Offered:
    """The extensions offered to this client in the EHLO reply."""

    size_limit: int = 0
    eightbitmime: bool = True
    smtputf8: bool = True
    dsn: bool = False


@dataclass(frozen=True, slots=True)
class MailParams:
    """Checked MAIL parameters. ``envid`` is decoded; ``envid_xtext`` is
    byte-exact as the client sent it, for relaying."""

    size: int | None = None
    body: str | None = None
    smtputf8: bool = False
    ret: str | None = None
    envid: str | None = None
    envid_xtext: str | None = None


@dataclass(frozen=True, slots=True)
class RcptParams:
    """Checked RCPT parameters. ``notify`` is None when absent, else a tuple of
    upper-case keywords. ``orcpt`` is the decoded original recipient,
    ``orcpt_type`` its address type (``rfc822``, ``utf-8``, ...), and
    ``orcpt_xtext`` the parameter value byte-exact for relaying."""

    notify: tuple[str, ...] | None = None
    orcpt_type: str | None = None
    orcpt: str | None = None
    orcpt_xtext: str | None = None


def _bad(keyword: str, why: str) -> SMTPError:
    return SMTPError(501, "5.5.4", f"Invalid {keyword} parameter: {why}")


def _unoffered(keyword: str, ext: str) -> SMTPError:
    return SMTPError(555, "5.5.4", f"{keyword} parameter not supported ({ext} not offered)")


def _unique(params: Params) -> dict[str, str | None]:
    seen: dict[str, str | None] = {}
    for keyword, value in params:
        if keyword in seen:
            raise SMTPError(501, "5.5.4", f"Duplicate {keyword} parameter")
        seen[keyword] = value
    return seen


def _need_value(keyword: str, value: str | None) -> str:
    if value is None or value == "":
        raise _bad(keyword, "a value is required")
    return value


def _printable_xtext(keyword: str, value: str, max_len: int) -> str:
    try:
        raw = xtext.decode(value)
    except XtextError as exc:
        raise _bad(keyword, f"not valid xtext ({exc.reason})") from None
    if len(raw) > max_len:
        raise _bad(keyword, f"longer than {max_len} characters")
    if any(b < 0x20 or b > 0x7E for b in raw):
        raise _bad(keyword, "must be printable US-ASCII")
    return raw.decode("ascii")


def parse_mail_params(params: Params, offered: Offered) -> MailParams:
    """Check MAIL FROM parameters against what was offered."""
    values = _unique(params)
    size = body = ret = envid = envid_xtext = None
    smtputf8 = False
    for keyword, value in values.items():
        if keyword == "SIZE":
            v = _need_value(keyword, value)
            if not v.isdigit() or len(v) > 20:
                raise _bad(keyword, "must be a number of octets")
            size = int(v)
            if offered.size_limit and size > offered.size_limit:
                raise SMTPError(552, "5.3.4", "Message size exceeds fixed maximum message size")
        elif keyword == "BODY":
            v = _need_value(keyword, value).upper()
            if v not in ("7BIT", "8BITMIME"):
                if v == "BINARYMIME":
                    raise _unoffered(keyword + "=BINARYMIME", "BINARYMIME")
                raise _bad(keyword, "must be 7BIT or 8BITMIME")
            if v == "8BITMIME" and not offered.eightbitmime:
                raise _unoffered(keyword + "=8BITMIME", "8BITMIME")
            body = v
        elif keyword == "SMTPUTF8":
            if value is not None:
                raise _bad(keyword, "takes no value")
            if not offered.smtputf8:
                raise _unoffered(keyword, "SMTPUTF8")
            smtputf8 = True
        elif keyword == "RET":
            if not offered.dsn:
                raise _unoffered(keyword, "DSN")
            v = _need_value(keyword, value).upper()
            if v not in ("FULL", "HDRS"):
                raise _bad(keyword, "must be FULL or HDRS")
            ret = v
        elif keyword == "ENVID":
            if not offered.dsn:
                raise _unoffered(keyword, "DSN")
            envid_xtext = _need_value(keyword, value)
            envid = _printable_xtext(keyword, envid_xtext, 100)
        else:
            raise SMTPError(555, "5.5.4", f"{keyword} parameter not supported")
    return MailParams(size, body, smtputf8, ret, envid, envid_xtext)


_NOTIFY = ("SUCCESS", "FAILURE", "DELAY")


def _parse_notify(value: str) -> tuple[str, ...]:
    items = [i.upper() for i in value.split(",")]
    if items == ["NEVER"]:
        return ("NEVER",)
    if "NEVER" in items:
        raise _bad("NOTIFY", "NEVER must stand alone")
    for item in items:
        if item not in _NOTIFY:
            raise _bad("NOTIFY", "must be NEVER or a list of SUCCESS, FAILURE, DELAY")
    if len(set(items)) != len(items):
        raise _bad("NOTIFY", "a keyword is repeated")
    return tuple(items)


def _parse_orcpt(value: str) -> tuple[str, str]:
    if len(value) > 500:
        raise _bad("ORCPT", "longer than 500 characters")
    addr_type, sep, encoded = value.partition(";")
    if not sep or not addr_type or not encoded:
        raise _bad("ORCPT", "must be addr-type;address")
    if not all(c.isascii() and (c.isalnum() or c in "-_.") for c in addr_type):
        raise _bad("ORCPT", "bad address type")
    kind = addr_type.lower()
    if kind == "utf-8":
        try:
            return kind, xtext.decode_utf8_addr(encoded)
        except XtextError as exc:
            raise _bad("ORCPT", f"not valid utf-8-addr-xtext ({exc.reason})") from None
    try:
        raw = xtext.decode(encoded)
    except XtextError as exc:
        raise _bad("ORCPT", f"not valid xtext ({exc.reason})") from None
    if kind == "rfc822" and any(b < 0x20 or b > 0x7E for b in raw):
        raise _bad("ORCPT", "an rfc822 address must be printable US-ASCII")
    return kind, raw.decode("utf-8", "surrogateescape")


def parse_rcpt_params(params: Params, offered: Offered) -> RcptParams:
    """Check RCPT TO parameters against what was offered."""
    values = _unique(params)
    notify = orcpt_type = orcpt = orcpt_xtext = None
    for keyword, value in values.items():
        if keyword == "NOTIFY":
            if not offered.dsn:
                raise _unoffered(keyword, "DSN")
            notify = _parse_notify(_need_value(keyword, value))
        elif keyword == "ORCPT":
            if not offered.dsn:
                raise _unoffered(keyword, "DSN")
            orcpt_xtext = _need_value(keyword, value)
            orcpt_type, orcpt = _parse_orcpt(orcpt_xtext)
        else:
            raise SMTPError(555, "5.5.4", f"{keyword} parameter not supported")
    return RcptParams(notify, orcpt_type, orcpt, orcpt_xtext)


@dataclass(frozen=True, slots=True)
class Recipient:
    """An accepted recipient with its own DSN parameters (RFC 3461):
    ``params`` decoded, ``raw_params`` byte-exact as the client sent them."""

    address: str
    params: RcptParams = field(default_factory=RcptParams)
    raw_params: tuple[tuple[str, str | None], ...] = ()
