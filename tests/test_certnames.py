"""RFC 6125 name matching with Exim's wildcard rule."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import load_vectors
from smtpedge import certnames

V = load_vectors("certnames")


@pytest.mark.parametrize("case", V["match"], ids=[f"{c[0]!r}-{c[1]!r}" for c in V["match"]])
def test_match(case: list[Any]) -> None:
    pattern, reference, want = case
    assert certnames.match_hostname(pattern, reference) is want


@pytest.mark.parametrize("case", V["verify"], ids=[c["reference"] for c in V["verify"]])
def test_verify(case: dict[str, Any]) -> None:
    got = certnames.verify_names(case["dns"], case["cn"], case["ip"], case["reference"])
    assert got is case["ok"]


def test_raw_ip_bytes() -> None:
    assert certnames.verify_names([], [], [bytes([192, 0, 2, 1])], "192.0.2.1")
    assert not certnames.verify_names([], [], [bytes([192, 0, 2, 1, 0])], "192.0.2.1")
    v6 = bytes.fromhex("20010db8000000000000000000000001")
    assert certnames.verify_names([], [], [v6], "2001:db8::1")


def test_invalid_idn_never_matches() -> None:
    assert not certnames.match_hostname("mx.example.com", "mx.exa\u200dmple.com")
    assert not certnames.verify_names(["*.example.com"], [], [], "\u00e9\u200d.example.com")


def test_type_errors() -> None:
    with pytest.raises(TypeError):
        certnames.verify_names([], [], [1234], "a.example")  # type: ignore[list-item]
