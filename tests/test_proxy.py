"""PROXY protocol: spec vectors, every reader three ways, the builder."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from conftest import load_vectors, raw
from smtpedge import proxy
from smtpedge.errors import IncompleteHeader, ProxyProtocolError

CASES = load_vectors("proxy")["cases"]


def _input(case: dict[str, Any]) -> bytes:
    return bytes.fromhex(case["hex"]) if "hex" in case else raw(case["input"])


def _fields(h: proxy.ProxyHeader) -> dict[str, Any]:
    return {
        "version": h.version,
        "command": h.command,
        "family": h.family,
        "protocol": h.protocol,
        "source": list(h.source) if h.source else None,
        "destination": list(h.destination) if h.destination else None,
        "tlvs": [[k, v.hex()] for k, v in h.tlvs],
        "crc32c": h.crc32c,
        "consumed": h.consumed,
    }


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector(case: dict[str, Any]) -> None:
    data = _input(case)
    kw = {"max_length": case["max_length"]} if "max_length" in case else {}
    if "header" in case:
        assert _fields(proxy.parse_header(data, **kw)) == case["header"]
    elif "incomplete" in case:
        with pytest.raises(IncompleteHeader) as inc:
            proxy.parse_header(data, **kw)
        assert inc.value.needed == case["incomplete"]
    else:
        with pytest.raises(ProxyProtocolError) as err:
            proxy.parse_header(data, **kw)
        assert (err.value.reason, err.value.offset) == (case["error"], case["offset"])
        assert isinstance(err.value, ValueError)


VALID = [c for c in CASES if "header" in c]


@pytest.mark.parametrize("case", VALID, ids=[c["name"] for c in VALID])
def test_one_byte_at_a_time(case: dict[str, Any]) -> None:
    """A reader that feeds one byte at a time sees IncompleteHeader with a
    truthful `needed` until the header is whole, and never reads past it."""
    data = _input(case)
    consumed = case["header"]["consumed"]
    buf = b""
    for i, b in enumerate(data[:consumed]):
        buf += bytes([b])
        if i + 1 < consumed:
            with pytest.raises(IncompleteHeader) as inc:
                proxy.parse_header(buf)
            assert 1 <= inc.value.needed <= consumed - len(buf)
    assert _fields(proxy.parse_header(buf)) == case["header"]


@pytest.mark.parametrize("case", VALID, ids=[c["name"] for c in VALID])
def test_trailing_bytes_untouched(case: dict[str, Any]) -> None:
    data = _input(case)
    consumed = case["header"]["consumed"]
    header = data[:consumed]
    for tail in (
        b"EHLO x\r\n",
        b"\r\n\r\n\0\r\nQUIT\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        bytes(300),
    ):
        h = proxy.parse_header(header + tail)
        assert h.consumed == consumed
        assert (header + tail)[h.consumed :] == tail


def test_typed_accessors() -> None:
    cert = b"0\x82\x01\x00fake-der"
    data = proxy.build_header(
        2,
        "PROXY",
        ("2001:db8::10", 40000),
        ("2001:db8::25", 25),
        tlvs=[
            (proxy.PP2_TYPE_ALPN, b"smtp"),
            (proxy.PP2_TYPE_AUTHORITY, "mx.b\u00fccher.example".encode()),
            (proxy.PP2_TYPE_UNIQUE_ID, b"\x01\x02"),
            (proxy.PP2_TYPE_NETNS, b"blue"),
            proxy.ssl_tlv(
                client=proxy.PP2_CLIENT_SSL | proxy.PP2_CLIENT_CERT_CONN,
                verify=0,
                version="TLSv1.3",
                cn="client.example",
                cipher="TLS_AES_256_GCM_SHA384",
                sig_alg="SHA256",
                key_alg="RSA2048",
                group="X25519",
                sig_scheme="rsa_pss_rsae_sha256",
                client_cert=cert,
            ),
        ],
        crc32c=True,
    )
    h = proxy.parse_header(data)
    assert h.crc32c is True
    assert (h.alpn, h.authority, h.unique_id, h.netns) == (
        b"smtp",
        "mx.b\u00fccher.example",
        b"\x01\x02",
        "blue",
    )
    ssl = h.ssl
    assert ssl is not None
    assert (ssl.client, ssl.verify) == (3, 0)
    assert (ssl.version, ssl.cn, ssl.cipher, ssl.sig_alg, ssl.key_alg) == (
        "TLSv1.3",
        "client.example",
        "TLS_AES_256_GCM_SHA384",
        "SHA256",
        "RSA2048",
    )
    assert (ssl.group, ssl.sig_scheme, ssl.client_cert) == ("X25519", "rsa_pss_rsae_sha256", cert)
    plain = proxy.parse_header(proxy.build_header(2, "PROXY", ("1.2.3.4", 1), ("5.6.7.8", 2)))
    assert (plain.alpn, plain.authority, plain.unique_id, plain.netns, plain.ssl) == (None,) * 5
    assert plain.crc32c is False


def test_crc32c_detects_every_single_bit_flip() -> None:
    data = proxy.build_header(
        2, "PROXY", ("192.0.2.1", 1), ("192.0.2.2", 25), tlvs=[(0xE0, b"app")], crc32c=True
    )
    # Flip bits only in the address and TLV area, where a flip keeps the
    # structure valid and only the checksum can notice.
    for i in range(16, 28):
        for bit in range(8):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises(ProxyProtocolError, match="CRC32C checksum mismatch"):
                proxy.parse_header(bytes(bad))


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((1, "PROXY", ("192.0.2.1", 5), ("192.0.2.2", 25)), {}),
        ((1, "PROXY", ("2001:db8::1", 5), ("::1", 25)), {}),
        ((1, "PROXY"), {}),
        ((2, "PROXY", ("192.0.2.1", 5), ("192.0.2.2", 25)), {"protocol": "DGRAM"}),
        ((2, "LOCAL"), {}),
        ((2, "PROXY"), {}),
        ((2, "PROXY", ("/var/run/a", None), ("/var/run/b", None)), {"tlvs": [(0xE1, b"x" * 300)]}),
        ((2, "PROXY", ("::ffff:1.2.3.4", 0), ("::", 65535)), {"crc32c": True}),
    ],
)
def test_build_parses_back(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    built = proxy.build_header(*args, **kwargs)
    h = proxy.parse_header(built + b"tail")
    assert h.consumed == len(built)
    assert h.version == args[0]
    assert h.command == args[1]
    if len(args) > 2 and args[1] == "PROXY":
        assert h.source == args[2] or h.source == (args[2][0].lower(), args[2][1])
        assert h.destination is not None
    else:
        assert h.source is None and h.destination is None
    assert [t for t in h.tlvs if t[0] != proxy.PP2_TYPE_CRC32C] == list(kwargs.get("tlvs", []))
    assert h.crc32c is bool(kwargs.get("crc32c"))


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((3,), {}, "version must be 1 or 2, not 3"),
        ((1, "LOCAL"), {}, "version 1 has no LOCAL command"),
        ((1, "PROXY"), {"tlvs": [(1, b"x")]}, "version 1 carries no TLVs"),
        (
            (1, "PROXY", ("/a", None), ("/b", None)),
            {},
            "version 1 carries only TCP over IPv4 or IPv6",
        ),
        ((2, "PROXY", ("1.2.3.4", 1), ("::1", 2)), {}, "different address families"),
        ((2, "PROXY", ("1.2.3.4", 1), None), {}, "give both source and destination"),
        ((2, "PROXY", ("1.2.3.04", 1), ("1.2.3.5", 2)), {}, "invalid IP address '1.2.3.04'"),
        (
            (2, "PROXY", ("1.2.3.4", 70000), ("1.2.3.5", 2)),
            {},
            "port 70000 is out of range 0-65535",
        ),
        ((2, "HELLO"), {}, "command must be 'PROXY' or 'LOCAL', not 'HELLO'"),
        ((2, "PROXY"), {"protocol": "SCTP"}, "protocol must be"),
        ((2, "PROXY"), {"tlvs": [(256, b"")]}, "TLV type 256 is out of range 0-255"),
        ((2, "PROXY"), {"tlvs": [(1, bytes(65536))]}, "exceeds 65535"),
        ((2, "PROXY", ("/" + "a" * 107, None), ("/b", None)), {}, "at most 107 bytes"),
    ],
)
def test_build_errors(args: tuple[Any, ...], kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        proxy.build_header(*args, **kwargs)


def test_errors_pickle_and_render() -> None:
    with pytest.raises(ProxyProtocolError) as err:
        proxy.parse_header(b"GET / HTTP/1.1\r\n")
    assert str(err.value) == "not a PROXY protocol header (at byte 0)"
    again = pickle.loads(pickle.dumps(err.value))
    assert (again.reason, again.offset) == (err.value.reason, err.value.offset)
    with pytest.raises(IncompleteHeader) as inc:
        proxy.parse_header(b"")
    assert pickle.loads(pickle.dumps(inc.value)).needed == 15


def test_header_value_semantics() -> None:
    data = proxy.build_header(2, "PROXY", ("192.0.2.1", 1), ("192.0.2.2", 25), tlvs=[(1, b"h2")])
    a, b = proxy.parse_header(data), proxy.parse_header(data)
    assert a == b and hash(a) == hash(b)
    assert a != proxy.parse_header(b"PROXY UNKNOWN\r\n")
    assert repr(a).startswith("ProxyHeader(version=2, command='PROXY', family='INET'")
    assert "tlvs=((1, b'h2'),)" in repr(a)


def test_accepts_bytearray_and_rejects_str() -> None:
    h = proxy.parse_header(bytearray(b"PROXY UNKNOWN\r\n"))
    assert h.consumed == 15
    with pytest.raises(TypeError):
        proxy.parse_header("PROXY UNKNOWN\r\n")  # type: ignore[arg-type]
