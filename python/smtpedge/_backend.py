"""Choose the backend of the hot paths once, at import.

``SMTPEDGE_BACKEND=rust`` or ``python`` forces one (forcing rust without the
built extension is an error). Unset, the Rust extension is used when it is
present, the pure-Python twin otherwise, with a warning.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType

from smtpedge import _pure


def _select() -> tuple[str, ModuleType]:
    wanted = os.environ.get("SMTPEDGE_BACKEND", "").strip().lower()
    if wanted not in ("", "rust", "python"):
        raise ImportError(f"SMTPEDGE_BACKEND must be 'rust' or 'python', not {wanted!r}")
    if wanted == "python":
        return "python", _pure
    try:
        import smtpedge._native as _native
    except ImportError as exc:
        if wanted == "rust":
            raise ImportError(
                "SMTPEDGE_BACKEND=rust but the native extension smtpedge._native "
                f"is not available: {exc}"
            ) from exc
        warnings.warn(
            "smtpedge: the native extension is missing; using the pure-Python backend",
            RuntimeWarning,
            stacklevel=3,
        )
        return "python", _pure
    return "rust", _native


BACKEND, impl = _select()
