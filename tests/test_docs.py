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


def test_client_md_example_compiles() -> None:
    """The client example needs a real MX to talk to; it must at least be
    valid Python that names only what exists."""
    import ast

    import smtpedge.esmtp
    import smtpedge.sending

    [code] = _blocks("client.md")
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("smtpedge.sending",
                                                                "smtpedge.esmtp"):  # fmt: skip
            module = smtpedge.sending if node.module == "smtpedge.sending" else smtpedge.esmtp
            for alias in node.names:
                assert hasattr(module, alias.name), alias.name
