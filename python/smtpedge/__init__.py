"""smtpedge: a mail-edge toolkit for Python with a Rust core.

The hot paths (PROXY protocol, SMTP lines, the DATA stream, xtext, certificate
names) run in Rust when the extension is built and in pure Python otherwise;
``BACKEND`` says which, ``SMTPEDGE_BACKEND=rust|python`` forces one, and
``BUILD_PROFILE`` is the extension's build ("release", "debug", or "python").
"""

from smtpedge._backend import BACKEND
from smtpedge._backend import impl as _impl

BUILD_PROFILE: str = _impl.BUILD_PROFILE
__version__ = "0.1.0"
__all__ = ["BACKEND", "BUILD_PROFILE", "__version__"]
