"""Certificate name checking (RFC 6125 section 6.4, with Exim's wildcard rule).

``match_hostname(pattern, hostname)`` compares one presented identifier with a
reference name; ``verify_names(dns_names, common_names, ip_addresses,
reference)`` decides for a whole certificate (SAN dNSNames first, CNs only when
there is no dNSName, IP references only against IP SANs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from smtpedge._backend import impl as _impl

if TYPE_CHECKING:
    from smtpedge._pure.certnames import match_hostname, verify_names
else:
    match_hostname = _impl.match_hostname
    verify_names = _impl.verify_names

__all__ = ["match_hostname", "verify_names"]
