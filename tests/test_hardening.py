"""Hostile and unlucky clients against ``smtpedge serve``: a client that never
reads its replies, slow clients, half-closes, abusive recipient lists, split
PROXY headers, failing storage, a second server on the same data directory and
killed workers. Each test checks what the server promises: bounded memory,
time and log volume per client, a clear reply or a clean close, and service
to everyone else."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from serverutil import Client, ServeProcess, mounted_tmpfs, wait_for
from smtpedge.queue import Queue, incoming_directory
from smtpedge.receiving.session import Recipient


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def served(port: int) -> bool:
    """A fresh client gets a whole session: banner, EHLO, QUIT."""
    c = Client(port, timeout=30)
    try:
        return (c.reply().startswith("220") and c.cmd("EHLO other.example").startswith("250")
                and c.cmd("QUIT").startswith("221"))  # fmt: skip
    finally:
        c.close()


def test_pipelining_client_that_never_reads_cannot_grow_memory(tmp_path: Path) -> None:
    """30 MB of pipelined HELP (each answered by ~13 times its size) from a
    client that reads nothing: the server stops reading once its output
    backs up, so its memory stays flat; everyone else is still served, and
    the replies all come once the client reads. (Without the limit on
    non-mail commands, which would end such a session after ten.)"""
    with ServeProcess(tmp_path / "data", smtp_accept_max_nonmail=0) as srv:
        base = rss_kib(srv.proc.pid)
        c = Client(srv.port, timeout=30)
        assert c.reply().startswith("220")
        assert "PIPELINING" in c.cmd("EHLO pipe.example")
        sock = c.sock
        sock.setblocking(False)
        chunk = b"HELP\r\n" * 10_000
        sent = peak = 0
        while sent < 30 * 1024 * 1024:
            _, writable, _ = select.select([], [sock], [], 3.0)
            peak = max(peak, rss_kib(srv.proc.pid))
            if not writable:
                break  # the server has stopped reading: what it promises
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                continue
        peak = max(peak, rss_kib(srv.proc.pid))
        assert served(srv.port), "other clients are served meanwhile"
        peak = max(peak, rss_kib(srv.proc.pid))
        growth = peak - base
        print(f"\nserver RSS {base} KiB at start, peak {peak} KiB (+{growth} KiB) "
              f"after {sent / 2**20:.1f} MiB of pipelined HELP left unread")  # fmt: skip
        assert sent < 30 * 1024 * 1024, "the server stopped reading before taking it all"
        assert growth < 40 * 1024, f"memory grew by {growth} KiB"
        # Now read: the server resumes; the replies arrive in order.
        sock.setblocking(True)
        got = b""
        want = (sent // 6) * len(b"214 2.0.0 ")
        while len(got) < min(want, 4 * 1024 * 1024):
            data = sock.recv(1 << 20)
            assert data, "connection closed while replies were due"
            got += data
        lines = got.split(b"\r\n")[:-1]
        assert all(line.startswith(b"214 2.0.0 Commands:") for line in lines)
        assert len(lines) > 20_000
        sock.close()
        assert rss_kib(srv.proc.pid) - base < 40 * 1024


def test_a_client_that_never_sends_mail_is_dropped(tmp_path: Path) -> None:
    """NOOP, HELP, RSET and VRFY forever (each answered long before any
    timeout) would hold a connection slot for ever: after
    smtp_accept_max_nonmail of them the client gets 421 and is closed, with
    one log line; a client that sends mail is not limited by it, and a host
    outside smtp_accept_max_nonmail_hosts is not counted."""
    with ServeProcess(tmp_path / "data", smtp_accept_max_nonmail=5,
                      smtp_accept_max_per_connection=3) as srv:  # fmt: skip
        c = Client(srv.port)
        assert c.reply().startswith("220") and c.cmd("EHLO idle.example").startswith("250")
        replies = [c.cmd(verb) for verb in ("NOOP", "HELP", "RSET", "RSET", "VRFY x", "NOOP")]
        assert [r[:3] for r in replies] == ["250", "214", "250", "250", "502", "250"]
        assert c.cmd("NOOP") == "421 4.7.0 mx.test Too many non-mail commands, closing connection"
        assert c.closed_without_data()
        srv.wait_log("closed: more than 5 non-mail commands (last was NOOP)")
        # Messages give the free RSET and EHLO back; the fourth MAIL is refused.
        m = Client(srv.port)
        assert m.reply().startswith("220")
        for i in range(3):
            assert m.cmd("RSET").startswith("250") and m.cmd("EHLO mail.example").startswith("250")
            body = b"Subject: %d\r\n\r\nx" % i
            assert m.send_message("a@example.org", ["b@example.net"], body).startswith("250")
        assert m.cmd("MAIL FROM:<a@example.org>").startswith("421 4.7.0 mx.test Too many messages")
        assert m.closed_without_data()
        srv.wait_log("closed: more than 3 MAIL commands")
        assert len(Queue(srv.spool).ids()) == 3
    with ServeProcess(tmp_path / "data2", smtp_accept_max_nonmail=2,
                      smtp_accept_max_nonmail_hosts=["!127.0.0.1", "*"]) as srv:  # fmt: skip
        c = Client(srv.port)
        assert c.reply().startswith("220") and c.cmd("EHLO idle.example").startswith("250")
        assert all(c.cmd("NOOP").startswith("250") for _ in range(50))
        c.close()


def _trickle(sock: socket.socket, data: bytes, gap: float, limit: float) -> tuple[bytes, float]:
    """Send ``data`` a byte at a time, ``gap`` apart, until the server answers
    or ``limit`` seconds pass; return what it said and when."""
    t0 = time.monotonic()
    sock.settimeout(gap)
    out = b""
    i = 0
    while time.monotonic() - t0 < limit:
        try:
            sock.send(data[i % len(data) : i % len(data) + 1])
        except (BrokenPipeError, ConnectionResetError):
            break
        i += 1
        try:
            got = sock.recv(4096)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not got:
            break
        out += got
        if b"\r\n" in out:
            break
    return out, time.monotonic() - t0


@pytest.mark.parametrize("stage", ["command", "data"])
def test_a_line_that_trickles_in_is_timed_out(tmp_path: Path, stage: str) -> None:
    """smtp_receive_timeout (smtp_data_timeout) is the time for a whole line:
    a byte every 0.2 s does not keep the connection."""
    options = {"smtp_receive_timeout": "2s", "smtp_data_timeout": "2s"}
    with ServeProcess(tmp_path / "data", **options) as srv:
        c = Client(srv.port, timeout=30)
        assert c.reply().startswith("220")
        if stage == "data":
            c.cmd("EHLO slow.example")
            c.cmd("MAIL FROM:<a@example.org>")
            c.cmd("RCPT TO:<b@example.net>")
            assert c.cmd("DATA").startswith("354")
        out, took = _trickle(c.sock, b"NOOP NOOP NOOP" if stage == "command" else b"xxxx", 0.2, 60)
        print(f"\n{stage} line trickled a byte per 0.2s: {out!r} after {took:.1f}s")
        assert out.startswith(b"421 4.4.2"), out
        assert took > 1.0, "not before the timeout (its clock started at the last whole line)"
        assert c.closed_without_data(30)
        log = srv.wait_log(f"SMTP {stage} timeout for")
        assert re.search(rf"SMTP {stage} timeout for \[127\.0\.0\.1\]:\d+ after 2\.0s", log)


def test_slowloris_connections_do_not_hold_every_slot(tmp_path: Path) -> None:
    """smtp_accept_max connections that each trickle bytes: all of them are
    timed out, and the slots come back for real clients."""
    with ServeProcess(tmp_path / "data", smtp_accept_max=40, smtp_receive_timeout="2s",
                      smtp_accept_max_per_host=0) as srv:  # fmt: skip
        socks = []
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
            assert s.recv(1024).startswith(b"220")
            socks.append(s)
        c = Client(srv.port)
        assert c.reply().startswith("421"), "every slot is taken"
        t0 = time.monotonic()
        open_socks = list(socks)
        while open_socks and time.monotonic() - t0 < 60:
            for s in list(open_socks):
                try:
                    s.send(b"E")
                except OSError:
                    open_socks.remove(s)
            readable, _, _ = select.select(open_socks, [], [], 0.2)
            for s in readable:
                try:
                    data = s.recv(1024)
                except OSError:
                    data = b""
                if not data or data.startswith(b"421 4.4.2"):
                    open_socks.remove(s)
        took = time.monotonic() - t0
        print(f"\n40 trickling connections all closed after {took:.1f}s")
        assert not open_socks, f"{len(open_socks)} still open after {took:.0f}s"
        assert wait_for(lambda: served(srv.port)), "the slots came back"
        for s in socks:
            s.close()


def _half_close(port: int, tail: bytes) -> bytes:
    """Send a message, then ``tail`` (the final dot, perhaps QUIT), shut
    down the sending side, and return everything the server said."""
    c = Client(port, timeout=30)
    assert c.reply().startswith("220")
    assert c.cmd("EHLO half.example").startswith("250")
    sock = c.sock
    sock.sendall(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    got = b""
    while b"354" not in got:
        got += sock.recv(4096)
    sock.sendall(b"Subject: half\r\n\r\nbody\r\n" + tail)
    sock.shutdown(socket.SHUT_WR)
    while chunk := sock.recv(4096):
        got += chunk
    sock.close()
    return got


def test_half_close_after_quit_still_gets_250_and_221(tmp_path: Path) -> None:
    with ServeProcess(tmp_path / "data") as srv:
        text = _half_close(srv.port, b".\r\nQUIT\r\n").decode()
        assert re.search(r"\r\n250 2\.0\.0 OK id=\S+\r\n221 ", text), text
        qid = re.search(r"OK id=(\S+)", text)[1]  # type: ignore[index]
        log = srv.wait_log(f"{qid} <= <a@example.org>")
        assert "closed by QUIT" in log or "end of input" in log
    assert Queue(tmp_path / "data").ids() == [qid]


def test_half_close_without_quit_gets_its_250(tmp_path: Path) -> None:
    with ServeProcess(tmp_path / "data") as srv:
        got = _half_close(srv.port, b".\r\n")
        assert b"\r\n250 2.0.0 OK id=" in got, got
        srv.wait_log("closed by the client (end of input, 1 message)")
        assert "<= <a@example.org>" in srv.log


def test_recipients_past_the_overshoot_end_the_session(tmp_path: Path) -> None:
    """200,000 pipelined RCPTs: the first recipients_max are taken, as many
    again get 452, then each counts as an error and the session ends; the log
    says so in a few lines and nobody else waits."""
    with ServeProcess(tmp_path / "data", recipients_max=100, smtp_max_synprot_errors=3) as srv:
        c = Client(srv.port, timeout=30)
        assert c.reply().startswith("220")
        assert c.cmd("EHLO many.example").startswith("250")
        sock = c.sock
        payload = b"MAIL FROM:<a@example.org>\r\n" + b"".join(
            b"RCPT TO:<r%d@example.net>\r\n" % i for i in range(200_000)
        )

        def send() -> None:
            try:
                sock.sendall(payload)
            except OSError:
                pass  # closed by the server, as it should be

        sender = threading.Thread(target=send)
        sender.start()
        assert served(srv.port), "another client is served meanwhile"
        got = c.buf
        while chunk := sock.recv(1 << 16):
            got += chunk
        sender.join(30)
        sock.close()
        replies = [line[:9] for line in got.split(b"\r\n") if line[3:4] == b" "]
        assert replies[0].startswith(b"250"), "MAIL"
        assert replies.count(b"250 2.1.5") == 100
        assert replies.count(b"452 4.5.3") == 103, "100 overshoot, then 3 errors"
        assert replies[-1].startswith(b"421"), replies[-3:]
        log = srv.wait_log("more refusal(s) not logged one by one")
        lines = [line for line in log.splitlines() if "many.example" in line or "refus" in line]
        print(f"\n{len(got)} bytes of replies; {len(log.splitlines())} log lines in all")
        assert len(log.splitlines()) < 40, "a few log lines, not one per recipient"
        assert lines


def test_replies_survive_input_behind_a_closing_error(tmp_path: Path) -> None:
    """A client whose pipelined commands end its session (too many unknown
    commands: 421) with a stream of junk behind them still gets every reply:
    the server half-closes and drops the rest of its input for a while
    instead of closing with unread input (which makes the kernel send a reset
    that throws the replies away)."""
    # Without smtp_enforce_sync the junk is not an early-talker error.
    with ServeProcess(tmp_path / "data", smtp_enforce_sync=False,
                      smtp_max_unknown_commands=3) as srv:  # fmt: skip
        for _ in range(10):
            c = Client(srv.port, timeout=30)
            assert c.reply().startswith("220")
            assert "PIPELINING" in c.cmd("EHLO junk.example")
            sock = c.sock
            junk = b"NOOP\r\n" + b"FOO\r\n" * 4 + b"x" * 200_000

            def send(sock: socket.socket = sock, junk: bytes = junk) -> None:
                try:
                    sock.sendall(junk)
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass  # the server stopped reading: its limit, as it should be

            sender = threading.Thread(target=send)
            sender.start()
            got = c.buf
            while chunk := sock.recv(1 << 16):  # ECONNRESET here is the defect
                got += chunk
            sender.join(30)
            sock.close()
            assert b"\r\n421 " in got, got[-200:]
        assert served(srv.port)


def test_split_proxy_header_from_a_host_not_in_hosts_proxy(tmp_path: Path) -> None:
    with ServeProcess(tmp_path / "data") as srv:
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert sock.recv(1024).startswith(b"220")
        sock.sendall(b"PRO")
        time.sleep(0.2)  # a segment of its own
        sock.sendall(b"XY TCP4 192.0.2.1 198.51.100.1 1234 25\r\nEHLO x\r\n")
        got = b""
        while chunk := sock.recv(4096):
            got += chunk
        assert got.startswith(b"554 5.7.0"), got
        srv.wait_log("which is not in hosts_proxy: refused")


def test_size_in_the_log_and_the_queue_agree(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ServeProcess(data) as srv:
        c = Client(srv.port)
        c.reply()
        c.cmd("EHLO size.example")
        reply = c.send_message(
            "a@example.org", ["b@example.net"], b"Subject: s\r\n\r\n" + b"y" * 999
        )
        qid = reply.split("id=")[1].strip()
        log = srv.wait_log(f"{qid} <=")
    logged = int(re.search(rf"{qid} <= .* S=(\d+)", log)[1])  # type: ignore[index]
    listing = subprocess.run([sys.executable, "-m", "smtpedge", "queue", "list",
                              "--spool-directory", str(data)],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    listed = int(re.search(rf"{qid}\s+(\d+)", listing)[1])  # type: ignore[index]
    assert logged == listed == Queue(data).get(qid).size  # type: ignore[union-attr]


def _in_flight_upload(port: int) -> Client:
    c = Client(port, timeout=30)
    c.reply()
    c.cmd("EHLO big.example")
    c.cmd("MAIL FROM:<big@example.org>")
    c.cmd("RCPT TO:<r@example.net>")
    assert c.cmd("DATA").startswith("354")
    c.send(b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 1500)  # 1.5 MB, no end yet
    return c


def test_second_server_on_the_same_data_directory_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ServeProcess(data, spool_inline_max="64K") as first:
        c = _in_flight_upload(first.port)
        incoming = data / "spool" / "incoming"
        assert wait_for(lambda: any(incoming.glob("*"))), "the upload is being spooled"
        [upload] = list(incoming.glob("*"))
        second = subprocess.run(
            [sys.executable, "-m", "smtpedge", "serve", "--config", str(first.config_path),
             "--port", "0"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode != 0
        assert f"in use by smtpedge process {first.proc.pid}" in second.stderr, second.stderr
        assert upload.exists(), "the running server's upload was not touched"
        c.send(b".\r\n")
        assert c.reply().startswith("250 2.0.0 OK id="), "and its client gets its 250"
        assert (data / "smtpedge.pid").read_text().strip() == str(first.proc.pid)
    listing = subprocess.run([sys.executable, "-m", "smtpedge", "queue", "list",
                              "--spool-directory", str(data)],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "1 message(s) queued" in listing


def test_queue_commands_work_beside_a_running_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ServeProcess(data) as srv:
        c = Client(srv.port)
        c.reply()
        c.cmd("EHLO q.example")
        qid = c.send_message("a@example.org", ["b@example.net"], b"x").split("id=")[1].strip()
        done = subprocess.run([sys.executable, "-m", "smtpedge", "queue", "show", qid,
                               "--spool-directory", str(data)],
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0 and "sender: <a@example.org>" in done.stdout


def _workers(srv: ServeProcess) -> list[int]:
    path = Path(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children")
    return [int(p) for p in path.read_text().split()]


def test_killed_worker_gives_back_its_slots_and_uploads(tmp_path: Path) -> None:
    """smtp_accept_max counts across workers; when a worker is killed, its
    connections stop counting at once (the survivor's still count), and its
    partial upload is removed."""
    data = tmp_path / "data"
    with ServeProcess(data, workers=2, smtp_accept_max=4, spool_inline_max="64K") as srv:
        clients = []
        pid_of: dict[int, int] = {}
        for i in range(3):
            c = Client(srv.port, timeout=30)
            assert c.reply().startswith("220")
            c.cmd("EHLO k.example")
            qid = c.send_message(f"k{i}@example.org", ["r@example.net"], b"x")
            qid = qid.split("id=")[1].strip()
            line = srv.wait_log(f"{qid} <=")
            pid = int(re.search(rf"\[(\d+)\] {qid} <=", line)[1])  # type: ignore[index]
            pid_of[c.sock.getsockname()[1]] = pid
            clients.append(c)
        upload = _in_flight_upload(srv.port)
        incoming = data / "spool" / "incoming"
        assert wait_for(lambda: any(incoming.glob("*")))
        [partial] = list(incoming.glob("*"))
        victim = int(partial.name.split(".")[0], 16)
        assert victim in _workers(srv)
        os.kill(victim, signal.SIGKILL)
        srv.wait_log(f"worker {victim} exited (killed by SIGKILL); restarting it, "
                     "1 partial upload(s) removed")  # fmt: skip
        assert not partial.exists()
        srv.wait_log("worker(s) accepting connections", 2)
        survivors = sum(1 for p in pid_of.values() if p != victim)
        # The slots the victim held are free; the survivor's are still counted.
        fresh = [Client(srv.port, timeout=30) for _ in range(6)]
        replies = sorted(c.reply()[:3] for c in fresh)
        assert replies.count("220") == 4 - survivors, (replies, survivors)
        for c in clients + fresh + [upload]:
            c.close()


@pytest.mark.parametrize(("fault", "options", "cause"), [
    ("full", "size=256k", "No space left on device (ENOSPC)"),
    ("read-only", "ro", "Read-only file system (EROFS)"),
])  # fmt: skip
def test_upload_that_cannot_be_stored_gets_451_and_its_cause(
    tmp_path: Path, fault: str, options: str, cause: str
) -> None:
    data = tmp_path / "data"
    incoming = incoming_directory(data)
    with mounted_tmpfs(incoming, options), ServeProcess(data, spool_inline_max="64K") as srv:
        c = Client(srv.port, timeout=30)
        c.reply()
        c.cmd("EHLO full.example")
        body = b"Subject: big\r\n\r\n" + (b"q" * 998 + b"\r\n") * 1000  # 1 MB
        reply = c.send_message("a@example.org", ["b@example.net"], body)
        assert reply.startswith("451 4.3.0"), reply
        log = srv.wait_log("NOT queued")
        assert cause in log, log
        assert not list(incoming.iterdir()), "nothing half-written stays"
        # The session goes on, and a message that fits in the database is taken.
        assert c.send_message("a@example.org", ["b@example.net"], b"small").startswith("250")
        assert c.cmd("QUIT").startswith("221")
    assert len(Queue(data)) == 1


def test_a_failed_transaction_removes_its_spool_files(tmp_path: Path) -> None:
    """A COMMIT that fails with the transaction already rolled back (what a
    full disk does): the original error is raised, and no spool file stays."""
    q = Queue(tmp_path, inline_max=10)
    db = sqlite3.connect(q.db_path)
    db.execute("CREATE TRIGGER full BEFORE INSERT ON recipients "
               "BEGIN SELECT RAISE(ROLLBACK, 'database or disk is full'); END")  # fmt: skip
    db.commit()
    db.close()
    with pytest.raises(sqlite3.DatabaseError, match="database or disk is full"):
        q.add("a@example.org", [Recipient("b@example.net")], b"x" * 100)
    assert not [p for p in (tmp_path / "spool").glob("*/*") if p.is_file()]
    assert len(q) == 0
