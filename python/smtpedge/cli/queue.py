"""``smtpedge queue list|show|flush|retry|remove|run``: look at and manage a
server's queue. All but ``run`` are safe beside a running server (``flush``
and ``retry`` only move retry times, and the server's runner picks the
messages up); ``run`` delivers itself, so it takes the data directory lock
and refuses while a server holds it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime

from smtpedge.config import Config
from smtpedge.queue import Queue, RecipientState


def _when(t: float | None) -> str:
    return "-" if not t else datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _state_line(st: RecipientState) -> str:
    line = f"  {st.status:<9} <{st.recipient.address}>"
    if st.parent is not None:
        line += f" (from #{st.parent})"
    if st.status in ("queued", "deferred"):
        if st.attempts:
            line += f" attempts={st.attempts} next={_when(st.next_attempt)}"
    if st.last_error:
        line += f" last error: {st.last_error}"
    return line


def run(args: argparse.Namespace, config: Config) -> int:
    if not (config.spool_path / "queue.db").exists():
        where = config.spool_path.resolve()
        what = "no data directory" if not config.spool_path.is_dir() else "no queue"
        print(f"smtpedge: {what} at {where} (give the server's with --spool-directory "
              "or --config)", file=sys.stderr)  # fmt: skip
        return 1
    if args.queue_command == "run":
        return _run_once(config)
    q = Queue(config.spool_path, inline_max=config.spool_inline_max)
    try:
        if args.queue_command == "list":
            n = 0
            for m in q.messages():
                n += 1
                print(f"{m.id} {m.size:>9} {_when(m.arrival)} <{m.sender}>")
                for st in q.states(m.id):
                    print(_state_line(st))
            print(f"{n} message(s) queued" if n else "queue is empty")
            return 0
        if args.queue_command == "flush":
            n = q.make_due()
            print(f"{n} message(s) due now")
            return 0
        msg = q.get(args.id)
        if msg is None:
            print(f"smtpedge: no message {args.id} in the queue", file=sys.stderr)
            return 1
        if args.queue_command == "retry":
            q.make_due(args.id)
            print(f"{args.id} due now")
            return 0
        if args.queue_command == "remove":
            q.remove(args.id)
            print(f"{args.id} removed")
            return 0
        print(f"id: {msg.id}")
        print(f"arrival: {datetime.fromtimestamp(msg.arrival).isoformat()}")
        print(f"sender: <{msg.sender}>")
        for k, v in msg.raw_mail_params:
            print(f"mail parameter: {k}" + ("" if v is None else f"={v}"))
        print(f"client: {json.dumps(msg.client)}")
        for st in q.states(msg.id):
            r = st.recipient
            extra = "".join(f" {k}" + ("" if v is None else f"={v}") for k, v in r.raw_params)
            print(f"recipient: <{r.address}>{extra}")
            print("  state:" + _state_line(st)[1:])
        print(f"size: {msg.size}")
        print()
        content = q.content(msg.id) or b""
        sys.stdout.flush()
        sys.stdout.buffer.write(content)
        sys.stdout.flush()
        return 0
    finally:
        q.close()


def _run_once(config: Config) -> int:
    from smtpedge.config import ConfigError
    from smtpedge.delivery import Delivery, QueueRunner
    from smtpedge.log import configure
    from smtpedge.queue import DataDirectoryBusy, DataDirectoryLock

    try:
        lock = DataDirectoryLock(config.spool_path)
    except DataDirectoryBusy as exc:
        print(f"smtpedge: {exc}; its queue runner delivers (use 'smtpedge queue flush' to "
              "make everything due now)", file=sys.stderr)  # fmt: skip
        return 1
    try:
        configure(config.log_path, fmt=config.log_format)
        try:
            delivery = Delivery(config)
        except ConfigError as exc:
            print(f"smtpedge: {exc}", file=sys.stderr)
            return 2

        async def once() -> tuple[int, int, int, int]:
            runner = QueueRunner(config, delivery)
            try:
                n = await runner.run_once()
            finally:
                await runner.close()
            s = runner.stats
            return n, s.delivered, s.deferred, s.failed

        n, delivered, deferred, failed = asyncio.run(once())
        print(f"{n} message(s) tried: {delivered} recipient(s) delivered, {deferred} deferred, "
              f"{failed} failed")  # fmt: skip
        return 0
    finally:
        lock.release()
