"""SMTP command and reply lines: RFC 5321/6531 vectors through the public API."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import load_vectors, raw
from smtpedge import smtpline
from smtpedge.errors import ReplySyntaxError, SMTPSyntaxError

V = load_vectors("smtpline")


def _fields(c: smtpline.Command) -> dict[str, Any]:
    return {
        "verb": c.verb,
        "argument": c.argument,
        "path": [c.path.local_part, c.path.domain] if c.path else None,
        "params": [list(p) for p in c.params],
        "chunk_size": c.chunk_size,
        "last": c.last,
    }


@pytest.mark.parametrize("case", V["commands"], ids=[c["line"][:40] for c in V["commands"]])
def test_command(case: dict[str, Any]) -> None:
    line = raw(case["line"])
    utf8 = case.get("smtputf8", False)
    if "command" in case:
        assert _fields(smtpline.parse_command(line, smtputf8=utf8)) == case["command"]
    else:
        with pytest.raises(SMTPSyntaxError) as err:
            smtpline.parse_command(line, smtputf8=utf8)
        e = err.value
        assert [e.code, e.status, e.offset] == case["error"]
        assert e.text == case["text"]
        assert e.reply == f"{e.code} {e.status} {e.text}\r\n".encode()


@pytest.mark.parametrize("case", V["replies"], ids=[c["line"][:30] for c in V["replies"]])
def test_reply(case: dict[str, Any]) -> None:
    line = raw(case["line"])
    if "reply" in case:
        r = smtpline.parse_reply(line)
        assert [r.code, r.last, r.status, r.text] == case["reply"]
    else:
        with pytest.raises(ReplySyntaxError) as err:
            smtpline.parse_reply(line)
        assert (err.value.offset, err.value.reason) == (case["error"], case["text"])


def test_path_helpers() -> None:
    null = smtpline.parse_command(b"MAIL FROM:<>").path
    assert null is not None and null.is_null and null.mailbox == ""
    pm = smtpline.parse_command(b"RCPT TO:<POSTMASTER>").path
    assert pm is not None and not pm.is_null and pm.mailbox == "POSTMASTER"
    p = smtpline.parse_command(b'RCPT TO:<"a b"@[IPv6:::1]>').path
    assert p is not None and p.mailbox == '"a b"@[IPv6:::1]'


def test_values_are_byte_exact_and_keywords_upper() -> None:
    c = smtpline.parse_command(b"MAIL FROM:<a@b> envid=aBc+2Bq ret=Full x-Custom")
    assert c.params == (("ENVID", "aBc+2Bq"), ("RET", "Full"), ("X-CUSTOM", None))


def test_max_length_is_configurable() -> None:
    line = b"NOOP " + b"x" * 600 + b"\r\n"
    assert smtpline.parse_command(line).verb == "NOOP"
    with pytest.raises(SMTPSyntaxError) as err:
        smtpline.parse_command(line, max_length=512)
    assert err.value.code == 500


def test_every_verb_is_known() -> None:
    args = {"EHLO": " x", "HELO": " x", "MAIL": " FROM:<>", "RCPT": " TO:<a@b>", "BDAT": " 1",
            "VRFY": " a", "EXPN": " a", "AUTH": " PLAIN"}  # fmt: skip
    for verb in smtpline.VERBS:
        line = (verb.lower() + args.get(verb, "")).encode()
        assert smtpline.parse_command(line).verb == verb


def test_command_value_semantics() -> None:
    a = smtpline.parse_command(b"RCPT TO:<a@b> NOTIFY=NEVER")
    b = smtpline.parse_command(b"rcpt to:<a@b> NOTIFY=NEVER")
    assert a.path == b.path and hash(a.path) == hash(b.path)
    assert a != b  # the argument differs
    assert repr(a.path) == "Path(local_part='a', domain='b')"
    assert (
        repr(smtpline.parse_reply(b"250 ok"))
        == "Reply(code=250, last=True, status=None, text='ok')"
    )
