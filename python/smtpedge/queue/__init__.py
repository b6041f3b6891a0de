"""The durable queue: what the receiving side has accepted, on stable storage
(``store``: the SQLite database, spool files and the group committer)."""

from smtpedge.queue.store import (
    GroupCommitter,
    Queue,
    QueuedMessage,
    incoming_directory,
    new_queue_id,
)

__all__ = ["GroupCommitter", "Queue", "QueuedMessage", "incoming_directory", "new_queue_id"]
