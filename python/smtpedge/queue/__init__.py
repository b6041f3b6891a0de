"""The durable queue: what the receiving side has accepted, on stable storage
(``store``: the SQLite database, spool files and the group committer), and
the lock that keeps a second server off the same data directory (``lock``)."""

from smtpedge.queue.lock import DataDirectoryBusy, DataDirectoryLock
from smtpedge.queue.store import (
    GroupCommitter,
    Queue,
    QueuedMessage,
    incoming_directory,
    new_queue_id,
)

__all__ = [
    "DataDirectoryBusy",
    "DataDirectoryLock",
    "GroupCommitter",
    "Queue",
    "QueuedMessage",
    "incoming_directory",
    "new_queue_id",
]
