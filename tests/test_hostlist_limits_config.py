"""Host lists (Exim syntax), connection limits and rate limits, configuration."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from smtpedge.config import OPTIONS, Config, ConfigError, RateLimit, parse_duration, parse_size
from smtpedge.hostlist import HostList, HostListError, split_list
from smtpedge.receiving.limits import ConnectionLimits, RateLimiter

DOCS = Path(__file__).parent.parent / "docs"

HOSTLIST_CASES = [
    # items, address, hostname, expected
    (["*"], "192.0.2.1", None, True),
    ([], "192.0.2.1", None, False),
    (["192.0.2.1"], "192.0.2.1", None, True),
    (["192.0.2.1"], "192.0.2.2", None, False),
    (["192.0.2.0/24"], "192.0.2.200", None, True),
    (["192.0.2.0/24"], "192.0.3.1", None, False),
    (["2001:db8::/32"], "2001:db8:1::5", None, True),
    (["2001:db8::/32"], "192.0.2.1", None, False),
    (["::ffff:0:0/96"], "::ffff:192.0.2.1", None, False),  # mapped addresses compare as IPv4
    (["192.0.2.1"], "::ffff:192.0.2.1", None, True),
    (["!192.0.2.5", "192.0.2.0/24"], "192.0.2.5", None, False),  # first match wins
    (["!192.0.2.5", "192.0.2.0/24"], "192.0.2.6", None, True),
    (["192.0.2.0/24", "!192.0.2.5"], "192.0.2.5", None, True),
    (["!*"], "192.0.2.1", None, False),
    (["localhost"], "127.0.0.9", None, True),
    (["localhost"], "::1", None, True),
    (["localhost"], "192.0.2.1", None, False),
    (["*.example.net"], "192.0.2.1", "mx.example.net", True),
    (["*.example.net"], "192.0.2.1", "MX.Example.NET.", True),
    (["*.example.net"], "192.0.2.1", "example.net", False),
    (["*.example.net"], "192.0.2.1", "mx.badexample.net", False),
    (["*.example.net"], "192.0.2.1", None, False),
    (["mx.example.net"], "192.0.2.1", "mx.example.net", True),
    (["!*.example.net", "*"], "192.0.2.1", "a.example.net", False),
    (["*"], "not-an-address", None, False),
]


@pytest.mark.parametrize(("items", "address", "hostname", "expected"), HOSTLIST_CASES)
def test_hostlist(items: list[str], address: str, hostname: str | None, expected: bool) -> None:
    hl = HostList(items)
    assert hl.match(address, hostname=hostname, resolve=lambda name: set()) is expected


def test_hostlist_plain_name_resolves_forward() -> None:
    hl = HostList(["relay.example"])
    assert hl.match("192.0.2.9", resolve=lambda n: {"192.0.2.9"} if n == "relay.example" else set())
    assert not hl.match("192.0.2.8", resolve=lambda n: {"192.0.2.9"})
    assert hl.needs_name and not HostList(["10.0.0.0/8"]).needs_name


@pytest.mark.parametrize(
    ("text", "items"),
    [
        ("192.0.2.1 : 10.0.0.0/8", ["192.0.2.1", "10.0.0.0/8"]),
        ("::::1 : 2001::db8::::/32", ["::1", "2001:db8::/32"]),
        ("<; ::1 ; 2001:db8::/32", ["::1", "2001:db8::/32"]),
        ("fe80::::1 : *", ["fe80::1", "*"]),
        ("", []),
    ],
)
def test_split_list(text: str, items: list[str]) -> None:
    assert split_list(text) == items


@pytest.mark.parametrize("bad", ["192.0.2.0/33", "2001:db8::/200", "*.", "a*b.example", "!"])
def test_hostlist_bad_items(bad: str) -> None:
    with pytest.raises(HostListError):
        HostList([bad])


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("3s", 3), ("5m", 300), ("1h30m", 5400), ("2d", 172800), ("1w", 604800), ("0.5", 0.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "5x", "m5", "-3s", "1h 3q"])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "size"), [("50M", 50 * 1024**2), ("100K", 102400), ("1G", 1024**3), (123, 123)]
)
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


def test_ratelimit_parse() -> None:
    rl = RateLimit.parse("10 / 1m / per_conn / strict")
    assert (rl.limit, rl.period, rl.strict) == (10, 60, True)
    assert not RateLimit.parse("5/1h").strict
    assert RateLimit.parse(str(rl)) == rl
    for bad in ("10", "x / 1m", "10 / 0s", "10 / 1m / per_mail"):
        with pytest.raises(ValueError):
            RateLimit.parse(bad)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ratelimit_burst_and_decay() -> None:
    clock = FakeClock()
    rl = RateLimiter(RateLimit(3, 60, strict=False), clock)
    results = [rl.hit("192.0.2.1")[0] for _ in range(5)]
    assert results == [True, True, True, False, False]
    assert rl.hit("192.0.2.2")[0], "other clients are not affected"
    clock.now += 600  # ten periods later the rate has decayed
    assert rl.hit("192.0.2.1")[0]


def test_ratelimit_strict_keeps_blocking_a_client_that_keeps_trying() -> None:
    leaky, strict = FakeClock(), FakeClock()
    lrl = RateLimiter(RateLimit(2, 60, strict=False), leaky)
    srl = RateLimiter(RateLimit(2, 60, strict=True), strict)
    for clock, rl in ((leaky, lrl), (strict, srl)):
        for _ in range(2):
            assert rl.hit("c")[0]
        for _ in range(30):  # hammering, one try a second
            clock.now += 1
            rl.hit("c")
        clock.now += 40
    assert lrl.hit("c")[0], "leaky: only accepted events count, so the rate decayed"
    assert not srl.hit("c")[0], "strict: the refused tries kept the rate up"


def test_connection_limits() -> None:
    lim = ConnectionLimits(max_total=3, max_per_host=2)
    assert lim.open() is None and lim.open() is None and lim.open() is None
    assert lim.open() is not None
    assert lim.admit("a") is None and lim.admit("a") is None
    refusal = lim.admit("a")
    assert refusal is not None and "[a]" in refusal
    assert lim.admit("b") is None
    lim.release("a")
    assert lim.admit("a") is None
    lim.close()
    assert lim.open() is None


def test_config_defaults() -> None:
    c = Config()
    assert c.local_interfaces == ("127.0.0.1",)
    assert c.daemon_smtp_ports == (2525,)
    assert c.spool_directory == "./smtpedge-data"
    assert c.proxy_protocol_timeout == 3.0
    assert not c.dsn_advertise_hosts and not c.hosts_proxy
    assert c.bare_newline == "reject"


def test_config_load(tmp_path: Path) -> None:
    f = tmp_path / "smtpedge.toml"
    f.write_text(
        'hosts_proxy = ["127.0.0.2", "10.0.0.0/8"]\n'
        'dsn_advertise_hosts = "<; ::1 ; 192.0.2.0/24"\n'
        'proxy_protocol_timeout = "2s"\n'
        'message_size_limit = "10M"\n'
        'smtp_connect_ratelimit = "20 / 1m / per_conn / strict"\n'
        "daemon_smtp_ports = [2526, 2527]\n"
    )
    c = Config.load(f)
    assert c.hosts_proxy.match("10.1.2.3") and not c.hosts_proxy.match("127.0.0.1")
    assert c.dsn_advertise_hosts.match("::1")
    assert c.proxy_protocol_timeout == 2.0
    assert c.message_size_limit == 10 * 1024**2
    assert c.smtp_connect_ratelimit == RateLimit(20, 60, True)
    assert c.daemon_smtp_ports == (2526, 2527)
    # The printed configuration reads back to the same values.
    again = tmp_path / "again.toml"
    again.write_text(c.to_toml())
    assert Config.load(again) == c


@pytest.mark.parametrize(
    ("text", "option", "fragment"),
    [
        ("hosts_prxy = []", "hosts_prxy", "did you mean hosts_proxy"),
        ('hosts_proxy = ["192.0.2.0/33"]', "hosts_proxy", "bad address"),
        ('hosts_proxy = ["*.lb.example"]', "hosts_proxy", "no host names"),
        ('proxy_protocol_timeout = "3x"', "proxy_protocol_timeout", "bad duration"),
        ("recipients_max = 0", "recipients_max", "at least 1"),
        ('bare_newline = "allow"', "bare_newline", "'reject'"),
        ("daemon_smtp_ports = [70000]", "daemon_smtp_ports", "bad port"),
        ('smtp_connect_ratelimit = "ten / 1m"', "smtp_connect_ratelimit", "count"),
        ("workers = true", "workers", "integer"),
        ("hosts_proxy = [", "--config", "not valid TOML"),
    ],
)
def test_config_errors_name_the_option(
    tmp_path: Path, text: str, option: str, fragment: str
) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        Config.load(f)
    assert info.value.option == option
    assert fragment in str(info.value)


def test_every_option_is_documented_with_its_default() -> None:
    from dataclasses import fields

    from smtpedge.config import _toml_value

    doc = (DOCS / "configuration.md").read_text()
    for name in OPTIONS:
        assert re.search(rf"^\| `{name}` \|", doc, re.M), f"{name} missing from the docs"
    for f in fields(Config):
        default = f.metadata["toml"] or _toml_value(f.default)
        row = f"| `{f.name}` | `{default}` | {f.metadata['doc']} |"
        assert row in doc, f"docs/configuration.md: the row for {f.name} should read {row}"
