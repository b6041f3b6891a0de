"""Backend selection: SMTPEDGE_BACKEND, the fallback and the build profile."""

from __future__ import annotations

import os
import subprocess
import sys

import smtpedge
from smtpedge import proxy


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "SMTPEDGE_BACKEND"} | env
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, env=full
    )


def test_backend_matches_environment() -> None:
    wanted = os.environ.get("SMTPEDGE_BACKEND")
    if wanted:
        assert smtpedge.BACKEND == wanted
    assert smtpedge.BACKEND in ("rust", "python")
    if smtpedge.BACKEND == "python":
        assert proxy.parse_header.__module__ == "smtpedge._pure.proxy"
    else:
        assert type(proxy.parse_header).__name__ == "builtin_function_or_method"


def test_forcing_python() -> None:
    r = _run(
        "import smtpedge; print(smtpedge.BACKEND, smtpedge.BUILD_PROFILE)",
        SMTPEDGE_BACKEND="python",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["python", "python"]


def test_default_is_rust_when_built() -> None:
    r = _run("import smtpedge; print(smtpedge.BACKEND)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "rust"


def test_bad_value_is_an_error() -> None:
    r = _run("import smtpedge", SMTPEDGE_BACKEND="go")
    assert r.returncode != 0
    assert "SMTPEDGE_BACKEND must be 'rust' or 'python'" in r.stderr


def test_forcing_rust_without_extension_fails_and_default_falls_back() -> None:
    # Hide the extension with a meta-path finder that refuses smtpedge._native.
    hide = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'smtpedge._native': raise ImportError('hidden for the test')\n"
        "sys.meta_path.insert(0, Hide())\n"
    )
    r = _run(hide + "import smtpedge", SMTPEDGE_BACKEND="rust")
    assert r.returncode != 0
    assert "SMTPEDGE_BACKEND=rust but the native extension" in r.stderr
    r = _run(hide + "import smtpedge; print(smtpedge.BACKEND)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "python"
    assert "native extension is missing" in r.stderr


def test_native_is_a_release_build() -> None:
    from smtpedge import _native

    assert _native.BUILD_PROFILE == "release"
