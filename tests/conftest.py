"""Shared fixtures. The suite runs once per backend: SMTPEDGE_BACKEND picks it
(scripts/test runs both); tests/test_differential.py compares the two directly."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

import smtpedge

VECTORS = Path(__file__).parent / "vectors"

# CI runs thousands of examples per property; a developer run is quicker.
settings.register_profile(
    "ci", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=300, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")


def load_vectors(name: str) -> Any:
    with open(VECTORS / f"{name}.json", encoding="utf-8") as f:
        return json.load(f)


def raw(s: str) -> bytes:
    """Vector strings hold one byte per code point."""
    return s.encode("latin-1")


def pytest_report_header(config: pytest.Config) -> str:
    return f"smtpedge backend: {smtpedge.BACKEND} ({smtpedge.BUILD_PROFILE})"


@pytest.fixture(autouse=True)
def _reset_smtpedge_logger() -> Any:
    """``smtpedge serve`` points the logger at stderr and a file; undo that so
    later tests can capture log lines."""
    yield
    from smtpedge.log import logger

    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    logger.propagate = True


@pytest.fixture(autouse=True)
def _stop_leftover_servers() -> Any:
    """A test that fails half-way must not leave a ``smtpedge serve`` running."""
    yield
    from serverutil import ServeProcess

    for srv in list(ServeProcess.live):
        srv.kill()
