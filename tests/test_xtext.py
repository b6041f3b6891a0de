"""xtext (RFC 3461) and utf-8-addr-xtext/unitext (RFC 6533)."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import load_vectors, raw
from smtpedge import xtext
from smtpedge.errors import XtextError

V = load_vectors("xtext")


@pytest.mark.parametrize("case", V["xtext"], ids=[c["encoded"] or "empty" for c in V["xtext"]])
def test_xtext(case: dict[str, Any]) -> None:
    assert xtext.encode(raw(case["decoded"])) == case["encoded"]
    assert xtext.decode(case["encoded"]) == raw(case["decoded"])


@pytest.mark.parametrize("case", V["xtext_errors"], ids=[c["encoded"] for c in V["xtext_errors"]])
def test_xtext_errors(case: dict[str, Any]) -> None:
    with pytest.raises(XtextError) as err:
        xtext.decode(case["encoded"])
    assert (err.value.reason, err.value.offset) == (case["text"], case["offset"])
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("case", V["utf8_addr"], ids=[c["xtext"] for c in V["utf8_addr"]])
def test_utf8_addr(case: dict[str, Any]) -> None:
    assert xtext.encode_utf8_addr(case["address"]) == case["xtext"]
    assert xtext.encode_utf8_addr(case["address"], unitext=True) == case["unitext"]
    assert xtext.decode_utf8_addr(case["xtext"]) == case["address"]
    assert xtext.decode_utf8_addr(case["unitext"]) == case["address"]
    assert xtext.encode_utf8_addr(case["address"]).isascii()


@pytest.mark.parametrize(
    "case", V["utf8_addr_errors"], ids=[c["encoded"] for c in V["utf8_addr_errors"]]
)
def test_utf8_addr_errors(case: dict[str, Any]) -> None:
    with pytest.raises(XtextError) as err:
        xtext.decode_utf8_addr(case["encoded"])
    assert (err.value.reason, err.value.offset) == (case["text"], case["offset"])


def test_all_bytes_round_trip() -> None:
    every = bytes(range(256))
    enc = xtext.encode(every)
    assert enc.isascii() and " " not in enc and "=" not in enc
    assert xtext.decode(enc) == every
