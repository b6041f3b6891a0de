"""The message writer, pure-Python twin of ``smtpedge-core``'s ``msgwriter``:
one thread that commits accepted messages to the queue database, every
message that arrived while the previous commit was syncing in one
transaction, and posts each one's outcome for ``take()`` behind a descriptor
that is readable while outcomes wait (an eventfd).

The functions that write rows and spool files are also what
``smtpedge.queue.Queue`` uses for its own writes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue as _stdqueue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

__all__ = ["Batcher", "MessageRow", "MessageWriter", "add_rows", "insert_rows", "writing",
           "write_spool_file"]  # fmt: skip

_Req = TypeVar("_Req")

INSERT_MESSAGE = (
    "INSERT INTO messages (id, arrival, sender, mail_params, client, size, header, "
    "content, spool_file, next_attempt) VALUES (?,?,?,?,?,?,?,?,?,?)"
)
INSERT_RECIPIENT = (
    "INSERT INTO recipients (message_id, idx, address, notify, orcpt_type, orcpt, "
    "orcpt_xtext, raw_params) VALUES (?,?,?,?,?,?,?,?)"
)

# address, NOTIFY, ORCPT type, ORCPT, ORCPT as xtext, raw parameters (JSON)
RecipientRow = tuple[str, str | None, str | None, str | None, str | None, str]


class MessageRow(NamedTuple):
    """A message as the queue stores it; ``path`` names a file holding the
    content (adopted into the spool), ``content`` is then empty."""

    id: str
    arrival: float
    sender: str
    mail_params: str
    client: str
    size: int
    header: bytes
    content: bytes
    path: str | None
    recipients: tuple[RecipientRow, ...]


def _fsync(path: Path | str, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_spool_file(spool: Path, row: MessageRow) -> str:
    """Write (or adopt) a message's spool file, durably, before its row is
    committed; return its name relative to ``spool``."""
    tail = row.id[-2:]
    sub = spool / tail
    sub.mkdir(exist_ok=True)
    final = sub / row.id
    if row.path is not None:
        _fsync(row.path)
        os.replace(row.path, final)
    else:
        tmp = sub / (row.id + ".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(row.content)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        os.replace(tmp, final)
    _fsync(sub, os.O_RDONLY | os.O_DIRECTORY)
    return f"{tail}/{row.id}"


def insert_rows(db: sqlite3.Connection, rows: Sequence[MessageRow], files: dict[str, str]) -> None:
    """Insert message rows, inside a transaction; each is due at once.
    ``files``: the spool file of each spooled message, by ID."""
    db.executemany(INSERT_MESSAGE, [
        (r.id, r.arrival, r.sender, r.mail_params, r.client, r.size, r.header,
         None if r.id in files else r.content, files.get(r.id), r.arrival)
        for r in rows
    ])  # fmt: skip
    db.executemany(INSERT_RECIPIENT, [(r.id, i, *rc) for r in rows
                                      for i, rc in enumerate(r.recipients)])  # fmt: skip


@contextlib.contextmanager
def writing(db: sqlite3.Connection, turn: int) -> Iterator[sqlite3.Connection]:
    """A write transaction, after taking the writers' turn (an flock on
    ``turn``): committed when the block ends, rolled back if it raises (the
    block's error is the one raised)."""
    fcntl.flock(turn, fcntl.LOCK_EX)
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (a full disk, say) may have rolled back already.
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise
    finally:
        fcntl.flock(turn, fcntl.LOCK_UN)


def add_rows(
    db: sqlite3.Connection, turn: int, spool: Path, inline_max: int, rows: Sequence[MessageRow]
) -> dict[str, BaseException]:
    """Make every row durable in one transaction. A message whose spool file
    cannot be written fails alone: it is left out and its error returned by
    ID. A failed transaction raises (and stores nothing)."""
    files = {}
    failed: dict[str, BaseException] = {}
    for r in rows:
        if r.path is not None or len(r.content) > inline_max:
            try:
                files[r.id] = write_spool_file(spool, r)
            except OSError as exc:
                failed[r.id] = exc
                if r.path is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(r.path)
    live = [r for r in rows if r.id not in failed]
    if not live:
        return failed
    try:
        with writing(db, turn):
            insert_rows(db, live, files)
    except BaseException:
        for rel in files.values():  # nothing was stored: the spool files go
            with contextlib.suppress(OSError):
                (spool / rel).unlink(missing_ok=True)
        raise
    return failed


class Batcher(Generic[_Req]):
    """A thread that takes requests in batches: after the first of a batch
    it waits for as many as the previous batch had, at most ``gather``
    seconds each and ``gather_max`` in all (a lone client's request goes at
    once; a busy server's batches stay as big as its sessions make them, and
    each costs a transaction and an ``fdatasync`` whatever its size), then
    hands that and what else has arrived, up to ``batch_max``, to
    ``handle``. While it waits it sleeps and looks every ``gather`` seconds
    (a thread blocked on the queue would make every ``put`` wake it).
    ``close()`` stops it after what was put before."""

    def __init__(
        self,
        handle: Callable[[list[_Req]], None],
        *,
        batch_max: int,
        gather: float,
        gather_max: float,
        name: str,
    ) -> None:
        self._handle = handle
        self._batch_max = batch_max
        self._gather = gather
        self._gather_max = gather_max
        self._requests: _stdqueue.SimpleQueue[_Req | None] = _stdqueue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, request: _Req) -> None:
        self._requests.put(request)

    def close(self) -> None:
        self._requests.put(None)
        self._thread.join()

    def _run(self) -> None:
        last = 1
        while True:
            first = self._requests.get()
            if first is None:
                return
            deadline = time.monotonic() + min(self._gather * last, self._gather_max)
            batch = [first]
            stop = False
            while len(batch) < self._batch_max:
                try:
                    nxt = self._requests.get_nowait()
                except _stdqueue.Empty:
                    left = deadline - time.monotonic()
                    if len(batch) >= last or left <= 0:
                        break
                    time.sleep(min(left, self._gather))
                    continue
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            last = len(batch)
            self._handle(batch)
            if stop:
                return


