"""smtpedge: a mail-edge toolkit for Python with a Rust core.

The hot paths (PROXY protocol, SMTP lines, the DATA stream, xtext, certificate
names) run in Rust when the extension is built and in pure Python otherwise;
``BACKEND`` says which, ``SMTPEDGE_BACKEND=rust|python`` forces one.
"""

from smtpedge._backend import BACKEND

BUILD_PROFILE: str
from smtpedge._backend import impl as _impl  # noqa: E402

BUILD_PROFILE = _impl.BUILD_PROFILE

__version__ = "0.1.0"
__all__ = ["BACKEND", "BUILD_PROFILE", "__version__"]
