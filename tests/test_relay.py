"""Relay control: smtpedge is never an open relay. Domain lists in Exim's
syntax, the policy on its own, then the server with clients outside (behind a
PROXY header) trying every spelling of a foreign domain."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from serverutil import Client, RunningServer, ServeProcess
from smtpedge import proxy
from smtpedge.config import Config, ConfigError
from smtpedge.domainlist import DomainList, DomainListError, normalize_domain
from smtpedge.receiving.relay import RelayPolicy


@pytest.mark.parametrize(("items", "domain", "expected"), [
    (["example.com"], "example.com", True),
    (["example.com"], "EXAMPLE.Com", True),
    (["example.com"], "mx.example.com", False),
    (["*.example.com"], "mx.example.com", True),
    (["*.example.com"], "example.com", False),
    (["*example.com"], "example.com", True),
    (["*example.com"], "badexample.com", True),
    (["@"], "mx.test", True),
    (["@"], "MX.test", True),
    (["@"], "other.test", False),
    (["@[]"], "[127.0.0.1]", True),
    (["@[]"], "[IPv6:::1]", True),
    (["@[]"], "[192.0.2.1]", False),
    (["@[]"], "[198.51.100.1]", True),  # one of own_addresses below
    (["^mx[0-9]+\\.example$"], "mx12.example", True),
    (["^mx[0-9]+\\.example$"], "mx.example", False),
    (["!bad.example", "*"], "bad.example", False),
    (["!bad.example", "*"], "good.example", True),
    (["xn--bcher-kva.example"], "b\u00fccher.example", True),
    (["b\u00fccher.example"], "xn--bcher-kva.example", True),
    ([], "example.com", False),
    ("a.example : b.example", "b.example", True),
])  # fmt: skip
def test_domain_list(items: Any, domain: str, expected: bool) -> None:
    assert DomainList(items).match(domain, "mx.test", ["198.51.100.1"]) is expected


@pytest.mark.parametrize(
    "item", ["+local", "@mx_any", "lsearch;/etc/domains", "^(", "!", "*.", "a..b"]
)
def test_domain_list_refuses_what_it_cannot_do(item: str) -> None:
    with pytest.raises(DomainListError):
        DomainList([item])


def test_normalize_domain() -> None:
    assert normalize_domain("Example.COM") == "example.com"
    assert normalize_domain("[IPv6:2001:DB8:0::1]") == "[ipv6:2001:db8::1]"
    assert normalize_domain("[2001:db8::1]") is None, "IPv6 literals need the tag"
    assert normalize_domain("[300.1.1.1]") is None


def test_bad_lists_in_the_configuration_name_the_option() -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_mapping({"local_domains": ["@mx_any"], "relay_from_hosts": "10.0.0.0/33"})
    assert [o for o, _ in info.value.errors] == ["local_domains", "relay_from_hosts"]


def test_policy() -> None:
    cfg = Config.from_mapping({"primary_hostname": "mx.test", "relay_to_domains": ["backup.test"],
                               "relay_from_hosts": ["localhost", "10.1.0.0/16"]})  # fmt: skip
    policy = RelayPolicy(cfg)
    outside, inside = "192.0.2.9", "10.1.2.3"
    assert policy.permits("mx.test", outside) and policy.permits("localhost", outside)
    assert policy.permits("backup.test", outside)
    assert policy.permits("", outside), "<Postmaster>"
    assert not policy.permits("example.net", outside)
    assert policy.permits("example.net", inside) and policy.permits("example.net", "127.0.0.1")
    assert not policy.permits("example.net", "::ffff:192.0.2.9")


def _outside(port: int, ip: str = "192.0.2.9") -> Client:
    """A client from outside: the PROXY header says so."""
    c = Client(port)
    c.send(proxy.build_header(2, "PROXY", (ip, 4000), ("127.0.0.1", 25)))
    assert c.reply().startswith("220")
    assert c.cmd("EHLO outside.example").startswith("250")
    assert c.cmd("MAIL FROM:<someone@example.org> SMTPUTF8").startswith("250")
    return c


FOREIGN = [
    "b@example.net",
    "b@EXAMPLE.NET",
    "b@Example.Net",
    "b@sub.mx.test",
    "b@mx.test.example.net",
    '"b"@example.net',
    "@mx.test:b@example.net",  # a source route through us: the mailbox decides
    "@mx.test,@localhost:b@example.net",
    "b@[192.0.2.1]",
    "b@[127.0.0.1]",  # @[] is not in the default local_domains
    "b@[IPv6:::1]",
    "b@b\u00fccher.example",
]
LOCAL = [
    "b@mx.test",
    "b@MX.TEST",
    "b@localhost",
    "Postmaster",
    "postmaster@mx.test",
    "user%example.net@mx.test",  # no percent hack: a local part at mx.test
    "user!example.net@mx.test",
    '"b@example.net"@mx.test',
    "@example.net:b@mx.test",
]


def test_outside_client_cannot_relay(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smtpedge")
    with RunningServer(tmp_path / "spool", hosts_proxy=["127.0.0.1"]) as srv:
        c = _outside(srv.port)
        for address in FOREIGN:
            reply = c.cmd(f"RCPT TO:<{address}>")
            assert reply == "550 5.7.1 Relaying not permitted", (address, reply)
        accepted = []
        for address in LOCAL:
            reply = c.cmd(f"RCPT TO:<{address}>")
            assert reply.startswith("250 2.1.5"), (address, reply)
            accepted.append(address.split(":")[-1])
        assert c.cmd("DATA").startswith("354")
        c.send(b"Subject: local\r\n\r\nx\r\n.\r\n")
        assert c.reply().startswith("250 2.0.0 OK id=")
        assert c.cmd("QUIT").startswith("221"), "relay refusals do not end the session"
        [msg] = list(srv.queue().messages())
        assert [r.address for r in msg.recipients] == accepted
        assert "user%example.net@mx.test" in accepted
    text = caplog.text
    assert "H=[192.0.2.9]:4000 PX=[127.0.0.1]:" in text
    assert "F=<someone@example.org> rejected RCPT <b@example.net>: relay not permitted" in text
    assert "more refusal(s) not logged one by one" in text


def test_relay_lists_open_what_they_name(tmp_path: Path) -> None:
    options = {"hosts_proxy": ["127.0.0.1"], "relay_to_domains": "*.backup.example",
               "relay_from_hosts": ["localhost", "198.51.100.0/24"],
               "local_domains": ["@", "@[]", "local.example"]}  # fmt: skip
    with RunningServer(tmp_path / "spool", **options) as srv:
        c = _outside(srv.port)
        assert c.cmd("RCPT TO:<b@mx.backup.example>").startswith("250")
        assert c.cmd("RCPT TO:<b@LOCAL.example>").startswith("250")
        assert c.cmd("RCPT TO:<b@[127.0.0.1]>").startswith("250")
        assert c.cmd("RCPT TO:<b@example.net>").startswith("550 5.7.1")
        assert c.cmd("RCPT TO:<b@localhost>").startswith("550 5.7.1"), "not listed any more"
        inside = _outside(srv.port, "198.51.100.7")
        assert inside.cmd("RCPT TO:<b@example.net>").startswith("250"), "a relay client"
        loopback = Client(srv.port)
        loopback.send(proxy.build_header(2, "LOCAL", None, None))
        assert loopback.reply().startswith("220")
        loopback.cmd("EHLO health.example")
        loopback.cmd("MAIL FROM:<a@example.org>")
        assert loopback.cmd("RCPT TO:<b@example.net>").startswith("250"), "LOCAL: the proxy itself"


def test_hooks_cannot_let_a_relay_through(tmp_path: Path) -> None:
    class Permissive:
        async def handle_RCPT(self, *args: Any) -> str:
            return "250 2.1.5 Anything goes"

    with RunningServer(tmp_path / "spool", Permissive(), hosts_proxy=["127.0.0.1"]) as srv:
        c = _outside(srv.port)
        assert c.cmd("RCPT TO:<b@example.net>").startswith("550 5.7.1")
        assert c.cmd("RCPT TO:<b@mx.test>") == "250 2.1.5 Anything goes"


def test_embedded_default_is_not_an_open_relay(tmp_path: Path) -> None:
    """``smtpedge serve`` with only hosts_proxy set (clients come through a
    proxy): the defaults take mail for the primary hostname and localhost from
    anyone, and relay only for the loopback addresses."""
    with ServeProcess(tmp_path / "data", hosts_proxy=["127.0.0.1"]) as srv:
        c = _outside(srv.port)
        assert c.cmd("RCPT TO:<b@example.net>").startswith("550 5.7.1")
        assert c.cmd("RCPT TO:<root@mx.test>").startswith("250")
        assert c.cmd("RCPT TO:<postmaster@localhost>").startswith("250")
        assert c.cmd("RCPT TO:<Postmaster>").startswith("250"), "RFC 5321 section 4.5.1"
        # A user the routers do not know is refused now, not bounced later.
        assert c.cmd("RCPT TO:<nosuchuser@mx.test>") == "550 5.1.1 Unrouteable address"
        c.cmd("QUIT")
        srv.wait_log("rejected RCPT <b@example.net>: relay not permitted")
        srv.wait_log("rejected RCPT <nosuchuser@mx.test>: unknown recipient")


def test_a_relay_prober_is_disconnected(tmp_path: Path) -> None:
    with RunningServer(tmp_path / "spool", hosts_proxy=["127.0.0.1"],
                       smtp_max_refused_recipients=20) as srv:  # fmt: skip
        c = _outside(srv.port)
        c.send(b"".join(b"RCPT TO:<r%d@victim.example>\r\n" % i for i in range(50)))
        replies = [c.reply()[:9] for _ in range(22)]
        assert replies == ["550 5.7.1"] * 21 + ["421 4.7.0"], "more than 20: the 21st ends it"
        assert c.closed_without_data()
