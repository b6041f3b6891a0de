"""The message writer, both backends: the same rows, spool files and errors."""

from __future__ import annotations

import fcntl
import os
import select
import sqlite3
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpedge import _native, _pure
from smtpedge.queue import Queue

BACKENDS = {"rust": _native, "python": _pure}
INLINE_MAX = 64


def _writer(backend: Any, data: Path, **kw: Any) -> Any:
    q = Queue(data, inline_max=INLINE_MAX)  # the tables and the spool
    q.close()
    kw.setdefault("inline_max", INLINE_MAX)
    return backend.MessageWriter(str(data / "queue.db"), str(data / "spool"),
                                 str(data / "queue.writer.lock"), **kw)  # fmt: skip


def _outcomes(writer: Any, count: int) -> dict[int, BaseException | None]:
    """Wait on the writer's descriptor until ``count`` outcomes came."""
    got: dict[int, BaseException | None] = {}
    while len(got) < count:
        ready, _, _ = select.select([writer.fileno()], [], [], 30)
        assert ready, f"only {len(got)} of {count} outcomes in 30 s"
        outcomes, sizes = writer.take()
        assert sum(sizes) <= count
        got.update(outcomes)
    return got


def _stored(data: Path) -> tuple[list[Any], list[Any], dict[str, bytes]]:
    db = sqlite3.connect(data / "queue.db")
    messages = db.execute(
        "SELECT id, arrival, sender, mail_params, client, size, header, "
        "content, spool_file, next_attempt FROM messages ORDER BY id"
    ).fetchall()
    recipients = db.execute("SELECT message_id, idx, address, notify, orcpt_type, orcpt, "
                            "orcpt_xtext, raw_params, status FROM recipients "
                            "ORDER BY message_id, idx").fetchall()  # fmt: skip
    db.close()
    files = {f"{p.parent.name}/{p.name}": p.read_bytes()
             for p in (data / "spool").glob("*/*") if p.parent.name != "incoming"}  # fmt: skip
    return messages, recipients, files


text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
recipient = st.tuples(text, st.none() | text, st.none() | text, st.none() | text,
                      st.none() | text, text)  # fmt: skip
message = st.tuples(
    st.floats(0, 2e9, allow_nan=False), text, text, text, st.integers(0, 2**40),
    st.binary(max_size=40), st.binary(max_size=2 * INLINE_MAX), st.booleans(),
    st.lists(recipient, max_size=3),
)  # fmt: skip


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(message, min_size=1, max_size=8))
def test_writers_store_the_same(messages: list[Any]) -> None:
    results = {}
    for name, backend in BACKENDS.items():
        with tempfile.TemporaryDirectory() as d:
            data = Path(d)
            w = _writer(backend, data, gather=0.0)
            for i, (arrival, sender, params, client, size, header, content, in_file,
                    rcpts) in enumerate(messages):  # fmt: skip
                path = None
                if in_file:  # a message written to a file as it arrived
                    f = data / f"upload-{i}"
                    f.write_bytes(content)
                    path, content = str(f), b""
                row = (f"ID{i:014d}", arrival, sender, params, client, size, header, content,
                       path, tuple(rcpts))  # fmt: skip
                w.submit(i, row)
            outcomes = _outcomes(w, len(messages))
            w.close()
            assert outcomes == dict.fromkeys(range(len(messages))), outcomes
            assert w.committed == len(messages)
            assert not list(data.glob("upload-*")), "adopted files moved into the spool"
            results[name] = _stored(data)
    assert results["rust"] == results["python"]
    assert len(results["rust"][0]) == len(messages)


def _failure(backend: Any, data: Path, setup: str, row: tuple[Any, ...]) -> BaseException | None:
    w = _writer(backend, data)
    if setup == "trigger":
        db = sqlite3.connect(data / "queue.db")
        db.execute("CREATE TRIGGER full BEFORE INSERT ON recipients "
                   "BEGIN SELECT RAISE(ROLLBACK, 'database or disk is full'); END")  # fmt: skip
        db.commit()
        db.close()
    elif setup == "spool":
        (data / "spool" / row[0][-2:]).write_bytes(b"not a directory")
    elif setup == "no-table":
        db = sqlite3.connect(data / "queue.db")
        db.execute("DROP TABLE recipients")
        db.close()
    w.submit(7, row)
    outcome = _outcomes(w, 1)[7]
    w.close()
    with pytest.raises(RuntimeError, match="the message writer is closed"):
        w.submit(8, row)
    return outcome


