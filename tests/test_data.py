"""The DATA scanner: vectors (smuggling payloads included), three ways of
feeding, 10 MB messages in random chunks, and dot_stuff round trips."""

from __future__ import annotations

import random
from typing import Any

import pytest

from conftest import load_vectors, raw
from smtpedge import data
from smtpedge.errors import DataError

CASES = load_vectors("data")["cases"]


def _scan(chunks: list[bytes], case: dict[str, Any]) -> tuple[bytes, data.DataScanner]:
    s = data.DataScanner(case.get("max_size"), bare_newline=case.get("policy", "reject"))
    out = b""
    for c in chunks:
        out += s.feed(c)
        if s.done:
            break
    return out, s


def _check(case: dict[str, Any], chunks: list[bytes], tail_fed: bytes = b"") -> None:
    out, s = _scan(chunks, case)
    assert out == raw(case["content"])
    assert s.done is case["done"]
    if case["done"]:
        assert s.remainder == raw(case["remainder"]) + tail_fed
    err = s.error
    if case["error"] is None:
        assert err is None
    else:
        assert isinstance(err, DataError)
        assert [err.code, err.status, err.offset] == case["error"]
        assert err.reply.startswith(f"{err.code} {err.status} ".encode())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector_as_given(case: dict[str, Any]) -> None:
    _check(case, [raw(c) for c in case["chunks"]])


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector_whole(case: dict[str, Any]) -> None:
    whole = b"".join(raw(c) for c in case["chunks"])
    out, s = _scan([whole], case)
    assert out == raw(case["content"])
    assert s.done is case["done"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector_byte_at_a_time(case: dict[str, Any]) -> None:
    whole = b"".join(raw(c) for c in case["chunks"])
    s = data.DataScanner(case.get("max_size"), bare_newline=case.get("policy", "reject"))
    out = b""
    fed = 0
    for b in whole:
        out += s.feed(bytes([b]))
        fed += 1
        if s.done:
            break
    assert out == raw(case["content"])
    assert s.done is case["done"]
    if s.done:
        assert s.consumed == fed
        assert s.remainder == b""


@pytest.mark.parametrize("case", [c for c in CASES if c["done"]], ids=lambda c: c["name"])
def test_trailing_bytes_untouched(case: dict[str, Any]) -> None:
    tail = b"MAIL FROM:<x@y>\r\n\r\n.\r\n"
    whole = b"".join(raw(c) for c in case["chunks"])
    s = data.DataScanner(case.get("max_size"), bare_newline=case.get("policy", "reject"))
    s.feed(whole + tail)
    assert s.done
    assert whole[s.consumed :] + tail == s.remainder


def test_feed_after_done_is_an_error() -> None:
    s = data.DataScanner()
    s.feed(b".\r\n")
    with pytest.raises(ValueError, match="already seen the end of data"):
        s.feed(b"x")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="bare_newline must be"):
        data.DataScanner(bare_newline="allow")
    with pytest.raises(ValueError, match="must not be negative"):
        data.DataScanner(-1)


def _random_message(rng: random.Random, size: int) -> bytes:
    lines = []
    total = 0
    while total < size:
        n = rng.randrange(0, 200)
        line = bytes(rng.choice(b"abc .\t\x80\xff") for _ in range(n))
        if rng.random() < 0.2:
            line = b"." + line
        lines.append(line)
        total += len(line) + 2
    return b"\r\n".join(lines) + b"\r\n"


@pytest.mark.parametrize("seed", [1, 2])
def test_ten_megabytes_in_random_chunks(seed: int) -> None:
    rng = random.Random(seed)
    message = _random_message(rng, 10_000_000)
    wire = data.dot_stuff(message) + b"QUIT\r\n"
    s = data.DataScanner(max_size=20_000_000)
    parts = []
    i = 0
    while not s.done:
        n = rng.choice((1, 2, 3, 7, 512, 4096, 65536, rng.randrange(1, 300_000)))
        parts.append(s.feed(wire[i : i + n]))
        i += n
    assert s.error is None
    assert b"".join(parts) == message
    assert s.size == len(message)
    assert s.consumed == len(wire) - len(b"QUIT\r\n")
    assert wire[s.consumed :] == b"QUIT\r\n"


def test_size_limit_keeps_reading_to_the_terminator() -> None:
    s = data.DataScanner(max_size=1000)
    body = s.feed(b"x" * 5000 + b"\r\n")
    body += s.feed(b".\r\nRSET\r\n")
    assert s.done and s.remainder == b"RSET\r\n"
    assert len(body) <= 1000
    assert s.size == 5002
    assert s.error is not None and s.error.code == 552


@pytest.mark.parametrize(
    ("content", "wire"),
    [
        (b"", b".\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b".\r\n.", b"..\r\n..\r\n.\r\n"),
        (b"a\nb\rc\r\n", b"a\r\nb\r\nc\r\n.\r\n"),
        (b"\r\n\r\n", b"\r\n\r\n.\r\n"),
        (b"x\n.", b"x\r\n..\r\n.\r\n"),
    ],
)
def test_dot_stuff(content: bytes, wire: bytes) -> None:
    assert data.dot_stuff(content) == wire
    s = data.DataScanner()
    back = s.feed(wire)
    assert s.done and s.error is None and s.remainder == b""
    assert data.dot_stuff(back) == wire
