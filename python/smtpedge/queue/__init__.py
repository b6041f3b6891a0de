"""The durable queue: what the receiving side has accepted, on stable storage
(``store``: the SQLite database, spool files and the group committer), and
the lock that keeps a second server off the same data directory (``lock``)."""

from smtpedge.queue.lock import DataDirectoryBusy, DataDirectoryLock
from smtpedge.queue.store import (
    FINAL,
    PENDING,
    GroupCommitter,
    MessageRecord,
    MessageRow,
    MessageWriter,
    Queue,
    QueuedMessage,
    RecipientState,
    StateWriter,
    incoming_directory,
    make_record,
    new_queue_id,
)

__all__ = [
    "FINAL",
    "PENDING",
    "DataDirectoryBusy",
    "DataDirectoryLock",
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
