"""The durable queue: an SQLite database (WAL, ``synchronous=FULL``) holding
every message's envelope, each recipient's DSN parameters and, for messages up
to ``spool_inline_max``, the content itself; larger messages go to spool files.

A message exists once, and only once, its database row is committed. A spool
file is written to a temporary name, fsynced, renamed and its directory
fsynced *before* the row that points to it is committed, so a crash at any
moment leaves either a whole message or nothing; orphaned spool files from a
crash are removed by ``recover()``.

``GroupCommitter`` makes this fast: one writer thread takes every message that
arrived while the previous commit was syncing and commits them together, so
concurrent sessions share one fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from smtpedge import metrics
from smtpedge._backend import impl
from smtpedge._pure.msgwriter import (
    Batcher,
    MessageRow,
    add_rows,
    insert_rows,
    write_spool_file,
    writing,
)
from smtpedge.esmtp import MailParams, RcptParams, Recipient
from smtpedge.log import logger

__all__ = [
    "FINAL",
    "PENDING",
    "GroupCommitter",
    "MessageRecord",
    "MessageRow",
    "MessageWriter",
    "Queue",
    "QueuedMessage",
    "RecipientState",
    "StateWriter",
    "incoming_directory",
    "make_record",
    "new_queue_id",
]

_Item = TypeVar("_Item")

_B32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base32: sortable, unambiguous
_B32_PAIRS = [a + b for a in _B32 for b in _B32]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id          TEXT PRIMARY KEY,
    arrival     REAL NOT NULL,
    sender      TEXT NOT NULL,
    mail_params TEXT NOT NULL,
    client      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    header      BLOB NOT NULL,
    content     BLOB,
    spool_file  TEXT
);
CREATE TABLE IF NOT EXISTS recipients (
    message_id  TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    address     TEXT NOT NULL,
    notify      TEXT,
    orcpt_type  TEXT,
    orcpt       TEXT,
    orcpt_xtext TEXT,
    raw_params  TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'queued',
    PRIMARY KEY (message_id, idx)
);
"""

# Delivery state, added to databases made before the queue runner existed.
_COLUMNS = {
    "messages": (
        ("next_attempt", "REAL NOT NULL DEFAULT 0"),
        ("warned", "INTEGER NOT NULL DEFAULT 0"),
    ),
    "recipients": (
        ("attempts", "INTEGER NOT NULL DEFAULT 0"),
        ("first_failure", "REAL"),
        ("last_interval", "REAL NOT NULL DEFAULT 0"),
        ("next_attempt", "REAL NOT NULL DEFAULT 0"),
        ("last_attempt", "REAL"),
        ("last_error", "TEXT"),
        ("host", "TEXT"),
        ("parent", "INTEGER"),
        ("via", "TEXT"),
    ),
}
_INDEX = "CREATE INDEX IF NOT EXISTS messages_due ON messages(next_attempt)"

#: A recipient's states: waiting (``queued``, ``deferred``) or final.
PENDING = ("queued", "deferred")
FINAL = ("delivered", "failed", "expanded")


