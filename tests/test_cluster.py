"""Three ``smtpedge serve`` nodes behind HAProxy, with their per-client
limits in Redis: the configuration of docs/cluster.md, run for real on
127.0.0.x (haproxy and redis-server from Debian's packages)."""

from __future__ import annotations

import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from redislab import RedisServer
from serverutil import (
    Client,
    ServeProcess,
    free_port,
    metric,
    peer,
    scrape,
    wait_for,
    wait_port,
)
from smtpedge.queue import Queue

DOC = Path(__file__).parent.parent / "docs" / "cluster.md"
NODES = ("127.0.0.11", "127.0.0.12", "127.0.0.13")


def _block(kind: str) -> str:
    match = re.search(rf"```{kind}\n(.*?)```", DOC.read_text(), re.S)
    assert match, f"docs/cluster.md has no {kind} block"
    return match.group(1)


class Cluster:
    """docs/cluster.md's haproxy.cfg and node configuration, with loopback
    addresses and quick health checks."""

    def __init__(self, tmp: Path, **node_options: Any) -> None:
        self.tmp = tmp
        self.redis = RedisServer(tmp / "redis")
        self.port = free_port()
        node_port = free_port()
        self.stats = tmp / "haproxy.sock"
        cfg = _block("haproxy")
        cfg = cfg.replace("log /dev/log local0", "log stderr format short local0")
        cfg = cfg.replace("/run/haproxy/admin.sock", str(self.stats))
        cfg = cfg.replace("bind :25", f"bind 127.0.0.1:{self.port}")
        cfg = cfg.replace("inter 2s fall 3 rise 2", "inter 200ms fall 3 rise 1")
        for i, addr in enumerate(NODES, 1):
            cfg = cfg.replace(f"10.0.0.1{i}:25", f"{addr}:{node_port}")
        (tmp / "haproxy.cfg").write_text(cfg)
        base = tomllib.loads(_block("toml"))
        self.nodes: list[ServeProcess] = []
        self.metrics: list[str] = []
        for i, addr in enumerate(NODES, 1):
            options = dict(base)
            options.update(
                primary_hostname=f"mx{i}.example.net", local_interfaces=[addr], port=node_port,
                hosts_proxy="127.0.0.1", limits_store=self.redis.url,
                metrics_address=f"{addr}:{free_port()}", relay_from_hosts="127.0.0.0/8",
            )  # fmt: skip
            options.pop("spool_directory")
            options.pop("daemon_smtp_ports")
            options.update(node_options)
            self.metrics.append(options["metrics_address"])
            self.nodes.append(ServeProcess(tmp / f"node{i}", **options))
        self.haproxy_log = open(tmp / "haproxy.log", "wb")
        self.haproxy = subprocess.Popen(
            [peer("haproxy"), "-db", "-f", str(tmp / "haproxy.cfg")],
            stdout=self.haproxy_log, stderr=self.haproxy_log,
        )  # fmt: skip
        wait_port(self.port)
        assert wait_for(lambda: self.up() == {"node1", "node2", "node3"}), self.status()

    def status(self) -> dict[str, tuple[str, str, str]]:
        """Each server's state, last check and its description, from HAProxy's
        stats socket."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.stats))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        head = lines[0].lstrip("# ").split(",")
        out = {}
        for line in lines[1:]:
            row = dict(zip(head, line.split(","), strict=False))
            if row.get("pxname") == "smtpedge" and row["svname"].startswith("node"):
                out[row["svname"]] = (row["status"], row["check_status"], row["check_desc"])
        return out

    def up(self) -> set[str]:
        """The servers HAProxy has up."""
        return {name for name, (state, _, _) in self.status().items() if state.startswith("UP")}

    def metric(self, name: str, labels: str = "") -> float:
        """A metric summed over the nodes that still answer."""
        total = 0.0
        for address in self.metrics:
            try:
                total += metric(scrape(address), name, labels)
            except OSError:
                continue
        return total

    def queued_subjects(self) -> list[str]:
        """Every test message's subject in every node's queue (a dead node's too)."""
        out = []
        for node in self.nodes:
            q = Queue(node.spool)
            try:
                for qid in q.ids():
                    content = q.content(qid) or b""
                    m = re.search(rb"Subject: (t-[0-9a-f]+)", content)
                    if m:
                        out.append(m.group(1).decode())
            finally:
                q.close()
        return out

    def stop(self) -> None:
        for node in self.nodes:  # drain them all at once, haproxy still checking
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            node.stop()
        self.haproxy.terminate()
        self.haproxy.wait(10)
        self.haproxy_log.close()
        self.redis.stop()


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Any]:
    made: list[Cluster] = []

    def make(**options: Any) -> Cluster:
        c = Cluster(tmp_path, **options)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


class Senders:
    """Threads sending one message per session through HAProxy, each with a
    unique subject; records which got a 250, and what each failure was."""

    def __init__(self, port: int, threads: int = 4) -> None:
        self.port = port
        self.acked: list[str] = []
        self.refused: list[str] = []  # an SMTP reply refused the session or message
        self.broken: list[str] = []  # no reply: reset, or closed without one
        self.stopped = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            subject = f"t-{uuid.uuid4().hex}"
            body = f"Subject: {subject}\r\n\r\nthrough haproxy\r\n".encode()
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as s:
                    s.sendmail("load@example.org", ["r@example.net"], body)
                self.acked.append(subject)
            except (smtplib.SMTPConnectError, smtplib.SMTPResponseException,
                    smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused) as exc:  # fmt: skip
                self.refused.append(repr(exc))
            except (OSError, smtplib.SMTPServerDisconnected) as exc:
                self.broken.append(repr(exc))

    def stop(self) -> None:
        self.stopped.set()
        for t in self._threads:
            t.join(60)


