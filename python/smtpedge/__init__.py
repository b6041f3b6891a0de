"""smtpedge: a mail-edge toolkit for Python with a Rust core.

The hot paths (PROXY protocol, SMTP lines, the DATA stream, xtext, certificate
names) run in Rust when the extension is built and in pure Python otherwise;
``BACKEND`` says which, ``SMTPEDGE_BACKEND=rust|python`` forces one, and
``BUILD_PROFILE`` is the extension's build ("release", "debug", or "python").
"""

from typing import TYPE_CHECKING

from smtpedge._backend import BACKEND
from smtpedge._backend import impl as _impl

if TYPE_CHECKING:
    from smtpedge.config import Config
    from smtpedge.receiving.server import Server
    from smtpedge.receiving.session import Envelope, Recipient, Session

BUILD_PROFILE: str = _impl.BUILD_PROFILE
__version__ = "0.1.0"
__all__ = [
    "BACKEND", "BUILD_PROFILE", "Config", "Envelope", "Recipient", "Server", "Session",
    "__version__",
]  # fmt: skip

_LAZY = {
    "Server": "smtpedge.receiving.server",
    "Config": "smtpedge.config",
    "Session": "smtpedge.receiving.session",
    "Envelope": "smtpedge.receiving.session",
    "Recipient": "smtpedge.esmtp",
}


def __getattr__(name: str) -> object:
    """``smtpedge.Server`` and friends, imported on first use so that the hot
    paths stay cheap to import."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'smtpedge' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