class MessageWriter:
    """Commits message rows from a thread of its own (see the module
    docstring); the same API and errors as the Rust ``MessageWriter``."""

    def __init__(
        self,
        database: str | os.PathLike[str],
        spool: str | os.PathLike[str],
        turn_lock: str | os.PathLike[str],
        *,
        inline_max: int,
        batch_max: int = 256,
        gather: float = 0.0005,
        gather_max: float = 0.003,
    ) -> None:
        if inline_max < 0:
            raise ValueError("inline_max must be at least 0")
        if batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        if not (0.0 <= gather <= 1.0 and 0.0 <= gather_max <= 1.0):
            raise ValueError("gather and gather_max must be between 0 and 1 second")
        self._spool = Path(spool)
        self._inline_max = inline_max
        self._db = sqlite3.connect(database, timeout=30, isolation_level=None,
                                   check_same_thread=False)  # fmt: skip
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._turn = os.open(turn_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._event = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._lock = threading.Lock()
        self._outcomes: list[tuple[int, BaseException | None]] = []
        self._sizes: list[int] = []
        self._closed = False
        self.batches = 0
        self.committed = 0
        self._batcher: Batcher[tuple[int, MessageRow]] = Batcher(
            self._commit,
            batch_max=batch_max,
            gather=gather,
            gather_max=gather_max,
            name="smtpedge-commit",
        )

    def submit(self, token: int, row: Any) -> None:
        if self._closed:
            raise RuntimeError("the message writer is closed")
        if not isinstance(row, tuple) or len(row) != 10:
            raise ValueError("a message row is a tuple of 10 fields")
        self._batcher.put((token, MessageRow(*row)))

    def fileno(self) -> int:
        return self._event

    def take(self) -> tuple[list[tuple[int, BaseException | None]], list[int]]:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._event)
        with self._lock:
            outcomes, self._outcomes = self._outcomes, []
            sizes, self._sizes = self._sizes, []
        return outcomes, sizes

    def close(self) -> None:
        """Commit what was handed over, then stop the thread (outcomes can
        still be taken)."""
        if self._closed:
            return
        self._closed = True
        self._batcher.close()
        self._db.close()
        os.close(self._turn)

    def __del__(self) -> None:
        with contextlib.suppress(AttributeError, OSError):
            os.close(self._event)

    def _commit(self, batch: list[tuple[int, MessageRow]]) -> None:
        rows = [row for _, row in batch]
        try:
            failed = add_rows(self._db, self._turn, self._spool, self._inline_max, rows)
        except Exception as exc:  # the transaction failed: so did every message
            self._post([(token, exc) for token, _ in batch], None)
            return
        self.batches += 1
        self.committed += len(rows) - len(failed)
        self._post([(token, failed.get(row.id)) for token, row in batch], len(batch))

    def _post(self, outcomes: list[tuple[int, BaseException | None]], size: int | None) -> None:
        with self._lock:
            self._outcomes += outcomes
            if size is not None:
                self._sizes.append(size)
        with contextlib.suppress(BlockingIOError):
            os.eventfd_write(self._event, 1)
