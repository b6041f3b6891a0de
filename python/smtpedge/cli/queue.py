"""``smtpedge queue list|show|remove``: look at a server's queue (safe beside
a running server)."""

from __future__ import annotations

import argparse
import json
import sys

from smtpedge.config import Config


def run(args: argparse.Namespace, config: Config) -> int:
    from datetime import datetime

    from smtpedge.queue import Queue

    if not (config.spool_path / "queue.db").exists():
        where = config.spool_path.resolve()
        what = "no data directory" if not config.spool_path.is_dir() else "no queue"
        print(f"smtpedge: {what} at {where} (give the server's with --spool-directory "
              "or --config)", file=sys.stderr)  # fmt: skip
        return 1
    q = Queue(config.spool_path, inline_max=config.spool_inline_max)
    try:
        if args.queue_command == "list":
            n = 0
            for m in q.messages():
                n += 1
                when = datetime.fromtimestamp(m.arrival).strftime("%Y-%m-%d %H:%M:%S")
                print(f"{m.id} {m.size:>9} {when} <{m.sender}>")
                for r in m.recipients:
                    print(f"          <{r.address}>")
            print(f"{n} message(s) queued" if n else "queue is empty")
            return 0
        msg = q.get(args.id)
        if msg is None:
            print(f"smtpedge: no message {args.id} in the queue", file=sys.stderr)
            return 1
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
        for r in msg.recipients:
            extra = "".join(f" {k}" + ("" if v is None else f"={v}") for k, v in r.raw_params)
            print(f"recipient: <{r.address}>{extra}")
        print(f"size: {msg.size}")
        print()
        content = q.content(msg.id) or b""
        sys.stdout.flush()
        sys.stdout.buffer.write(content)
        sys.stdout.flush()
        return 0
    finally:
        q.close()
