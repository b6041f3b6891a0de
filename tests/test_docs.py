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
