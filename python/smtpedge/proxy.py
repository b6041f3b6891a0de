"""PROXY protocol v1 and v2 (HAProxy's proxy-protocol.txt).

``parse_header(data)`` reads one header at the start of ``data`` and never past
it (``ProxyHeader.consumed``); a valid prefix raises ``IncompleteHeader`` with
``needed``, anything else ``ProxyProtocolError``. ``build_header`` makes headers
for clients and tests. Both run in Rust or pure Python (see ``smtpedge.BACKEND``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from smtpedge._backend import impl as _impl
from smtpedge._pure.proxy import (
    DEFAULT_MAX_LENGTH,
    PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_CLIENT_CERT,
    PP2_SUBTYPE_SSL_CN,
    PP2_SUBTYPE_SSL_GROUP,
    PP2_SUBTYPE_SSL_KEY_ALG,
    PP2_SUBTYPE_SSL_SIG_ALG,
    PP2_SUBTYPE_SSL_SIG_SCHEME,
    PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NETNS,
    PP2_TYPE_NOOP,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
    V2_SIGNATURE,
)
from smtpedge.errors import IncompleteHeader, ProxyProtocolError

if TYPE_CHECKING:
    from smtpedge._pure.proxy import ProxyHeader, SSLInfo, build_header, parse_header
else:
    ProxyHeader = _impl.ProxyHeader
    SSLInfo = _impl.SSLInfo
    build_header = _impl.build_header
    parse_header = _impl.parse_header

# PP2_CLIENT_* flags of the SSL TLV.
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04


def ssl_tlv(
    *,
    client: int = PP2_CLIENT_SSL,
    verify: int = 0,
    version: str | None = None,
    cn: str | None = None,
    cipher: str | None = None,
    sig_alg: str | None = None,
    key_alg: str | None = None,
    group: str | None = None,
    sig_scheme: str | None = None,
    client_cert: bytes | None = None,
) -> tuple[int, bytes]:
    """A PP2_TYPE_SSL TLV for ``build_header(tlvs=...)``."""
    body = bytearray([client & 0xFF]) + verify.to_bytes(4, "big")
    subs: list[tuple[int, bytes | None]] = [
        (PP2_SUBTYPE_SSL_VERSION, version.encode("ascii") if version is not None else None),
        (PP2_SUBTYPE_SSL_CN, cn.encode("utf-8") if cn is not None else None),
        (PP2_SUBTYPE_SSL_CIPHER, cipher.encode("ascii") if cipher is not None else None),
        (PP2_SUBTYPE_SSL_SIG_ALG, sig_alg.encode("ascii") if sig_alg is not None else None),
        (PP2_SUBTYPE_SSL_KEY_ALG, key_alg.encode("ascii") if key_alg is not None else None),
        (PP2_SUBTYPE_SSL_GROUP, group.encode("ascii") if group is not None else None),
        (
            PP2_SUBTYPE_SSL_SIG_SCHEME,
            sig_scheme.encode("ascii") if sig_scheme is not None else None,
        ),
        (PP2_SUBTYPE_SSL_CLIENT_CERT, client_cert),
    ]
    for kind, value in subs:
        if value is not None:
            body += bytes([kind]) + len(value).to_bytes(2, "big") + value
    return (PP2_TYPE_SSL, bytes(body))


__all__ = [
    "DEFAULT_MAX_LENGTH",
    "PP2_CLIENT_CERT_CONN",
    "PP2_CLIENT_CERT_SESS",
    "PP2_CLIENT_SSL",
    "PP2_SUBTYPE_SSL_CIPHER",
    "PP2_SUBTYPE_SSL_CLIENT_CERT",
    "PP2_SUBTYPE_SSL_CN",
    "PP2_SUBTYPE_SSL_GROUP",
    "PP2_SUBTYPE_SSL_KEY_ALG",
    "PP2_SUBTYPE_SSL_SIG_ALG",
    "PP2_SUBTYPE_SSL_SIG_SCHEME",
    "PP2_SUBTYPE_SSL_VERSION",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_NETNS",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_SSL",
    "PP2_TYPE_UNIQUE_ID",
    "V2_SIGNATURE",
    "IncompleteHeader",
    "ProxyHeader",
    "ProxyProtocolError",
    "SSLInfo",
    "build_header",
    "parse_header",
    "ssl_tlv",
]