def _queued_from(nodes: list[Any], sender: str) -> int:
    """How many messages from ``sender`` the nodes' queues hold: the queue is
    written before the 250, so unlike the log it never trails the client."""
    total = 0
    for node in nodes:
        q = Queue(node.spool)
        try:
            total += sum(m.sender == sender for m in q.messages())
        finally:
            q.close()
    return total


def _smtp_source(port: int, count: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [peer("smtp-source"), "-s", "10", "-m", str(count), "-l", "1024",
         "-f", "source@example.org", "-t", "r@example.net", "-M", "source.example",
         f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


# One test client sends all the load: limits off, as for a trusted relay.
UNLIMITED = {"smtp_connect_ratelimit": "", "smtp_accept_max_per_host": 0}


def test_smtp_source_through_haproxy_with_a_node_killed(cluster_factory: Any) -> None:
    cluster = cluster_factory(**UNLIMITED)
    source = _smtp_source(cluster.port, 400)
    senders = Senders(cluster.port)
    assert wait_for(lambda: len(senders.acked) >= 30, timeout=120)
    victim = cluster.nodes[1]
    victim.kill()  # kill -9, mid-load
    assert wait_for(lambda: "node2" not in cluster.up()), "haproxy marks it down"
    source.wait(300)  # it may have stopped at the killed node's sessions
    # With the node marked down, a whole smtp-source run goes through the others.
    alive = [n for i, n in enumerate(cluster.nodes) if i != 1]
    before = _queued_from(alive, "source@example.org")
    second = _smtp_source(cluster.port, 300)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    after = _queued_from(alive, "source@example.org")
    assert after - before == 300, "every message of the second run was taken"
    acked = len(senders.acked)
    assert wait_for(lambda: len(senders.acked) >= acked + 30, timeout=120), "routed around it"
    senders.stop()
    assert cluster.up() == {"node1", "node3"}
    subjects = cluster.queued_subjects()
    assert len(set(subjects)) == len(subjects), "no message is in two queues"
    missing = set(senders.acked) - set(subjects)
    assert not missing, f"{len(missing)} acknowledged message(s) lost"
    assert len(subjects) >= len(senders.acked)
    counted = cluster.metric("smtpedge_messages_total", 'result="accepted"')
    # The logs are written off the event loop, so they may trail the metric a little.
    assert wait_for(lambda: counted == sum(n.log.count(" <= <") for n in alive)), (
        "metrics match the logs"
    )
    assert cluster.metric("smtpedge_connections_total", 'outcome="health_check"') > 0
    assert cluster.metric("smtpedge_proxy_headers_total", 'command="PROXY"') >= counted


def test_limits_count_across_the_nodes_and_survive_redis_stopping(cluster_factory: Any) -> None:
    cluster = cluster_factory(smtp_accept_max_per_host=4, smtp_connect_ratelimit="")
    clients = [Client(cluster.port, source="127.0.0.50") for _ in range(10)]
    greetings = [c.reply()[:3] for c in clients]
    assert sorted(greetings) == ["220"] * 4 + ["421"] * 6, greetings
    assert wait_for(lambda: any("Too many concurrent" in n.log for n in cluster.nodes)), (
        "refusals came from the nodes, counted in Redis"
    )
    assert cluster.metric("smtpedge_connections_total", 'outcome="refused_per_host"') == 6
    assert Client(cluster.port, source="127.0.0.51").reply().startswith("220")
    for c in clients:
        c.close()
    # Redis stops: mail keeps flowing through every node, and the metric shows it.
    cluster.redis.stop()
    senders = Senders(cluster.port, threads=2)
    assert wait_for(lambda: len(senders.acked) >= 12, timeout=120)
    senders.stop()
    assert senders.broken == [] and senders.refused == []
    assert cluster.metric("smtpedge_limits_store_errors_total") >= 1
    assert wait_for(lambda: any("unreachable" in n.log for n in cluster.nodes))


def test_the_rate_limit_counts_across_the_nodes(cluster_factory: Any) -> None:
    cluster = cluster_factory(smtp_connect_ratelimit="5 / 1h / per_conn / leaky",
                              smtp_accept_max_per_host=0)  # fmt: skip
    replies = []
    for _ in range(8):
        c = Client(cluster.port, source="127.0.0.52")
        replies.append(c.reply()[:3])
        c.close()
    assert replies == ["220"] * 5 + ["421"] * 3, replies
    assert wait_for(lambda: sum("[127.0.0.52]" in n.log for n in cluster.nodes) >= 2), (
        "the connections went to several nodes"
    )


def test_drain_under_load_loses_nothing(cluster_factory: Any) -> None:
    cluster = cluster_factory(drain_timeout="20s", **UNLIMITED)
    senders = Senders(cluster.port)
    assert wait_for(lambda: len(senders.acked) >= 30, timeout=120)
    node = cluster.nodes[0]
    done = subprocess.run([sys.executable, "-m", "smtpedge", "ctl", "drain", "--wait",
                           "--config", str(node.config_path)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "node1" not in cluster.up()
    acked = len(senders.acked)
    assert wait_for(lambda: len(senders.acked) >= acked + 20, timeout=120)
    senders.stop()
    assert senders.broken == [], "every client got a reply"
    node.wait_log("draining: failing health checks")
    node.wait_log("health check from")
    subjects = cluster.queued_subjects()
    assert not set(senders.acked) - set(subjects), "no acknowledged message lost"
    assert len(set(subjects)) == len(subjects)
