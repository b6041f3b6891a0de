"""Per-client limits counted in Redis across several ``smtpedge serve``
nodes (``limits_store``), with a real redis-server on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from redislab import RedisServer
from serverutil import Client, ServeProcess, metric, scrape, wait_for


@pytest.fixture
def redis_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    with RedisServer(tmp_path / "redis") as r:
        yield r


def _node(tmp_path: Path, name: str, redis: RedisServer, **options: object) -> ServeProcess:
    options.setdefault("limits_store", redis.url)
    return ServeProcess(tmp_path / name, **options)


def _greetings(clients: list[Client]) -> list[str]:
    return [c.reply()[:3] for c in clients]


def test_the_per_host_limit_counts_across_nodes(tmp_path: Path, redis_server: RedisServer) -> None:
    a = _node(tmp_path, "a", redis_server, smtp_accept_max_per_host=3)
    b = _node(tmp_path, "b", redis_server, smtp_accept_max_per_host=3)
    first = [Client(a.port, source="127.0.0.44") for _ in range(2)]
    assert _greetings(first) == ["220", "220"]
    second = [Client(b.port, source="127.0.0.44") for _ in range(2)]
    greetings = _greetings(second)
    assert sorted(greetings) == ["220", "421"], "three in all, across the two nodes"
    refused = b.wait_log("Too many concurrent SMTP connections from [127.0.0.44]")
    assert "refused" in refused
    assert Client(b.port, source="127.0.0.45").reply().startswith("220"), "others are not held"
    # A connection that ends gives its slot back, whichever node held it.
    first[0].cmd("QUIT")
    first[0].close()
    key = "smtpedge:{127.0.0.44}:c"
    assert wait_for(lambda: redis_server.client().zcard(key) == 2)
    assert Client(b.port, source="127.0.0.44").reply().startswith("220")
    for srv in (a, b):
        assert srv.stop() == 0
    # A node that stops gives back what it held.
    assert redis_server.client().zcard(key) == 0


def test_the_rate_limit_counts_across_nodes(tmp_path: Path, redis_server: RedisServer) -> None:
    rate = "4 / 1h / per_conn / leaky"
    a = _node(tmp_path, "a", redis_server, smtp_connect_ratelimit=rate)
    b = _node(tmp_path, "b", redis_server, smtp_connect_ratelimit=rate)
    replies = []
    for i in range(6):
        c = Client((a, b)[i % 2].port, source="127.0.0.46")
        replies.append(c.reply())
        c.close()
    assert [r[:3] for r in replies] == ["220"] * 4 + ["421"] * 2, replies
    assert "Connection rate from [127.0.0.46] too high" in replies[4]
    assert Client(a.port, source="127.0.0.47").reply().startswith("220")


def test_slots_of_a_node_killed_with_kill_9_lapse(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    a = _node(tmp_path, "a", redis_server, smtp_accept_max_per_host=2, limits_store_lease="1s")
    b = _node(tmp_path, "b", redis_server, smtp_accept_max_per_host=2, limits_store_lease="1s")
    held = [Client(a.port, source="127.0.0.48") for _ in range(2)]
    assert _greetings(held) == ["220", "220"]
    # Leases are renewed while the connections stay open.
    key = "smtpedge:{127.0.0.48}:c"
    r = redis_server.client()
    first = min(score for _, score in r.zrange(key, 0, -1, withscores=True))
    assert wait_for(lambda: min(s for _, s in r.zrange(key, 0, -1, withscores=True)) > first)
    assert Client(b.port, source="127.0.0.48").reply().startswith("421")
    a.kill()

    # Nobody renews node a's slots now: they lapse, and b admits the client.
    def admitted() -> bool:
        c = Client(b.port, source="127.0.0.48")
        try:
            return c.reply().startswith("220")
        finally:
            c.close()

    assert wait_for(admitted)


def test_mail_flows_while_redis_is_down(tmp_path: Path, redis_server: RedisServer) -> None:
    srv = _node(tmp_path, "a", redis_server, smtp_accept_max_per_host=5,
                metrics_address=f"127.0.0.1:{_port()}")  # fmt: skip
    redis_server.stop()
    for i in range(3):
        c = Client(srv.port)
        assert c.reply().startswith("220"), "fail open: still accepting"
        c.cmd("EHLO down.example")
        assert c.send_message(f"s{i}@example.org", ["r@example.net"], b"x").startswith("250")
        c.cmd("QUIT")
    log = srv.wait_log("unreachable")
    assert log.count("limits store redis://") == 1, "one line per outage"
    assert "accepting connections without per-host limits" in log
    errors = _metric(srv, "smtpedge_limits_store_errors_total")
    assert errors >= 1
    redis_server.start()

    def back() -> bool:
        c = Client(srv.port)
        c.reply()
        c.close()
        return "reachable again" in srv.log

    assert wait_for(back)
    assert _metric(srv, "smtpedge_connections_total", 'outcome="accepted"') >= 4


def test_fail_closed_refuses_while_redis_is_down(tmp_path: Path, redis_server: RedisServer) -> None:
    srv = _node(tmp_path, "a", redis_server, smtp_accept_max_per_host=5, limits_store_fail="closed")
    assert Client(srv.port).reply().startswith("220")
    redis_server.stop()
    reply = Client(srv.port).reply()
    assert reply.startswith("421 4.3.0") and "limits unavailable" in reply
    assert "refusing connections with 421 (limits_store_fail = closed)" in srv.wait_log("unreach")


def _port() -> int:
    from serverutil import free_port

    return free_port()


def _metric(srv: ServeProcess, name: str, labels: str = "") -> float:
    return metric(scrape(srv.metrics), name, labels)
