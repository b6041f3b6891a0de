"""MAIL and RCPT parameters: SIZE, BODY, SMTPUTF8 and the RFC 3461 DSN set."""

from __future__ import annotations

import pytest

from smtpedge.errors import SMTPError
from smtpedge.esmtp import Offered, parse_mail_params, parse_rcpt_params
from smtpedge.smtpline import parse_command

DSN = Offered(size_limit=1000, dsn=True)
NO_DSN = Offered(size_limit=1000, dsn=False)


def mail(params: str, offered: Offered = DSN) -> object:
    return parse_mail_params(parse_command(f"MAIL FROM:<a@b.example> {params}".encode()).params,
                             offered)  # fmt: skip


def rcpt(params: str, offered: Offered = DSN) -> object:
    return parse_rcpt_params(parse_command(f"RCPT TO:<a@b.example> {params}".encode()).params,
                             offered)  # fmt: skip


@pytest.mark.parametrize(
    ("params", "field", "value"),
    [
        ("SIZE=999", "size", 999),
        ("BODY=8bitmime", "body", "8BITMIME"),
        ("BODY=7BIT", "body", "7BIT"),
        ("SMTPUTF8", "smtputf8", True),
        ("RET=full", "ret", "FULL"),
        ("RET=HDRS", "ret", "HDRS"),
        ("ENVID=abc+2Bdef", "envid", "abc+def"),
        ("ENVID=abc+2Bdef", "envid_xtext", "abc+2Bdef"),
        ("ENVID=" + "x" * 100, "envid", "x" * 100),
        ("ENVID=a+20b", "envid", "a b"),
    ],
)
def test_mail_params_valid(params: str, field: str, value: object) -> None:
    assert getattr(mail(params), field) == value


@pytest.mark.parametrize(
    ("params", "offered", "code", "fragment"),
    [
        ("SIZE=1001", DSN, 552, "exceeds"),
        ("SIZE=abc", DSN, 501, "SIZE"),
        ("SIZE", DSN, 501, "SIZE parameter: a value is required"),
        ("BODY=BINARYMIME", DSN, 555, "BINARYMIME"),
        ("BODY=9BIT", DSN, 501, "BODY"),
        ("SMTPUTF8=yes", DSN, 501, "SMTPUTF8"),
        ("RET=NONE", DSN, 501, "Invalid RET parameter"),
        ("RET=FULL RET=HDRS", DSN, 501, "Duplicate RET parameter"),
        ("ENVID=a ENVID=b", DSN, 501, "Duplicate ENVID"),
        ("ENVID=" + "x" * 101, DSN, 501, "longer than 100"),
        ("ENVID=a+0Ab", DSN, 501, "printable US-ASCII"),
        ("ENVID=a+2bb", DSN, 501, "not valid xtext"),
        ("ENVID=", DSN, 501, "ENVID"),
        ("RET=FULL", NO_DSN, 555, "RET parameter not supported (DSN not offered)"),
        ("ENVID=x", NO_DSN, 555, "ENVID parameter not supported"),
        ("XFOO=1", DSN, 555, "XFOO parameter not supported"),
    ],
)
def test_mail_params_invalid(params: str, offered: Offered, code: int, fragment: str) -> None:
    with pytest.raises(SMTPError) as info:
        mail(params, offered)
    assert info.value.code == code
    assert fragment in info.value.text


@pytest.mark.parametrize(
    ("params", "notify", "orcpt_type", "orcpt"),
    [
        ("NOTIFY=NEVER", ("NEVER",), None, None),
        ("NOTIFY=never", ("NEVER",), None, None),
        ("NOTIFY=SUCCESS,FAILURE,DELAY", ("SUCCESS", "FAILURE", "DELAY"), None, None),
        ("NOTIFY=delay", ("DELAY",), None, None),
        ("ORCPT=rfc822;a+2Bb@c.example", None, "rfc822", "a+b@c.example"),
        ("ORCPT=RFC822;a@c.example", None, "rfc822", "a@c.example"),
        ("ORCPT=utf-8;j\\x{F6}rg@c.example", None, "utf-8", "j\u00f6rg@c.example"),
        ("NOTIFY=FAILURE ORCPT=rfc822;x@y.example", ("FAILURE",), "rfc822", "x@y.example"),
    ],
)
def test_rcpt_params_valid(
    params: str, notify: tuple[str, ...] | None, orcpt_type: str | None, orcpt: str | None
) -> None:
    r = rcpt(params)
    assert (r.notify, r.orcpt_type, r.orcpt) == (notify, orcpt_type, orcpt)  # type: ignore[attr-defined]


def test_orcpt_is_kept_byte_exact() -> None:
    r = rcpt("ORCPT=rfc822;A+2Bb@C.example")
    assert r.orcpt_xtext == "rfc822;A+2Bb@C.example"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("params", "offered", "code", "fragment"),
    [
        ("NOTIFY=NEVER,SUCCESS", DSN, 501, "NEVER must stand alone"),
        ("NOTIFY=SUCCESS,SUCCESS", DSN, 501, "repeated"),
        ("NOTIFY=SOMETIMES", DSN, 501, "Invalid NOTIFY"),
        ("NOTIFY=", DSN, 501, "NOTIFY"),
        ("NOTIFY=NEVER NOTIFY=NEVER", DSN, 501, "Duplicate NOTIFY"),
        ("ORCPT=a@b.example", DSN, 501, "addr-type;address"),
        ("ORCPT=rfc822;", DSN, 501, "ORCPT"),
        ("ORCPT=rfc822;a+zzb", DSN, 501, "not valid xtext"),
        ("ORCPT=rfc822;" + "x" * 494, DSN, 501, "longer than 500"),
        ("ORCPT=rfc822;a+0Ab@c", DSN, 501, "printable"),
        ("ORCPT=utf-8;a\\x{zz}", DSN, 501, "utf-8-addr-xtext"),
        ("ORCPT=rfc822;a@b ORCPT=rfc822;a@b", DSN, 501, "Duplicate ORCPT"),
        ("NOTIFY=NEVER", NO_DSN, 555, "DSN not offered"),
        ("ORCPT=rfc822;a@b", NO_DSN, 555, "DSN not offered"),
        ("RET=FULL", DSN, 555, "RET parameter not supported"),
    ],
)
def test_rcpt_params_invalid(params: str, offered: Offered, code: int, fragment: str) -> None:
    with pytest.raises(SMTPError) as info:
        rcpt(params, offered)
    assert info.value.code == code
    assert fragment in info.value.text
