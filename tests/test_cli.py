"""The smtpedge command, run as a user would."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def _smtpedge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smtpedge", *args],
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
        [sys.executable, "-m", "smtpedge", "demo"],
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


def test_python_m_smtpedge_is_the_command() -> None:
    r = _smtpedge("--version")
    assert r.returncode == 0 and r.stdout.startswith("smtpedge ")


def test_help_describes_each_command_in_words() -> None:
    r = _smtpedge("--help")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "The ``smtpedge`` command line" not in out, "not the module docstring"
    assert "an SMTP server for the mail edge" in out
    described = [("serve", "run the SMTP server"), ("queue", "manage the queue"),
                 ("ocsp", "OCSP proofs"), ("config", "print the effective")]  # fmt: skip
    for command, words in described:
        assert re.search(rf"^\s+{command}\s+{words}", out, re.M), (command, out)


def test_serve_help_shows_the_defaults() -> None:
    out = _smtpedge("serve", "--help").stdout
    assert "(default: 2525)" in out
    assert "(default: 127.0.0.1)" in out
    assert "./smtpedge-data" in out
    assert "(default: one per CPU)" in out, "workers"


def test_queue_without_a_data_directory_says_so(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "smtpedge", "queue", "list"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 1
    assert f"no data directory at {tmp_path.resolve() / 'smtpedge-data'}" in r.stderr
    assert "queue is empty" not in r.stdout


def test_queue_options_go_before_or_after_the_sub_command(tmp_path: Path) -> None:
    from smtpedge.queue import Queue
    from smtpedge.receiving.session import Recipient

    data = tmp_path / "data"
    qid = Queue(data).add("a@example.org", [Recipient("b@example.net")], b"Subject: x\r\n\r\n")
    for args in (["queue", "list", "--spool-directory", str(data)],
                 ["queue", "--spool-directory", str(data), "list"]):  # fmt: skip
        r = _smtpedge(*args)
        assert r.returncode == 0 and qid in r.stdout, (args, r.stderr)
    config = tmp_path / "c.toml"
    config.write_text(f'spool_directory = "{data}"\n')
    r = _smtpedge("queue", "show", qid, "--config", str(config))
    assert r.returncode == 0 and "sender: <a@example.org>" in r.stdout
    r = _smtpedge("queue", "--config", str(config), "list", "--spool-directory", str(tmp_path))
    assert r.returncode == 1, "the later, more specific option wins"


def test_every_mistake_in_a_config_file_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('workers = 65\nsmtp_banner_dely = "1s"\nmessage_size_limit = "lots"\n')
    r = _smtpedge("serve", "--config", str(bad))
    assert r.returncode == 2
    err = r.stderr
    assert "3 mistakes" in err
    assert "option workers:" in err
    assert "option smtp_banner_dely: unknown option (did you mean smtp_banner_delay?)" in err
    assert "option message_size_limit: bad size 'lots'" in err
