"""TLS for smtpedge: a sans-I/O engine on pyOpenSSL, and server contexts with
SNI and OCSP stapling."""

from smtpedge.tls.engine import TLSEngine, TLSInfo
from smtpedge.tls.server import CertificatePair, ServerTLS, TLSConfigError, make_self_signed

__all__ = [
    "CertificatePair",
    "ServerTLS",
    "TLSConfigError",
    "TLSEngine",
    "TLSInfo",
    "make_self_signed",
]
