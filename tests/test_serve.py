"""``smtpedge serve`` as a user runs it: the embedded default, workers, and a
graceful stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from serverutil import Client, ServeProcess, wait_for
from smtpedge.queue import Queue


def test_serve_with_no_arguments_uses_the_embedded_default(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "smtpedge", "serve"], cwd=tmp_path,
                            stderr=subprocess.PIPE)  # fmt: skip
    main_log = tmp_path / "smtpedge-data" / "log" / "main.log"
    try:
        assert wait_for(lambda: main_log.exists() and "smtpedge ready" in main_log.read_text())
        c = Client(2525)
        assert c.reply().startswith("220 ")
        c.cmd("EHLO default.example")
        reply = c.send_message("a@example.org", ["root@localhost"], b"Subject: default\r\n\r\nhi")
        assert reply.startswith("250 2.0.0 OK id=")
        c.cmd("QUIT")
        # Local mail is delivered to the user's maildir in the data directory.
        new = tmp_path / "smtpedge-data" / "mail" / "root" / "new"
        assert wait_for(lambda: new.is_dir() and len(os.listdir(new)) == 1)
        assert wait_for(lambda: "Completed" in main_log.read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    data = tmp_path / "smtpedge-data"
    [name] = os.listdir(new)
    delivered = (new / name).read_bytes()
    assert delivered.startswith(b"Return-Path: <a@example.org>\nDelivered-To: root@localhost\n")
    assert b"Subject: default\n\nhi" in delivered
    assert len(Queue(data)) == 0
    log = (data / "log" / "main.log").read_text()
    assert "listening on [127.0.0.1]:2525" in log and "<= <a@example.org>" in log
    cpus = len(os.sched_getaffinity(0))
    assert f"smtpedge starting: {cpus} worker(s), uvloop," in log, "the defaults: a worker per CPU"
    assert "=> <root@localhost> R=localuser T=local_delivery" in log
    assert b"<= <a@example.org>" in err, "log lines go to stderr too"
    listing = subprocess.run([sys.executable, "-m", "smtpedge", "queue", "list"],
                             cwd=tmp_path, capture_output=True, text=True, check=True)  # fmt: skip
    assert "queue is empty" in listing.stdout


def test_workers_share_the_socket_and_stop_gracefully(tmp_path: Path) -> None:
    srv = ServeProcess(tmp_path / "data", workers=2)
    clients = [Client(srv.port) for _ in range(12)]
    for i, c in enumerate(clients):
        c.reply()
        c.cmd("EHLO w.example")
        assert c.send_message(f"s{i}@example.org", ["r@example.net"], b"x").startswith("250")
    children = Path(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children").read_text().split()
    assert len(children) == 2, "two worker processes"
    idle = clients[0]
    assert srv.stop() == 0
    assert idle.reply().startswith("421 4.3.2"), "idle sessions are told the server stops"
    assert len(Queue(tmp_path / "data")) == 12
    pids = {line.split("[")[1].split("]")[0] for line in srv.log.splitlines() if "<= <" in line}
    assert pids <= set(children), "messages were accepted by the workers"
    assert "2 worker(s)" in srv.log
    for c in clients:
        c.close()
    assert not [p for p in os.listdir(tmp_path / "data" / "spool") if p.endswith(".tmp")]


def test_per_host_limit_counts_across_workers(tmp_path: Path) -> None:
    with ServeProcess(tmp_path / "data", workers=2, smtp_accept_max_per_host=2) as srv:
        clients = [Client(srv.port, source="127.0.0.44") for _ in range(8)]
        replies = [c.reply()[:3] for c in clients]
        assert sorted(replies) == ["220"] * 2 + ["421"] * 6, replies
        other = Client(srv.port, source="127.0.0.45")
        assert other.reply().startswith("220")


def test_accept_max_counts_across_workers(tmp_path: Path) -> None:
    with ServeProcess(tmp_path / "data", workers=2, smtp_accept_max=3) as srv:
        clients = [Client(srv.port) for _ in range(7)]
        replies = [c.reply()[:3] for c in clients]
        assert sorted(replies) == ["220"] * 3 + ["421"] * 4, replies
        for c, r in zip(clients, replies, strict=True):
            if r == "220":
                c.cmd("QUIT")
        assert wait_for(lambda: Client(srv.port).reply().startswith("220")), "slots come back"
