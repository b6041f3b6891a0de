"""IDNA 2008 conversion shared by both backends of ``smtpedge.certnames``.

Both backends compare names as A-labels; a name with U-labels is converted here
(with UTS 46 mapping, non-transitional) before matching, so the Rust and Python
matchers never disagree about internationalised names.
"""

from __future__ import annotations

import idna


def to_ascii(name: str) -> str | None:
    """The A-label form of ``name``, or None when it is not a valid IDN.

    A leading ``*`` label (a wildcard pattern) is kept as it is.
    """
    if name.isascii():
        return name
    prefix = ""
    if name.startswith("*."):
        prefix, name = "*.", name[2:]
    trailing = name.endswith(".")
    try:
        converted = idna.encode(name.rstrip("."), uts46=True, transitional=False).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        return None
    return prefix + converted + ("." if trailing else "")
