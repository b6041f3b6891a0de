"""Routers as Exim runs them: preconditions, redirect, accept, manualroute,
and dnslookup against a DNS server on loopback (MX order, equal preferences
shuffled, the implicit MX, null MX, failures, and this host as the MX)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from serverutil import Client, FakeDNS, ScriptedServer, ServeProcess, wait_for
from smtpedge.config import Config, ConfigError
from smtpedge.delivery import Routing
from smtpedge.delivery.routers import Host, Route, parse_host

ZONE = {
    ("example.net", "MX"): ["20 mx2.example.net.", "10 mx1.example.net.", "10 mx1b.example.net."],
    ("mx1.example.net", "A"): ["192.0.2.1"],
    ("mx1b.example.net", "A"): ["192.0.2.2"],
    ("mx1b.example.net", "AAAA"): ["2001:db8::2"],
    ("mx2.example.net", "A"): ["192.0.2.3"],
    ("plain.example", "A"): ["192.0.2.9"],
    ("nomail.example", "MX"): ["0 ."],
    ("self.example", "MX"): ["10 me.self.example.", "20 backup.self.example."],
    ("me.self.example", "A"): ["127.0.0.1"],
    ("backup.self.example", "A"): ["192.0.2.20"],
    ("only-self.example", "MX"): ["10 me.self.example."],
    ("dangling.example", "MX"): ["10 nowhere.example."],
}


def _routing(dns: FakeDNS, routers: list[dict[str, Any]] | None = None, **options: Any) -> Routing:
    values: dict[str, Any] = {"primary_hostname": "mx.test", "dns_nameservers": [dns.nameserver],
                              "local_domains": ["mx.test"], **options}  # fmt: skip
    if routers is not None:
        values["routers"] = routers
    return Routing.from_config(Config.from_mapping(values), ["remote_smtp", "local_delivery"])


def _route(routing: Routing, address: str, sender: str = "s@example.org") -> Route:
    return asyncio.run(routing.route(address, sender))


@pytest.fixture
def dns() -> Any:
    with FakeDNS(ZONE, failing=("broken.example",)) as server:
        yield server


def test_mx_hosts_in_preference_order_with_equal_ones_shuffled(dns: FakeDNS) -> None:
    routing = _routing(dns)
    orders = set()
    for _ in range(30):
        route = _route(routing, "u@example.net")
        assert (route.kind, route.router, route.transport) == ("accept", "dnslookup",
                                                              "remote_smtp")  # fmt: skip
        hosts = [(h.name, h.address, h.mx) for h in route.hosts]
        assert hosts[-1] == ("mx2.example.net", "192.0.2.3", 20)
        assert {h[0] for h in hosts[:-1]} == {"mx1.example.net", "mx1b.example.net"}
        orders.add(hosts[0][0])
    assert orders == {"mx1.example.net", "mx1b.example.net"}, "equal preferences are shuffled"
    route = _route(routing, "u@example.net")
    assert ("mx1b.example.net", "2001:db8::2", 10) in [(h.name, h.address, h.mx)
                                                        for h in route.hosts]  # fmt: skip


def test_implicit_mx_null_mx_and_lookup_failures(dns: FakeDNS) -> None:
    routing = _routing(dns)
    route = _route(routing, "u@plain.example")
    assert [(h.name, h.address, h.mx) for h in route.hosts] == [("plain.example", "192.0.2.9",
                                                                 None)]  # fmt: skip
    null = _route(routing, "u@nomail.example")
    assert (null.kind, null.status) == ("fail", "5.1.10")
    missing = _route(routing, "u@no-such-domain.example")
    assert (missing.kind, missing.status, missing.text) == ("fail", "5.1.2", "Unrouteable address")
    broken = _route(routing, "u@broken.example")
    assert (broken.kind, broken.status) == ("defer", "4.4.3")
    assert "DNS lookup of MX for broken.example failed" in broken.text
    dangling = _route(routing, "u@dangling.example")
    assert (dangling.kind, dangling.status) == ("fail", "5.1.2")
    asked = len(dns.queries)
    invalid = _route(routing, "u@nowhere.INVALID")
    assert (invalid.kind, invalid.status) == ("fail", "5.1.2")
    assert len(dns.queries) == asked, "RFC 6761: names under invalid. are never looked up"


def test_an_mx_that_is_this_host(dns: FakeDNS) -> None:
    routing = _routing(dns)
    # This host is the best MX (backup.self.example is worse): `self` decides.
    for domain in ("self.example", "only-self.example"):
        only = _route(routing, f"u@{domain}")
        assert (only.kind, only.status) == ("defer", "4.4.6")
        assert f"lowest numbered MX record for {domain} points to this host" in only.text
    failing = _routing(dns, [{"name": "dnslookup", "driver": "dnslookup", "self": "fail",
                              "transport": "remote_smtp"}])  # fmt: skip
    assert _route(failing, "u@only-self.example").status == "5.4.6"


def test_self_keeps_only_better_mx_hosts(dns: FakeDNS) -> None:
    with FakeDNS({("self2.example", "MX"): ["10 better.example.", "20 me.example.", "30 worse."],
                  ("better.example", "A"): ["192.0.2.30"], ("me.example", "A"): ["127.0.0.1"],
                  ("worse", "A"): ["192.0.2.31"]}) as dns2:  # fmt: skip
        route = _route(_routing(dns2), "u@self2.example")
    assert [h.name for h in route.hosts] == ["better.example"]


def test_preconditions_and_no_more(dns: FakeDNS, tmp_path: Path) -> None:
    aliases = tmp_path / "aliases"
    aliases.write_text("list: a, b@other.example\n")
    routers: list[dict[str, Any]] = [
        {"name": "only_from_x", "driver": "accept", "senders": ["*@x.example"],
         "transport": "local_delivery"},
        {"name": "aliases", "driver": "redirect", "file": str(aliases),
         "domains": ["+local_domains"]},
        {"name": "smart", "driver": "manualroute", "domains": ["*.smart.example"],
         "route_list": ["a.smart.example smart1:2525 [192.0.2.50]:26", "* smart2"],
         "transport": "remote_smtp", "dsn_lasthop": True},
        {"name": "stop", "driver": "accept", "domains": ["stop.example"],
         "check_local_user": True, "transport": "local_delivery", "no_more": True},
        {"name": "users", "driver": "accept", "local_parts": ["a"], "transport": "local_delivery"},
    ]  # fmt: skip
    routing = _routing(dns, routers)
    assert _route(routing, "z@any.example", "me@x.example").router == "only_from_x"
    redirect = _route(routing, "list@mx.test")
    assert (redirect.kind, redirect.targets) == ("redirect", ("a@mx.test", "b@other.example"))
    smart = _route(routing, "u@a.smart.example")
    assert smart.hosts == (Host("smart1", None, 2525), Host("192.0.2.50", "192.0.2.50", 26))
    assert smart.dsn_lasthop
    assert _route(routing, "u@b.smart.example").hosts == (Host("smart2"),)
    assert _route(routing, "root@stop.example").router == "stop"
    # Its preconditions held and it declined: with no_more, no other router is tried.
    stopped = _route(routing, "a@stop.example")
    assert (stopped.kind, stopped.text) == ("fail", "Unrouteable address"), "no_more"
    assert _route(routing, "a@mx.test").router == "users"


@pytest.mark.parametrize(("routers", "problem"), [
    ([{"name": "r", "driver": "nosuch"}], "routers.r.driver: must be one of"),
    ([{"name": "r", "driver": "accept"}], "routers.r.transport: a accept router needs"),
    ([{"name": "r", "driver": "accept", "transport": "nope"}], "no transport named 'nope'"),
    ([{"name": "r", "driver": "accept", "transport": "local_delivery", "colour": "red"}],
     "routers.r.colour: not an option of the accept router"),
    ([{"name": "r", "driver": "redirect"}], "needs file or data"),
    ([{"name": "r", "driver": "redirect", "file": "/nonexistent/aliases"}], "does not exist"),
    ([{"name": "r", "driver": "manualroute", "transport": "remote_smtp"}], "route_data or"),
    ([{"name": "r", "driver": "manualroute", "route_list": ["* bad..host"],
       "transport": "remote_smtp"}], "not a host name"),
    ([{"name": "r", "driver": "accept", "transport": "local_delivery", "domains": ["+nope"]}],
     "named lists"),
    ([{"name": "r", "driver": "accept", "transport": "local_delivery"}] * 2, "two routers"),
])  # fmt: skip
def test_bad_routers_are_refused_naming_the_option(dns: FakeDNS, routers: list[dict[str, Any]],
                                                   problem: str) -> None:  # fmt: skip
    with pytest.raises(ConfigError) as info:
        _routing(dns, routers)
    assert problem in str(info.value)


@pytest.mark.parametrize(("text", "host"), [
    ("mx.example.net", Host("mx.example.net")),
    ("MX.Example.NET.:587", Host("mx.example.net", None, 587)),
    ("[192.0.2.1]:25", Host("192.0.2.1", "192.0.2.1", 25)),
    ("[IPv6:2001:db8::1]:26", Host("2001:db8::1", "2001:db8::1", 26)),
    ("2001:db8::1", Host("2001:db8::1", "2001:db8::1")),
])  # fmt: skip
def test_host_syntax(text: str, host: Host) -> None:
    assert parse_host(text) == host


@pytest.mark.parametrize("text", ["", "[192.0.2.1", "[nothost]:25", "host:0", "host:99999",
                                  "bad_host!:25"])  # fmt: skip
def test_bad_host_syntax(text: str) -> None:
    with pytest.raises(ValueError):
        parse_host(text)


def test_mx_delivery_tries_each_host_in_turn(tmp_path: Path) -> None:
    """The best MX refuses connections; the next one takes the message."""
    with ScriptedServer(host="127.0.0.2") as good:
        zone = {
            ("far.example", "MX"): ["10 down.far.example.", "20 up.far.example."],
            ("down.far.example", "A"): ["127.0.0.3"],
            ("up.far.example", "A"): ["127.0.0.2"],
        }
        with FakeDNS(zone) as dns:
            options = {"queue_only": False, "dns_nameservers": [dns.nameserver],
                       "transports": {"remote_smtp": {"driver": "smtp", "port": good.port,
                                                      "connect_timeout": "5s"}}}  # fmt: skip
            with ServeProcess(tmp_path / "data", **options) as srv:
                c = Client(srv.port)
                c.reply()
                c.cmd("EHLO c.test")
                assert c.send_message("s@localhost", ["u@far.example"], b"x").startswith("250")
                c.cmd("QUIT")
                srv.wait_log("Completed")
                log = srv.log
    assert [m[1] for m in good.messages] == [["u@far.example"]]
    assert "=> <u@far.example> R=dnslookup T=remote_smtp H=up.far.example [127.0.0.2]" in log
    assert ("far.example", "MX") in dns.queries


def test_rcpt_verification_defers_when_dns_fails(tmp_path: Path) -> None:
    with FakeDNS({}, failing=("hosted.example",)) as dns:
        options = {"dns_nameservers": [dns.nameserver], "local_domains": ["hosted.example"],
                   "routers": [{"name": "lookup", "driver": "dnslookup",
                                "transport": "remote_smtp"}]}  # fmt: skip
        with ServeProcess(tmp_path / "data", **options) as srv:
            c = Client(srv.port)
            c.reply()
            c.cmd("EHLO c.test")
            c.cmd("MAIL FROM:<s@example.org>")
            reply = c.cmd("RCPT TO:<u@hosted.example>")
            assert reply.startswith("451 4.4.3 DNS lookup of MX for hosted.example failed")
            c.cmd("QUIT")
            assert wait_for(lambda: "cannot verify" in srv.log)


@pytest.mark.parametrize("server", ["dns.example", "127.0.0.1:x", "[::1]:99999"])
def test_bad_name_servers_are_refused_naming_the_option(server: str) -> None:
    config = Config.from_mapping({"dns_nameservers": [server]})
    with pytest.raises(ConfigError, match="dns_nameservers"):
        Routing.from_config(config, ["remote_smtp", "local_delivery"])