def new_queue_id() -> str:
    """A 16-character ID that sorts by arrival time (microseconds, then 20
    random bits)."""
    n = (time.time_ns() // 1000) << 20 | random.getrandbits(20)
    p = _B32_PAIRS  # two digits (10 bits) at a time
    return (p[n >> 70 & 1023] + p[n >> 60 & 1023] + p[n >> 50 & 1023] + p[n >> 40 & 1023]
            + p[n >> 30 & 1023] + p[n >> 20 & 1023] + p[n >> 10 & 1023] + p[n & 1023])  # fmt: skip


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message as stored: envelope, client facts and size (content apart)."""

    id: str
    arrival: float
    sender: str
    mail_params: MailParams
    raw_mail_params: tuple[tuple[str, str | None], ...]
    recipients: tuple[Recipient, ...]
    client: dict[str, Any]
    size: int


@dataclass(frozen=True, slots=True)
class RecipientState:
    """One recipient's delivery state. ``idx`` is its place in the message;
    a recipient made by an alias expansion has ``parent`` (the idx of the
    address it came from). Times are Unix times; ``next_attempt`` 0 means
    as soon as possible."""

    idx: int
    recipient: Recipient
    status: str = "queued"
    attempts: int = 0
    first_failure: float | None = None
    last_interval: float = 0.0
    next_attempt: float = 0.0
    last_attempt: float | None = None
    last_error: str | None = None
    host: str | None = None
    parent: int | None = None
    via: str | None = None  # the redirect router that made it

    @property
    def pending(self) -> bool:
        return self.status in PENDING


@dataclass(frozen=True, slots=True)
class MessageRecord:
    id: str
    arrival: float
    sender: str
    mail_params: str
    client: str
    recipients: tuple[Recipient, ...]
    header: bytes
    content: bytes
    path: str | None  # a file holding the content, adopted into the spool
    size: int


def fsync_directory(path: Path) -> None:
    """Make a directory's entries (a new or renamed file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def incoming_directory(directory: str | Path) -> Path:
    """Where the server in data directory ``directory`` writes big messages as
    they arrive, one file per upload named after its session
    (``<worker PID in hex>.<n>.<message>``)."""
    return Path(directory) / "spool" / "incoming"


class Queue:
    """Access to the queue in a data directory (one SQLite connection; use one
    ``Queue`` per thread)."""

    def __init__(self, directory: str | Path, *, inline_max: int = 1024 * 1024) -> None:
        self.directory = Path(directory)
        self.spool = self.directory / "spool"
        self.inline_max = inline_max
        self.spool.mkdir(parents=True, exist_ok=True)
        self.db_path = self.directory / "queue.db"
        self._db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None,
                                   check_same_thread=False)  # fmt: skip
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        for table, columns in _COLUMNS.items():
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for name, decl in columns:
                if name not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
        self._db.execute(_INDEX)
        # Writers (every worker's committer, the queue runner) take turns
        # through this lock before SQLite's: a writer that finds the database
        # busy waits in the kernel and wakes when the other is done, instead
        # of polling with SQLite's sleeps of a millisecond or more.
        self._turn = os.open(self.directory / "queue.writer.lock", os.O_RDWR | os.O_CREAT, 0o600)

    def close(self) -> None:
        self._db.close()
        os.close(self._turn)

    def _writing(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A write transaction: committed when the block ends, rolled back if
        it raises (the block's error is the one raised)."""
        return writing(self._db, self._turn)

    # -- writing ----------------------------------------------------------------

    @property
    def incoming(self) -> Path:
        """Where a server writes big messages as they arrive (see
        ``GroupCommitter.store(content_file=...)``); emptied by ``recover()``."""
        path = incoming_directory(self.directory)
        path.mkdir(exist_ok=True)
        return path

    def _write_spool_file(self, record: MessageRecord) -> str:
        return write_spool_file(self.spool, record_row(record))

    def _add_many(self, records: list[MessageRecord]) -> dict[str, BaseException]:
        """Make every record durable in one transaction. A record whose spool
        file cannot be written fails alone: it is left out and its error
        returned by ID. A failed transaction raises (and stores nothing)."""
        return add_rows(self._db, self._turn, self.spool, self.inline_max,
                        [record_row(r) for r in records])  # fmt: skip

    def _insert(self, records: list[MessageRecord], files: dict[str, str]) -> None:
        """Insert message rows (inside a transaction); each is due at once."""
        insert_rows(self._db, [record_row(r) for r in records], files)

    def add(
        self,
        sender: str,
        recipients: list[Recipient] | tuple[Recipient, ...],
        content: bytes,
        *,
        mail_params: MailParams | None = None,
        raw_mail_params: tuple[tuple[str, str | None], ...] = (),
        client: dict[str, Any] | None = None,
        queue_id: str | None = None,
    ) -> str:
        """Store one message synchronously; return its queue ID."""
        record = make_record(sender, recipients, content, mail_params or MailParams(),
                             raw_mail_params, client or {}, queue_id)  # fmt: skip
        failed = self._add_many([record])
        if failed:
            raise failed[record.id]
        return record.id

    # -- reading ----------------------------------------------------------------

    def recover(self) -> int:
        """Remove spool files no committed message points to (left by a crash
        between writing a file and committing its row); return how many."""
        known = {row[0] for row in self._db.execute(
            "SELECT spool_file FROM messages WHERE spool_file IS NOT NULL")}  # fmt: skip
        removed = 0
        for path in self.spool.glob("*/*"):
            rel = f"{path.parent.name}/{path.name}"
            if rel not in known:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM messages").fetchone()[0])

    def ids(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT id FROM messages ORDER BY id")]

    def messages(self) -> Iterator[QueuedMessage]:
        for (mid,) in self._db.execute("SELECT id FROM messages ORDER BY id").fetchall():
            msg = self.get(mid)
            if msg is not None:
                yield msg

    def get(self, queue_id: str) -> QueuedMessage | None:
        row = self._db.execute(
            "SELECT id, arrival, sender, mail_params, client, size FROM messages WHERE id=?",
            (queue_id,),
        ).fetchone()
        if row is None:
            return None
        params = json.loads(row[3])
        rcpts = tuple(
            Recipient(
                address,
                RcptParams(tuple(notify.split(",")) if notify else None, otype, orcpt, oxtext),
                tuple((k, v) for k, v in json.loads(raw)),
            )
            for address, notify, otype, orcpt, oxtext, raw in self._db.execute(
                "SELECT address, notify, orcpt_type, orcpt, orcpt_xtext, raw_params "
                "FROM recipients WHERE message_id=? ORDER BY idx",
                (queue_id,),
            )
        )
        return QueuedMessage(
            row[0], row[1], row[2], MailParams(**params["decoded"]),
            tuple((k, v) for k, v in params["raw"]), rcpts, json.loads(row[4]), row[5],
        )  # fmt: skip

    def content(self, queue_id: str) -> bytes | None:
        row = self._db.execute(
            "SELECT header, content, spool_file FROM messages WHERE id=?", (queue_id,)
        ).fetchone()
        if row is None:
            return None
        header = bytes(row[0])
        if row[2] is not None:
            return header + (self.spool / str(row[2])).read_bytes()
        return header + bytes(row[1])

    # -- delivery state -------------------------------------------------------------

    def due(self, now: float, limit: int) -> list[str]:
        """Up to ``limit`` messages whose next attempt is due, the longest
        waiting first (an index scan: the cost does not grow with the queue)."""
        return [row[0] for row in self._db.execute(
            "SELECT id FROM messages WHERE next_attempt <= ? ORDER BY next_attempt LIMIT ?",
            (now, limit))]  # fmt: skip

    def next_due(self) -> float | None:
        """When the next message is due (None: the queue is empty)."""
        row = self._db.execute("SELECT min(next_attempt) FROM messages").fetchone()
        return None if row[0] is None else float(row[0])

    def states(self, queue_id: str) -> list[RecipientState]:
        """Every recipient of a message with its delivery state, by idx."""
        rows = self._db.execute(
            "SELECT idx, address, notify, orcpt_type, orcpt, orcpt_xtext, raw_params, "
            "status, attempts, first_failure, last_interval, next_attempt, last_attempt, "
            "last_error, host, parent, via FROM recipients WHERE message_id=? ORDER BY idx",
            (queue_id,),
        )
        out = []
        for idx, address, notify, otype, orcpt, oxtext, raw, *state in rows:
            params = RcptParams(tuple(notify.split(",")) if notify else None, otype, orcpt, oxtext)
            recipient = Recipient(address, params, tuple((k, v) for k, v in json.loads(raw)))
            out.append(RecipientState(idx, recipient, *state))
        return out

    def warned(self, queue_id: str) -> int:
        """How many delay reports have been sent for a message."""
        row = self._db.execute("SELECT warned FROM messages WHERE id=?", (queue_id,)).fetchone()
        return 0 if row is None else int(row[0])

    def record(
        self,
        queue_id: str,
        states: list[RecipientState] | tuple[RecipientState, ...],
        *,
        next_attempt: float | None,
        warned: int | None = None,
        reports: list[MessageRecord] | tuple[MessageRecord, ...] = (),
    ) -> None:
        """Make the outcome of an attempt durable in one transaction: the
        recipients' new states (new idx values are added: alias expansions),
        the reports it produced (queued as new messages), and the message's
        next attempt, or with ``next_attempt=None`` its removal (every
        recipient is done)."""
        self.record_many([(queue_id, tuple(states), next_attempt, warned, tuple(reports))])

    def record_many(self, items: list[StateRecord]) -> None:
        """Several ``record`` calls in one transaction (one fsync)."""
        files: dict[str, str] = {}
        spools: list[str] = []
        try:
            for *_, reports in items:
                for r in reports:
                    if len(r.content) > self.inline_max:
                        files[r.id] = self._write_spool_file(r)
            with self._writing():
                self._record(items, files, spools)
        except BaseException:
            for rel in files.values():
                with contextlib.suppress(OSError):
                    (self.spool / rel).unlink(missing_ok=True)
            raise
        for rel in spools:
            (self.spool / rel).unlink(missing_ok=True)

    def _record(self, items: list[StateRecord], files: dict[str, str], spools: list[str]) -> None:
        db = self._db
        for queue_id, states, next_attempt, warned, reports in items:
            if next_attempt is None:
                row = db.execute("SELECT spool_file FROM messages WHERE id=?",
                                 (queue_id,)).fetchone()  # fmt: skip
                if row and row[0]:
                    spools.append(row[0])
                db.execute("DELETE FROM messages WHERE id=?", (queue_id,))
            else:
                db.executemany(_UPSERT_RECIPIENT, [
                    (queue_id, st.idx, *_recipient_columns(st.recipient), st.status,
                     st.attempts, st.first_failure, st.last_interval, st.next_attempt,
                     st.last_attempt, st.last_error, st.host, st.parent, st.via)
                    for st in states
                ])  # fmt: skip
                db.execute(
                    "UPDATE messages SET next_attempt=?, warned=coalesce(?, warned) "
                    "WHERE id=?", (next_attempt, warned, queue_id),
                )  # fmt: skip
            if reports:
                self._insert(list(reports), files)

    def make_due(self, queue_id: str | None = None, when: float = 0.0) -> int:
        """Make one message (or every one) due at ``when``, its waiting
        recipients too, whatever their retry times say (``queue retry`` and
        ``queue flush``); return how many messages."""
        db = self._db
        where, args = ("WHERE id=?", (queue_id,)) if queue_id else ("", ())
        with self._writing():
            n = db.execute(f"UPDATE messages SET next_attempt=? {where}", (when, *args)).rowcount
            rwhere = "AND message_id=?" if queue_id else ""
            db.execute(f"UPDATE recipients SET next_attempt=? WHERE status IN "
                       f"('queued','deferred') {rwhere}", (when, *args))  # fmt: skip
        return int(n)

    def remove(self, queue_id: str) -> bool:
        row = self._db.execute("SELECT spool_file FROM messages WHERE id=?", (queue_id,)).fetchone()
        if row is None:
            return False
        self._db.execute("DELETE FROM messages WHERE id=?", (queue_id,))
        if row[0]:
            (self.spool / row[0]).unlink(missing_ok=True)
        return True


_UPSERT_RECIPIENT = (
    "INSERT INTO recipients (message_id, idx, address, notify, orcpt_type, orcpt, orcpt_xtext, "
    "raw_params, status, attempts, first_failure, last_interval, next_attempt, last_attempt, "
    "last_error, host, parent, via) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (message_id, idx) DO UPDATE SET status=excluded.status, "
    "attempts=excluded.attempts, first_failure=excluded.first_failure, "
    "last_interval=excluded.last_interval, next_attempt=excluded.next_attempt, "
    "last_attempt=excluded.last_attempt, last_error=excluded.last_error, host=excluded.host"
)


#: One ``Queue.record`` call: ID, states, next attempt, warned, reports.
StateRecord = tuple[
    str, tuple[RecipientState, ...], float | None, int | None, tuple["MessageRecord", ...]
]


def _recipient_columns(rc: Recipient) -> tuple[Any, ...]:
    p = rc.params
    return (rc.address, ",".join(p.notify) if p.notify else None, p.orcpt_type, p.orcpt,
            p.orcpt_xtext, _cached(_raw_json, rc.raw_params))  # fmt: skip


def _cached(fn: Any, *args: Any) -> str:
    """``fn(*args)`` from its cache: most messages share a few parameter sets
    (none at all, mostly). Unhashable arguments (lists read back from JSON)
    are encoded afresh."""
    try:
        return str(fn(*args))
    except TypeError:
        return str(fn.__wrapped__(*args))


@functools.lru_cache(maxsize=256)
def _raw_json(raw_params: tuple[tuple[str, str | None], ...]) -> str:
    return json.dumps(raw_params)


@functools.lru_cache(maxsize=256)
def _params_json(mail_params: MailParams, raw_mail_params: Any) -> str:
    decoded = {f: getattr(mail_params, f) for f in MailParams.__dataclass_fields__}
    return json.dumps({"decoded": decoded, "raw": list(raw_mail_params)})


def make_record(
    sender: str,
    recipients: list[Recipient] | tuple[Recipient, ...],
    content: bytes,
    mail_params: MailParams,
    raw_mail_params: tuple[tuple[str, str | None], ...],
    client: dict[str, Any],
    queue_id: str | None = None,
    header: bytes = b"",
    content_file: str | None = None,
) -> MessageRecord:
    params = _cached(_params_json, mail_params, tuple(raw_mail_params))
    size = len(header) + (os.path.getsize(content_file) if content_file else len(content))
    return MessageRecord(queue_id or new_queue_id(), time.time(), sender, params,
                         json.dumps(client), tuple(recipients), bytes(header), bytes(content),
                         content_file, size)  # fmt: skip


def record_row(r: MessageRecord) -> MessageRow:
    """What the message writer stores of a record."""
    rows = tuple(_recipient_columns(rc) for rc in r.recipients)
    return MessageRow(r.id, r.arrival, r.sender, r.mail_params, r.client, r.size, r.header,
                      r.content, r.path, rows)  # fmt: skip


#: The message writer of the backend chosen at import (see docs/api.md).
MessageWriter = impl.MessageWriter

#: After the first item of a batch, a writer thread waits for as many as
#: its previous batch had, at most ``GATHER_SECONDS`` each and
#: ``GATHER_MAX_SECONDS`` in all: a lone client's message is committed at
#: once, and a busy server's groups stay as big as its sessions make them
#: (each group costs a transaction, its WAL pages and an ``fdatasync``
#: whatever its size). While it waits it sleeps and looks every
#: ``GATHER_SECONDS``, so handing it a message costs a session no wake-up.
GATHER_SECONDS = 0.0005
GATHER_MAX_SECONDS = 0.003

_Done = Callable[[BaseException | None], None]
_Answer = tuple[_Done, BaseException | None]


def _settle(items: list[_Answer]) -> None:
    for done, error in items:
        try:
            done(error)
        except Exception:  # one session's bug must not keep the others waiting
            logger.exception("internal error answering a commit")


def _resolve(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():  # cancelled meanwhile
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


class _Committer(Generic[_Item]):
    """A writer thread that commits what many sessions hand it, every item
    that arrived while the previous commit was syncing in one transaction,
    and answers each waiting event loop once per commit."""

    def __init__(
        self, directory: str | Path, *, inline_max: int, batch_max: int, name: str
    ) -> None:
        self._queue = Queue(directory, inline_max=inline_max)
        self.batches = 0
        self._batcher: Batcher[tuple[_Item, _Done, asyncio.AbstractEventLoop]] = Batcher(
            self._handle,
            batch_max=batch_max,
            gather=GATHER_SECONDS,
            gather_max=GATHER_MAX_SECONDS,
            name=name,
        )

    async def _submit(self, item: _Item) -> None:
        """Hand ``item`` to the thread; return once it is committed, or raise
        what its commit raised."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._batcher.put((item, functools.partial(_resolve, fut), loop))
        await fut

    def close(self) -> None:
        self._batcher.close()
        self._queue.close()

    def _commit(self, items: list[_Item]) -> list[BaseException | None]:
        """Commit ``items`` in one transaction; return each one's error, or
        None. An exception raised here fails every item."""
        raise NotImplementedError

    def _handle(self, batch: list[tuple[_Item, _Done, asyncio.AbstractEventLoop]]) -> None:
        try:
            errors = self._commit([r for r, _, _ in batch])
            self.batches += 1
        except BaseException as exc:  # reported to every waiting session
            errors = [exc] * len(batch)
        # One wake-up per event loop for the whole batch.
        answers: dict[asyncio.AbstractEventLoop, list[_Answer]] = {}
        for (_, done, loop), error in zip(batch, errors, strict=True):
            answers.setdefault(loop, []).append((done, error))
        for loop, items in answers.items():
            with contextlib.suppress(RuntimeError):  # a loop closed meanwhile
                loop.call_soon_threadsafe(_settle, items)


class GroupCommitter:
    """Commits messages from many sessions together, in the message writer's
    thread (``smtpedge._native.MessageWriter``, or its pure-Python twin): it
    takes every message that arrived while the previous commit was syncing
    and commits them in one transaction, so concurrent sessions share one
    ``fdatasync``. The Rust writer does this without the GIL, so the event
    loop keeps the interpreter while messages are written.

    ``await committer.store(...)`` returns once the message is on stable
    storage (or raises, and then nothing was stored); ``submit`` does the
    same with a callback, for the server's common case. Outcomes reach the
    event loop that submitted the message, through the writer's descriptor.
    """

    def __init__(self, directory: str | Path, *, inline_max: int, batch_max: int = 256) -> None:
        queue = Queue(directory, inline_max=inline_max)  # the tables, the spool
        try:
            self._incoming = queue.incoming
            self._writer = MessageWriter(
                str(queue.db_path), str(queue.spool), str(queue.directory / "queue.writer.lock"),
                inline_max=inline_max, batch_max=batch_max, gather=GATHER_SECONDS,
                gather_max=GATHER_MAX_SECONDS,
            )  # fmt: skip
        finally:
            queue.close()
        self._fd = self._writer.fileno()
        self._waiting: dict[int, tuple[_Done, asyncio.AbstractEventLoop]] = {}
        self._tokens = itertools.count(1)
        self._loops: list[asyncio.AbstractEventLoop] = []

    @property
    def committed(self) -> int:
        return int(self._writer.committed)

    @property
    def batches(self) -> int:
        return int(self._writer.batches)

    @property
    def incoming(self) -> Path:
        return self._incoming

    def submit(self, record: MessageRecord, done: _Done, loop: asyncio.AbstractEventLoop) -> None:
        """Hand ``record`` to the writer without awaiting it: ``done(error)``
        runs in ``loop`` once the commit is over (``error`` None: the message
        is on stable storage). No task or future per message."""
        if loop not in self._loops:
            loop.add_reader(self._fd, self._drain, loop)
            self._loops.append(loop)
        token = next(self._tokens)
        self._waiting[token] = (done, loop)
        try:
            self._writer.submit(token, record_row(record))
        except BaseException:
            del self._waiting[token]
            raise

    async def store(
        self,
        sender: str,
        recipients: list[Recipient] | tuple[Recipient, ...],
        content: bytes,
        *,
        mail_params: MailParams,
        raw_mail_params: tuple[tuple[str, str | None], ...],
        client: dict[str, Any],
        queue_id: str | None = None,
        header: bytes = b"",
        content_file: str | None = None,
    ) -> int:
        """Store a message: ``header`` (the Received line) and then either
        ``content`` or the file ``content_file``, which is moved into the spool.
        Return the size stored."""
        record = make_record(sender, recipients, content, mail_params, raw_mail_params,
                             client, queue_id, header, content_file)  # fmt: skip
        await self.commit(record)
        return record.size

    async def commit(self, record: MessageRecord) -> None:
        """Store a record made by ``make_record``; return once it is durable."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self.submit(record, functools.partial(_resolve, fut), loop)
        await fut

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        outcomes, sizes = self._writer.take()
        for n in sizes:
            metrics.group_commits.inc()
            metrics.group_commit_size.observe(n)
        mine: list[_Answer] = []
        others: dict[asyncio.AbstractEventLoop, list[_Answer]] = {}
        for token, error in outcomes:
            entry = self._waiting.pop(token, None)
            if entry is None:
                continue
            done, owner = entry
            if owner is loop:
                mine.append((done, error))
            else:
                others.setdefault(owner, []).append((done, error))
        for owner, items in others.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed
                owner.call_soon_threadsafe(_settle, items)
        _settle(mine)

    def close(self) -> None:
        """Commit what was handed over, stop the writer, and answer the last
        commits in their event loops."""
        for loop in self._loops:
            if not loop.is_closed():
                with contextlib.suppress(RuntimeError, ValueError):
                    loop.remove_reader(self._fd)
        self._loops.clear()
        self._writer.close()
        outcomes, _ = self._writer.take()
        answers: dict[asyncio.AbstractEventLoop, list[_Answer]] = {}
        for token, error in outcomes:
            entry = self._waiting.pop(token, None)
            if entry is not None:
                answers.setdefault(entry[1], []).append((entry[0], error))
        for loop, items in answers.items():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, items)


class StateWriter(_Committer[StateRecord]):
    """Makes delivery outcomes durable from one writer thread, committing
    every outcome that arrived while the previous commit was syncing in one
    transaction (as ``GroupCommitter`` does for arriving mail).

    ``await writer.record(...)`` returns once the change is on stable storage.
    """

    def __init__(self, directory: str | Path, *, inline_max: int, batch_max: int = 256) -> None:
        super().__init__(directory, inline_max=inline_max, batch_max=batch_max,
                         name="smtpedge-state")  # fmt: skip

    async def record(
        self,
        queue_id: str,
        states: list[RecipientState] | tuple[RecipientState, ...],
        *,
        next_attempt: float | None,
        warned: int | None = None,
        reports: list[MessageRecord] | tuple[MessageRecord, ...] = (),
    ) -> None:
        await self._submit((queue_id, tuple(states), next_attempt, warned, tuple(reports)))

    def _commit(self, items: list[StateRecord]) -> list[BaseException | None]:
        self._queue.record_many(items)
        return [None] * len(items)
