"""kill -9 under load: no acknowledged message is lost, and nothing
half-written is visible after a restart."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

from serverutil import Client, ServeProcess
from smtpedge.queue import Queue


def _load(port: int, worker: int, acked: dict[str, bytes], stop: threading.Event) -> None:
    rnd = random.Random(worker)
    n = 0
    while not stop.is_set():
        try:
            c = Client(port, timeout=5)
            c.reply()
            c.cmd("EHLO load.example")
            while not stop.is_set():
                n += 1
                tag = f"w{worker}-m{n}"
                # Sizes straddle spool_inline_max and the streaming threshold, so
                # every storage path is hit: inline, spool file, file written on arrival.
                size = rnd.choice([200, 3000, 9000, 40000, 600_000])
                body = f"Subject: {tag}\r\n\r\n".encode() + b"x" * size + f"\r\nEND {tag}".encode()
                reply = c.send_message(f"{tag}@example.org", ["r@example.net"], body)
                if reply.startswith("250 2.0.0 OK id="):
                    acked[reply.split("id=")[1].strip()] = body
        except (OSError, ConnectionError, AssertionError):
            time.sleep(0.01)


def test_kill_9_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    spool = tmp_path / "data"
    acked: dict[str, bytes] = {}
    rounds = 3
    for round_no in range(rounds):
        srv = ServeProcess(spool, spool_inline_max="8K")
        stop = threading.Event()
        threads = [
            threading.Thread(target=_load, args=(srv.port, round_no * 100 + i, acked, stop))
            for i in range(8)
        ]
        for t in threads:
            t.start()
        time.sleep(random.uniform(0.8, 1.6))
        srv.kill()  # SIGKILL, mid-flight
        stop.set()
        for t in threads:
            t.join(20)
    # Restart once more: recovery removes half-written spool files.
    ServeProcess(spool).stop()
    q = Queue(spool)
    ids = set(q.ids())
    print(f"{len(acked)} acknowledged over {rounds} kills, {len(ids)} in the queue")
    assert len(acked) > 50, "the load reached the server"
    missing = set(acked) - ids
    assert not missing, f"{len(missing)} acknowledged messages lost"
    for qid in ids:
        msg = q.get(qid)
        content = q.content(qid)
        assert msg is not None and content is not None
        assert len(content) == msg.size
        tag = msg.sender.split("@")[0]
        assert content.endswith(f"\r\nEND {tag}\r\n".encode()), f"{qid} is incomplete"
        if qid in acked:
            assert content.endswith(acked[qid] + b"\r\n")
    referenced = {p for p in (spool / "spool").glob("*/*")}
    assert not [p for p in referenced if p.name.endswith(".tmp")], "no temporary files remain"
    assert (
        len(referenced)
        == q._db.execute("SELECT count(*) FROM messages WHERE spool_file IS NOT NULL").fetchone()[0]
    ), "every spool file belongs to a committed message"
