"""``smtpedge tlsa create`` prints what hash-slinger's ``tlsa --create``
prints for the same certificate and parameters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pki import issue, make_ca
from serverutil import peer


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("tlsa")
    ca = make_ca("TLSA test CA", kind="ec")
    out = {}
    for name, leaf in (
        ("ec", issue(ca, "mx.example.com", kind="ec", dns=["mx.example.com"])),
        ("rsa", issue(ca, "mx.example.com", dns=["mx.example.com"])),
    ):
        (tmp / f"{name}.pem").write_bytes(leaf.pem() + ca.pem())
        out[name] = tmp / f"{name}.pem"
    (tmp / "ca.pem").write_bytes(ca.pem())
    out["ca"] = tmp / "ca.pem"
    return out


def _smtpedge(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "smtpedge", "tlsa", "create", *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _hash_slinger(cert: Path, usage: int, selector: int, mtype: int, port: int) -> str:
    done = subprocess.run([peer("tlsa"), "--create", "--certificate", str(cert), "--port",
                           str(port), "--usage", str(usage), "--selector", str(selector),
                           "--mtype", str(mtype), "mx.example.com"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    [line] = [ln for ln in done.stdout.splitlines() if " IN TLSA " in ln]
    return line.strip()


# DANE-EE records for server certificates (given with their chain: the first
# is the one), DANE-TA records for the CA certificate alone (hash-slinger asks
# which certificate of a chain to use, interactively).
COMBOS = [(k, 3, s, m) for k in ("ec", "rsa") for s, m in ((1, 1), (0, 1), (1, 2), (0, 0))]
COMBOS += [("ca", 2, s, m) for s, m in ((0, 1), (1, 1), (1, 0), (0, 0), (0, 2))]


@pytest.mark.parametrize(("kind", "usage", "selector", "mtype"), COMBOS)
def test_the_same_record_as_hash_slinger(certs: dict[str, Path], kind: str, usage: int,
                                         selector: int, mtype: int) -> None:  # fmt: skip
    ours = _smtpedge(
        str(certs[kind]),
        "--usage",
        str(usage),
        "--selector",
        str(selector),
        "--mtype",
        str(mtype),
        "--port",
        "25",
        "--host",
        "mx.example.com",
    )
    assert ours == _hash_slinger(certs[kind], usage, selector, mtype, 25)


def test_defaults_and_the_name_from_the_certificate(certs: dict[str, Path]) -> None:
    line = _smtpedge(str(certs["ec"]))
    assert line.startswith("_25._tcp.mx.example.com. IN TLSA 3 1 1 ")
    assert line == _hash_slinger(certs["ec"], 3, 1, 1, 25)


def test_an_unreadable_certificate_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate")
    done = subprocess.run([sys.executable, "-m", "smtpedge", "tlsa", "create",
                           str(tmp_path / "junk.pem")], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 1 and "cannot read a certificate" in done.stderr