ROW = ("01ABCDEFGHJKMNPQ", 1.0, "a@example.org", "{}", "{}", 10, b"H: 1\r\n", b"x" * 100, None,
       (("b@example.net", None, None, None, None, "[]"),))  # fmt: skip


@pytest.mark.parametrize(("setup", "row"), [
    ("trigger", ROW),  # a failed transaction: the message is not stored
    ("trigger", (*ROW[:7], b"small", *ROW[8:])),
    ("spool", ROW),  # its spool file cannot be made
    ("adopt", (*ROW[:7], b"", "/nonexistent/upload", *ROW[9:])),  # its upload is gone
    ("no-table", (*ROW[:7], b"small", *ROW[8:])),
])  # fmt: skip
def test_writers_fail_alike(tmp_path: Path, setup: str, row: tuple[Any, ...]) -> None:
    errors = {}
    for name, backend in BACKENDS.items():
        (tmp_path / name).mkdir()
        errors[name] = _failure(backend, tmp_path / name, setup, row)
        assert not [p for p in (tmp_path / name / "spool").glob("*/*") if p.is_file()
                    and p.parent.name != "incoming"], "no spool file stays"  # fmt: skip
        assert len(Queue(tmp_path / name)) == 0
    rust, python = errors["rust"], errors["python"]
    assert isinstance(python, Exception), python
    assert type(rust) is type(python)
    assert str(rust).replace(str(tmp_path / "rust"), "D") == str(python).replace(
        str(tmp_path / "python"), "D"
    )
    for attr in ("errno", "sqlite_errorcode", "sqlite_errorname"):
        assert getattr(rust, attr, None) == getattr(python, attr, None), attr


@pytest.mark.parametrize(
    "kw", [{"batch_max": 0}, {"inline_max": -1}, {"gather": 2.0}, {"gather_max": -1.0}]
)
def test_writers_refuse_bad_settings_alike(tmp_path: Path, kw: dict[str, Any]) -> None:
    messages = []
    for name, backend in BACKENDS.items():
        (tmp_path / name).mkdir()
        with pytest.raises(ValueError) as info:
            _writer(backend, tmp_path / name, **kw)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def test_writers_refuse_a_malformed_row_alike(tmp_path: Path) -> None:
    for name, backend in BACKENDS.items():
        (tmp_path / name).mkdir()
        w = _writer(backend, tmp_path / name)
        with pytest.raises(ValueError, match="a message row is a tuple of 10 fields"):
            w.submit(1, ROW[:9])
        w.close()


def test_what_waits_meanwhile_commits_together(tmp_path: Path) -> None:
    """Messages that arrive while a commit waits for its turn go into the
    next transaction, all of them."""
    for name, backend in BACKENDS.items():
        data = tmp_path / name
        data.mkdir()
        w = _writer(backend, data)
        turn = os.open(data / "queue.writer.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(turn, fcntl.LOCK_EX)  # another writer's turn
        for i in range(20):
            w.submit(i, (f"ID{i:014d}", *ROW[1:7], b"small", None, *ROW[9:]))
        fcntl.flock(turn, fcntl.LOCK_UN)
        os.close(turn)
        got: dict[int, BaseException | None] = {}
        sizes: list[int] = []
        while len(got) < 20:
            assert select.select([w.fileno()], [], [], 30)[0], "no outcome in 30 s"
            outcomes, batch_sizes = w.take()
            got.update(outcomes)
            sizes += batch_sizes
        w.close()
        assert got == dict.fromkeys(range(20))
        assert sum(sizes) == 20 and len(sizes) <= 2, (name, sizes)
        assert w.batches == len(sizes)


def test_the_rust_writer_uses_the_sqlite_python_uses() -> None:
    """One copy of SQLite in the process: the extension links the shared
    library that Python's sqlite3 module loads, and bundles none of its own
    (two copies would lose track of each other's locks on the queue)."""
    import _sqlite3

    needed = subprocess.run(["readelf", "-d", _native.__file__], capture_output=True, text=True,
                            check=True).stdout  # fmt: skip
    assert "[libsqlite3.so.0]" in needed, needed
    assert "sqlite3_open_v2" not in subprocess.run(
        ["nm", "-D", "--defined-only", _native.__file__], capture_output=True, text=True,
        check=True).stdout, "the extension defines SQLite's functions itself"  # fmt: skip
    maps = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
            if "libsqlite3" in line}  # fmt: skip
    assert len(maps) == 1, maps
    assert _sqlite3.__file__
