"""Rust and pure Python must agree on every input: hypothesis generates valid,
mutated and random inputs for each hot path and compares the two backends
(result repr, or exception class and attributes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from smtpedge import _native, _pure


def outcome(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, ...]:
    try:
        result = fn(*args, **kwargs)
    except Exception as exc:
        return ("raise", type(exc), str(exc), sorted(vars(exc).items()))
    return ("ok", repr(result))


def same(name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
    r = outcome(getattr(_native, name), *args, **kwargs)
    p = outcome(getattr(_pure, name), *args, **kwargs)
    assert r == p, (name, args, kwargs)
    return r


# --- PROXY -------------------------------------------------------------------

ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ipv6 = st.lists(st.integers(0, 0xFFFF), min_size=8, max_size=8).map(
    lambda w: ":".join(f"{x:x}" for x in w)
)
ipv6_text = st.one_of(
    ipv6, st.sampled_from(["::", "::1", "2001:db8::1", "::ffff:1.2.3.4", "1::", "fe80::1:0:0:1"])
)
port = st.integers(0, 65535)
tlv = st.tuples(
    st.sampled_from([0x01, 0x02, 0x03, 0x04, 0x05, 0x20, 0x30, 0xE0, 0xEF]),
    st.binary(max_size=40),
)


@st.composite
def built_headers(draw: st.DrawFn) -> bytes:
    version = draw(st.sampled_from([1, 2]))
    fam = draw(st.sampled_from(["v4", "v6", "unix", "none"]))
    if fam == "v4":
        ends: tuple[Any, Any] | tuple[None, None] = (
            (draw(ipv4), draw(port)),
            (draw(ipv4), draw(port)),
        )
    elif fam == "v6":
        ends = ((draw(ipv6_text), draw(port)), (draw(ipv6_text), draw(port)))
    elif fam == "unix" and version == 2:
        ends = (("/run/" + draw(st.text("abc.", max_size=20)), None), ("/x", None))
    else:
        ends = (None, None)
    if version == 1:
        return bytes(_pure.build_header(1, "PROXY", *ends))
    ssl = st.builds(
        lambda c, v, subs: (0x20, bytes([c]) + v.to_bytes(4, "big") + subs),
        st.integers(0, 7),
        st.integers(0, 2**32 - 1),
        st.lists(st.tuples(st.integers(0x21, 0x28), st.binary(max_size=12)), max_size=4).map(
            lambda ts: b"".join(bytes([k]) + len(v).to_bytes(2, "big") + v for k, v in ts)
        ),
    )
    tlvs = draw(st.lists(st.one_of(tlv, ssl), max_size=5))
    return bytes(
        _pure.build_header(
            2,
            draw(st.sampled_from(["PROXY", "LOCAL"])),
            *ends,
            protocol=draw(st.sampled_from(["STREAM", "DGRAM", "UNSPEC"])),
            tlvs=tlvs,
            crc32c=draw(st.booleans()),
        )
    )


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "extend"]))
        if not data and op != "extend":
            op = "extend"
        if op == "extend":
            data += draw(st.binary(max_size=20))
            continue
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0, 0x0A, 0x0D, 0x20, 0x30, 0x3A, 0x2E, 0xFF, 0x21]))
        elif op == "cut":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        else:
            del data[i]
    return bytes(data)


proxy_inputs = st.one_of(
    built_headers(),
    mutated(built_headers()),
    st.binary(max_size=120),
    st.binary(max_size=60).map(lambda b: b"PROXY " + b),
    st.binary(max_size=60).map(lambda b: _pure.proxy.V2_SIGNATURE + b),
)


@given(proxy_inputs, st.sampled_from([16, 64, 4096, 70000]))
def test_parse_header_agrees(data: bytes, max_length: int) -> None:
    kind = same("parse_header", data, max_length=max_length)
    if kind[0] == "ok":
        r = _native.parse_header(data, max_length=max_length)
        p = _pure.parse_header(data, max_length=max_length)
        for attr in ("alpn", "authority", "unique_id", "netns"):
            assert getattr(r, attr) == getattr(p, attr)
        assert repr(r.ssl) == repr(p.ssl)
        if r.ssl is not None and p.ssl is not None:
            for attr in (
                "version",
                "cn",
                "cipher",
                "sig_alg",
                "key_alg",
                "group",
                "sig_scheme",
                "client_cert",
            ):
                assert getattr(r.ssl, attr) == getattr(p.ssl, attr)
        assert data[: r.consumed] and r.consumed <= len(data)


endpoint = st.one_of(
    st.none(),
    st.tuples(
        st.one_of(ipv4, ipv6_text, st.text("0123456789.:abcdef", max_size=12)),
        st.integers(-2, 70000),
    ),
    st.tuples(st.text(max_size=110), st.none()),
)


@given(
    st.integers(0, 3),
    st.sampled_from(["PROXY", "LOCAL", "proxy"]),
    endpoint,
    endpoint,
    st.sampled_from(["STREAM", "DGRAM", "UNSPEC", "TCP"]),
    st.lists(st.tuples(st.integers(-1, 256), st.binary(max_size=8)), max_size=3),
    st.booleans(),
)
def test_build_header_agrees(
    version: int, command: str, src: Any, dst: Any, protocol: str, tlvs: Any, crc: bool
) -> None:
    kind = same(
        "build_header", version, command, src, dst, protocol=protocol, tlvs=tlvs, crc32c=crc
    )
    if kind[0] == "ok":
        built = _native.build_header(
            version, command, src, dst, protocol=protocol, tlvs=tlvs, crc32c=crc
        )
        if all(0 <= k <= 255 and k != 3 for k, _ in tlvs):
            same("parse_header", built, max_length=70000)


@given(st.binary(max_size=300))
def test_crc32c_agrees(data: bytes) -> None:
    same("crc32c", data)


# --- SMTP lines --------------------------------------------------------------

line_alphabet = st.sampled_from(
    [
        *(b"MAIL", b"RCPT", b"FROM:", b"TO:", b"<", b">", b"@", b"a", b"Z", b"9", b".", b"-"),
        *(b" ", b"  ", b'"', b"\\", b"[", b"]", b"IPv6:", b"::1", b"1.2.3.4", b"=", b"SIZE"),
        *(b",", b":", b"\r\n", b"\n", b"\xc3\xa9", b"\xff", b"\x00", b"Postmaster", b"BDAT"),
        *(b"LAST", b"DATA", b"EHLO", b"NOOP", b"x" * 70),
    ]
)
smtp_lines = st.one_of(
    st.lists(line_alphabet, max_size=20).map(b"".join),
    st.binary(max_size=80),
    st.tuples(
        st.sampled_from([b"MAIL FROM:", b"RCPT TO:", b"mail from: "]),
        st.lists(line_alphabet, max_size=14).map(b"".join),
    ).map(b"".join),
)


@given(smtp_lines, st.booleans(), st.sampled_from([20, 512, 2048]))
def test_parse_command_agrees(line: bytes, smtputf8: bool, max_length: int) -> None:
    same("parse_command", line, smtputf8=smtputf8, max_length=max_length)


reply_lines = st.one_of(
    st.binary(max_size=40),
    st.tuples(
        st.sampled_from([b"250", b"354", b"421", b"550", b"199", b"2"]),
        st.sampled_from([b" ", b"-", b"", b"_"]),
        st.sampled_from([b"", b"2.1.0 ", b"5.7.1", b"4.12.345 x", b"5.1.", b"ok"]),
        st.binary(max_size=20),
    ).map(b"".join),
)


@given(reply_lines)
def test_parse_reply_agrees(line: bytes) -> None:
    same("parse_reply", line)


# --- DATA --------------------------------------------------------------------

data_pieces = st.sampled_from(
    [
        b"a",
        b"bc",
        b".",
        b"..",
        b"\r",
        b"\n",
        b"\r\n",
        b"\r\n.\r\n",
        b"\n.\n",
        b"\r.\r",
        b"\n.\r\n",
        b"x" * 30,
    ]
)


@given(
    st.lists(data_pieces, max_size=40).map(b"".join),
    st.lists(st.integers(1, 8), max_size=20),
    st.one_of(st.none(), st.integers(0, 60)),
    st.sampled_from(["reject", "normalize"]),
)
def test_data_scanner_agrees(
    stream: bytes, cuts: list[int], max_size: int | None, policy: str
) -> None:
    r = _native.DataScanner(max_size, bare_newline=policy)
    p = _pure.DataScanner(max_size, bare_newline=policy)
    i = 0
    sizes = [*cuts, len(stream) + 1]
    for n in sizes:
        chunk = stream[i : i + n]
        i += n
        a, b = outcome(r.feed, chunk), outcome(p.feed, chunk)
        assert a == b
        state_r = (r.done, r.size, r.consumed, r.remainder, outcome(lambda: r.error))
        state_p = (p.done, p.size, p.consumed, p.remainder, outcome(lambda: p.error))
        assert state_r == state_p
        if r.done or i >= len(stream):
            break


@given(st.lists(data_pieces, max_size=40).map(b"".join))
def test_dot_stuff_agrees_and_round_trips(content: bytes) -> None:
    same("dot_stuff", content)
    wire = _native.dot_stuff(content)
    s = _native.DataScanner(bare_newline="normalize")
    back = s.feed(wire)
    assert s.done and s.remainder == b"" and _native.dot_stuff(back) == wire


# --- xtext -------------------------------------------------------------------


@given(st.binary(max_size=200))
def test_xtext_encode_agrees(data: bytes) -> None:
    same("xtext_encode", data)
    assert _native.xtext_decode(_native.xtext_encode(data)) == data


@given(st.one_of(st.text(max_size=30), st.text("+0123456789ABCDEFabc =!~", max_size=30)))
def test_xtext_decode_agrees(text: str) -> None:
    same("xtext_decode", text)


@given(st.text(max_size=30), st.booleans())
def test_utf8_addr_agrees(address: str, unitext: bool) -> None:
    enc = same("utf8_addr_encode", address, unitext=unitext)
    if address and "\x00" not in address:
        assert (
            _native.utf8_addr_decode(_native.utf8_addr_encode(address, unitext=unitext)) == address
        )
    assert enc[0] == "ok"


@given(
    st.one_of(
        st.text(max_size=30),
        st.lists(
            st.sampled_from(
                [
                    "\\x{",
                    "}",
                    "F6",
                    "0",
                    "D800",
                    "1F600",
                    "10FFFF",
                    "110000",
                    "2B",
                    "41",
                    "a",
                    "+",
                    "\u00e9",
                ]
            ),
            max_size=8,
        ).map("".join),
    )
)
def test_utf8_addr_decode_agrees(text: str) -> None:
    same("utf8_addr_decode", text)


# --- certificate names -------------------------------------------------------

labels = st.sampled_from(
    [
        "*",
        "mx",
        "MX",
        "example",
        "com",
        "xn--bcher-kva",
        "b\u00fccher",
        "f*",
        "",
        "a_b",
        "1",
        "192",
        "0",
        "\u00e9\u200d",
        "*x",
    ]
)
names = (
    st.lists(labels, min_size=0, max_size=5)
    .map(".".join)
    .flatmap(lambda n: st.sampled_from([n, n + ".", "[" + n + "]"]))
)


@given(names, names)
def test_match_hostname_agrees(pattern: str, hostname: str) -> None:
    same("match_hostname", pattern, hostname)


@given(
    st.lists(names, max_size=3),
    st.lists(names, max_size=2),
    st.lists(st.one_of(ipv4, ipv6_text, st.binary(min_size=3, max_size=17)), max_size=3),
    st.one_of(names, ipv4, ipv6_text, ipv6_text.map(lambda s: f"[{s}]")),
)
def test_verify_names_agrees(
    dns: list[str], cns: list[str], ips: list[Any], reference: str
) -> None:
    same("verify_names", dns, cns, ips, reference)


# --- argument types ------------------------------------------------------------

WRONG = ["text", b"bytes", memoryview(b"view"), 12, None, ["list"]]
CALLS: list[tuple[str, Callable[[Any, Any], Any]]] = [
    ("parse_header", lambda m, v: m.parse_header(v)),
    ("parse_command", lambda m, v: m.parse_command(v)),
    ("parse_reply", lambda m, v: m.parse_reply(v)),
    ("dot_stuff", lambda m, v: m.dot_stuff(v)),
    ("feed", lambda m, v: m.DataScanner().feed(v)),
    ("crc32c", lambda m, v: m.crc32c(v)),
    ("xtext_encode", lambda m, v: m.xtext_encode(v)),
    ("xtext_decode", lambda m, v: m.xtext_decode(v)),
    ("utf8_addr_encode", lambda m, v: m.utf8_addr_encode(v)),
    ("utf8_addr_decode", lambda m, v: m.utf8_addr_decode(v)),
    ("match_hostname", lambda m, v: m.match_hostname(v, "a.example")),
    ("verify_names", lambda m, v: m.verify_names([v], [], [], "a.example")),
    ("verify_names seq", lambda m, v: m.verify_names(v, [], [], "a.example")),
    ("verify_names ips", lambda m, v: m.verify_names([], [], v, "192.0.2.1")),
]


def test_argument_types_agree() -> None:
    """Both backends accept and refuse the same argument types."""
    for name, call in CALLS:
        for value in WRONG:
            r = outcome(call, _native, value)
            p = outcome(call, _pure, value)
            assert r[0] == p[0], (name, value, r, p)
            if r[0] == "raise":
                assert r[1] is p[1], (name, value, r, p)


# --- the shared host table ---------------------------------------------------

table_hosts = st.sampled_from(
    ["192.0.2.1", "192.0.2.2", "::ffff:192.0.2.1", "2001:db8::1", "2001:db8::2", "fe80::1%eth0",
     "fe80::1", "10.0.0.7", "not-an-address", "[unknown]", ""]
) | ipv4  # fmt: skip
table_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("update"),
            table_hosts,
            st.integers(-3, 3),
            st.floats(0, 1e6, allow_nan=False),
            st.integers(0, 2),
        ),
        st.tuples(st.just("get"), table_hosts),
        st.tuples(st.just("forget"), st.integers(-1, 3)),
        st.tuples(st.just("worker"), st.integers(-1, 3)),
    ),
    max_size=150,
)


def _table_run(m: Any, ops: list[tuple[Any, ...]]) -> list[Any]:
    t = m.SharedHostTable(slots=64, workers=3)
    out: list[Any] = [t.slots, t.workers, t.worker]
    for i, op in enumerate(ops):
        if op[0] == "update":
            _, host, delta, rate, worker = op
            t.worker = worker
            with t.lock:
                # Distinct times: which entries a compaction keeps is then fixed.
                t.update(host, delta, rate, float(i))
        elif op[0] == "get":
            out.append(outcome(t.get, op[1]))
        elif op[0] == "forget":
            out.append(outcome(t.forget_worker, op[1]))
        else:
            out.append(outcome(setattr, t, "worker", op[1]))
    return out + [t.get(h) for h in ("192.0.2.1", "2001:db8::1", "not-an-address")]


@given(table_ops)
def test_shared_host_table_agrees(ops: list[tuple[Any, ...]]) -> None:
    assert _table_run(_native, ops) == _table_run(_pure, ops)


def test_shared_host_table_errors_agree() -> None:
    for slots, workers in ((0, 1), (63, 1), (-64, 1), (64, 0), (64, 1025)):
        r = outcome(_native.SharedHostTable, slots, workers)
        p = outcome(_pure.SharedHostTable, slots, workers)
        assert r[:3] == p[:3] and r[0] == "raise", (slots, workers, r, p)

    def nested(m: Any) -> tuple[Any, ...]:
        t = m.SharedHostTable(slots=64)
        with t.lock:
            return outcome(t.lock.__enter__)

    r, p = nested(_native), nested(_pure)
    assert r[:3] == p[:3] == ("raise", RuntimeError, "the host table lock is already held")
