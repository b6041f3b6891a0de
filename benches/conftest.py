"""Benchmarks compare backends in one run; they refuse a debug build of the
extension, whose numbers would mean nothing."""

from __future__ import annotations

import pytest

from smtpedge import _native


def pytest_configure(config: pytest.Config) -> None:
    if _native.BUILD_PROFILE != "release":
        pytest.exit(
            f"smtpedge._native is a {_native.BUILD_PROFILE} build; benchmark a release build "
            "(pip install . or maturin develop --release)",
            returncode=2,
        )
