"""The pure-Python backend: the same names, signatures, results and errors as
``smtpedge._native``, module by module twins of the Rust core."""

from smtpedge._pure.certnames import match_hostname, verify_names
from smtpedge._pure.crc32c import crc32c
from smtpedge._pure.data import DataScanner, dot_stuff
from smtpedge._pure.hosttable import HostTableLock, SharedHostTable
from smtpedge._pure.msgwriter import MessageWriter
from smtpedge._pure.proxy import ProxyHeader, SSLInfo, build_header, parse_header
from smtpedge._pure.smtpline import Command, Path, Reply, parse_command, parse_reply
from smtpedge._pure.xtext import (
    decode as xtext_decode,
)
from smtpedge._pure.xtext import (
    decode_utf8_addr as utf8_addr_decode,
)
from smtpedge._pure.xtext import (
    encode as xtext_encode,
)
from smtpedge._pure.xtext import (
    encode_utf8_addr as utf8_addr_encode,
)

BUILD_PROFILE = "python"

__all__ = [
    "BUILD_PROFILE",
    "Command",
    "DataScanner",
    "HostTableLock",
    "MessageWriter",
    "Path",
    "ProxyHeader",
    "Reply",
    "SSLInfo",
    "SharedHostTable",
    "build_header",
    "crc32c",
    "dot_stuff",
    "match_hostname",
    "parse_command",
    "parse_header",
    "parse_reply",
    "utf8_addr_decode",
    "utf8_addr_encode",
    "verify_names",
    "xtext_decode",
    "xtext_encode",
]
