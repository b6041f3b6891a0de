"""The examples in the docs run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).parent.parent / "docs"


def _blocks(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), re.S)


@pytest.mark.parametrize("index", range(len(_blocks("server.md"))))
def test_server_md_examples(index: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = _blocks("server.md")[index].replace("/tmp/smtpedge-example", str(tmp_path))
    exec(compile(code, f"docs/server.md block {index}", "exec"), {"__name__": "__docs__"})
    out = capsys.readouterr().out
    if index == 0:
        assert "a@example.org ['b@example.net']" in out
        assert "from ('127.0.0.1'," in out
    else:
        assert "250-mx.example Hello client.example" in out


def test_dsn_md_example(capsys: pytest.CaptureFixture[str]) -> None:
    [code] = _blocks("dsn.md")
    exec(compile(code, "docs/dsn.md", "exec"), {"__name__": "__docs__"})
    assert capsys.readouterr().out == "5.1.1\n"


@pytest.mark.parametrize("name", ["client.md", "delivery.md"])
def test_client_examples_compile(name: str) -> None:
    """The client examples need a real MX to talk to; they must at least be
    valid Python that names only what exists."""
    import ast

    import smtpedge.esmtp
    import smtpedge.sending

    [code] = _blocks(name)
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("smtpedge.sending",
                                                                "smtpedge.esmtp"):  # fmt: skip
            module = smtpedge.sending if node.module == "smtpedge.sending" else smtpedge.esmtp
            for alias in node.names:
                assert hasattr(module, alias.name), alias.name


def test_delivery_md_configuration_routes_as_described(tmp_path: Path) -> None:
    """The complete configuration in docs/delivery.md loads, and mail goes
    where the text says (its files moved under tmp_path)."""
    import asyncio
    import tomllib

    from smtpedge import Config
    from smtpedge.delivery.routers import Routing
    from smtpedge.delivery.transports import build_transports

    [text] = re.findall(r"```toml\n(.*?)```", (DOCS / "delivery.md").read_text(), re.S)
    (tmp_path / "aliases").write_text("team: alice, bob\ngone: :fail: left\n")
    (tmp_path / "partner-ca.pem").write_text("")
    text = text.replace("/etc/smtpedge/", f"{tmp_path}/").replace(
        "/var/lib/smtpedge", str(tmp_path / "data")
    )
    config = Config.from_mapping(tomllib.loads(text))
    transports = build_transports(config)
    assert set(transports) == {"local_delivery", "remote_smtp", "partner_smtp"}
    routing = Routing.from_config(config, list(transports))

    def route(address: str) -> tuple[str, str | None, str]:
        r = asyncio.run(routing.route(address, "someone@example.org"))
        return r.kind, r.transport, " ".join(str(h) for h in r.hosts) or r.status

    assert route("alice@example.com") == ("accept", "local_delivery", "")
    assert route("postmaster@mx1.example.com") == ("accept", "local_delivery", "")
    assert asyncio.run(routing.route("team@example.com", "s@x.example")).targets == (
        "alice@example.com", "bob@example.com")  # fmt: skip
    assert route("gone@example.com") == ("fail", None, "5.1.1")
    assert route("nobody@example.com") == ("fail", None, "5.1.1")
    assert route("x@mail.partner.example") == ("accept", "partner_smtp",
                                               "relay.partner.example:587")  # fmt: skip
