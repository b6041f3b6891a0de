"""Local delivery into maildirs (the format of qmail, Postfix's ``virtual``
and Exim's ``appendfile`` with ``maildir_format``).

A delivery is atomic: the message is written under ``tmp/`` with a name no
other delivery can have, fsynced, renamed into ``new/``, and the directory
fsynced; a reader sees the whole message or nothing, and a crash leaves at
most a file in ``tmp/``. ``Return-Path`` (the envelope sender) and
``Delivered-To`` (the recipient) are added on top, and line ends become LF,
as mail readers of maildirs expect.

Each local user gets ``<base>/<local part>/`` (``cur``, ``new``, ``tmp``
made when missing). A local part that could leave the base directory
(``/``, a leading ``.``, NUL) is refused.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from smtpedge.queue.store import fsync_directory

__all__ = ["MaildirError", "MaildirTransport", "deliver"]

_counter = itertools.count(1)


class MaildirError(Exception):
    """A delivery that did not happen, with the RFC 3463 status that says
    why; ``transient`` when a later try may succeed (a full disk)."""

    def __init__(self, status: str, text: str) -> None:
        super().__init__(f"{status} {text}")
        self.status = status
        self.text = text

    @property
    def transient(self) -> bool:
        return self.status.startswith("4.")


def _status_for(exc: OSError) -> str:
    return {
        errno.EDQUOT: "4.2.2",  # mailbox full
        errno.ENOSPC: "4.3.1",  # mail system full
        errno.EROFS: "4.3.0",
        errno.EACCES: "4.3.0",
    }.get(exc.errno or 0, "4.3.0")


def _unique_name(hostname: str) -> str:
    now = time.time()
    seconds, micro = int(now), int((now % 1) * 1_000_000)
    host = hostname.replace("/", "\\057").replace(":", "\\072")
    return f"{seconds}.M{micro}P{os.getpid()}Q{next(_counter)}.{host}"


def deliver(
    maildir: Path,
    content: bytes,
    *,
    return_path: str,
    delivered_to: str,
    hostname: str | None = None,
) -> Path:
    """Deliver ``content`` into ``maildir``; return the file's path in
    ``new/``. Raises MaildirError."""
    hostname = hostname or socket.gethostname()
    try:
        for sub in ("tmp", "new", "cur"):
            (maildir / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        name = _unique_name(hostname)
        tmp = maildir / "tmp" / name
        header = f"Return-Path: <{return_path}>\nDelivered-To: {delivered_to}\n".encode()
        body = content.replace(b"\r\n", b"\n")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(header)
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            final = maildir / "new" / name
            os.link(tmp, final)  # never replaces an existing file
        finally:
            tmp.unlink(missing_ok=True)
        fsync_directory(maildir / "new")
        return final
    except OSError as exc:
        raise MaildirError(_status_for(exc),
                           f"cannot deliver into {maildir}: {exc.strerror}") from None  # fmt: skip


@dataclass(frozen=True, slots=True)
class MaildirTransport:
    """Maildirs for local users under ``base``: ``<base>/<local part>/``."""

    base: Path
    hostname: str | None = None

    def maildir_for(self, address: str) -> Path:
        local = address.rsplit("@", 1)[0] if "@" in address else address
        local = local.strip('"').lower()
        if not local or local.startswith(".") or "/" in local or "\0" in local:
            raise MaildirError("5.1.3", f"local part {local!r} cannot name a maildir")
        return self.base / local

    def deliver(self, content: bytes, *, sender: str, recipient: str) -> Path:
        return deliver(self.maildir_for(recipient), content, return_path=sender,
                       delivered_to=recipient, hostname=self.hostname)  # fmt: skip
