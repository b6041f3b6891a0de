"""The smtpedge command, run as a user would."""

from __future__ import annotations

import os
import subprocess
import sys


def _smtpedge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smtpedge.cli", *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
    )


def test_demo_runs_every_hot_path() -> None:
    r = _smtpedge("demo")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "source ('192.0.2.10', 51234)" in out
    assert "crc32c verified True" in out
    assert "invalid port in the v1 header (at byte 34)" in out
    assert "553 5.1.3 Bad recipient address syntax" in out
    assert "remainder b'QUIT\\r\\n'" in out and "550 5.5.2" in out
    assert "'a+2Bb+3Dc'" in out
    assert "match_hostname('*.com', 'example.com') = False" in out


def test_info_names_the_backend() -> None:
    r = _smtpedge("info")
    assert r.returncode == 0, r.stderr
    backend = os.environ.get("SMTPEDGE_BACKEND", "rust")
    assert f"backend={backend}" in r.stdout


def test_closed_pipe_is_not_a_crash() -> None:
    p = subprocess.Popen(
        [sys.executable, "-m", "smtpedge.cli", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert p.stdout is not None and p.stderr is not None
    # Close our end before the interpreter has started, so its first write
    # meets a closed pipe.
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0
    assert "Traceback" not in err
