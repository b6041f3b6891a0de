"""Pieces of delivery: Exim's retry rules, and atomic maildir delivery."""

from __future__ import annotations

import datetime as dt
import itertools
import threading
from pathlib import Path

import pytest

from serverutil import mounted_tmpfs
from smtpedge.delivery.maildir import MaildirError, MaildirTransport, deliver
from smtpedge.delivery.retry import DEFAULT, RetryRule, RetryRuleError, RetryRules

T0 = dt.datetime(2026, 12, 1, 0, 0, tzinfo=dt.UTC)


def _after(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def _schedule(rules: RetryRules, address: str = "b@example.net", error: str = "timeout",
              limit: int = 10_000) -> list[float]:  # fmt: skip
    """Seconds after the first failure of every attempt, each failing, until
    the rules give up."""
    times, now, interval = [0.0], T0, 0.0
    for _ in range(limit):
        d = rules.decide(address, error, T0, now, interval)
        if d.next_attempt is None:
            return times
        now, interval = d.next_attempt, d.interval
        times.append((now - T0).total_seconds())
    raise AssertionError("never gave up")


def test_exims_default_schedule() -> None:
    times = _schedule(RetryRules(DEFAULT))
    # F,2h,15m: every 15 minutes for the first two hours.
    assert times[:9] == [i * 900.0 for i in range(9)]
    # G,16h,1h,1.5: then 1h, 1.5h, 2.25h, ... until 16h.
    gaps = [b - a for a, b in itertools.pairwise(times)]
    g = [gap for t, gap in zip(times, gaps, strict=False) if 7200 <= t < 16 * 3600]
    assert g[0] == 3600 and g[1] == 5400 and g[2] == 8100
    # F,4d,6h: every 6 hours until four days, then it gives up.
    late = [gap for t, gap in zip(times, gaps, strict=False) if t >= 16 * 3600]
    assert set(late[1:]) == {6 * 3600.0}
    # As in Exim, the attempt that fails after the cutoff is the last one.
    assert times[-2] < 4 * 86400 <= times[-1]


def test_first_matching_rule_decides() -> None:
    rules = RetryRules(["slow@example.org rcpt_4xx F,30m,1m", "*.example.net timeout F,1h,5m",
                        "* * F,10m,2m"])  # fmt: skip

    def pattern(address: str, error: str) -> str | None:
        rule = rules.rule_for(address, error)
        return rule.pattern if rule else None

    assert pattern("slow@example.org", "rcpt_4xx") == "slow@example.org"
    assert pattern("SLOW@example.org", "timeout") == "*"
    assert pattern("b@mx.example.net", "timeout") == "*.example.net"
    assert pattern("b@example.net", "timeout") == "*", "*.x is subdomains only"
    assert _schedule(rules, "b@mx.example.net")[1:3] == [300.0, 600.0]


def test_no_rule_gives_up_at_once() -> None:
    rules = RetryRules(["*.example.net timeout F,1h,5m"])
    assert rules.decide("b@other.example", "refused", T0, T0).give_up


def test_h_sets_spread_between_last_and_geometric() -> None:
    rule = RetryRule.parse("* * H,10h,1h,2")
    d = rule.decide(T0, _after(7200), 3600.0, rand=lambda lo, hi: hi)
    assert d.interval == 7200.0
    d = rule.decide(T0, _after(7200), 3600.0, rand=lambda lo, hi: lo)
    assert d.interval == 3600.0


def test_a_fast_schedule_for_tests() -> None:
    assert _schedule(RetryRules("* * F,3s,1s")) == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize(("line", "problem"), [
    ("* *", "pattern error parameter-sets"),
    ("* bounced F,1h,5m", "unknown error"),
    ("* * F,1h", "is not F,time,interval"),
    ("* * F,1h,0s", "more than 0"),
    ("* * G,1h,5m,0.5", "at least 1"),
    ("* * F,2h,5m; F,1h,5m", "later than the last"),
    ("* * F,soon,5m", "bad time"),
    ("bad..domain * F,1h,5m", "bad pattern"),
])  # fmt: skip
def test_bad_rules(line: str, problem: str) -> None:
    with pytest.raises(RetryRuleError, match=problem):
        RetryRule.parse(line)


# -- maildir ----------------------------------------------------------------------------


def test_maildir_delivery_is_whole_and_marked(tmp_path: Path) -> None:
    transport = MaildirTransport(tmp_path / "mail", hostname="mx.test")
    path = transport.deliver(b"Subject: hi\r\n\r\nline one\r\n.dot\r\n", sender="a@example.org",
                             recipient="Bob@mx.test")  # fmt: skip
    box = tmp_path / "mail" / "bob"
    assert path.parent == box / "new" and path.name.endswith(".mx.test")
    assert path.read_bytes() == (b"Return-Path: <a@example.org>\nDelivered-To: Bob@mx.test\n"
                                 b"Subject: hi\n\nline one\n.dot\n")  # fmt: skip
    assert not list((box / "tmp").iterdir()), "nothing left in tmp"
    assert (box / "cur").is_dir()
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_concurrent_deliveries_never_collide(tmp_path: Path) -> None:
    box = tmp_path / "box"
    paths: list[Path] = []

    def many() -> None:
        for i in range(50):
            paths.append(deliver(box, b"x %d\n" % i, return_path="a@b", delivered_to="c@d"))

    threads = [threading.Thread(target=many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 200 == len(list((box / "new").iterdir()))


@pytest.mark.parametrize("local", ["../etc", ".hidden", "a/b", ""])
def test_local_parts_that_could_escape_are_refused(tmp_path: Path, local: str) -> None:
    transport = MaildirTransport(tmp_path)
    with pytest.raises(MaildirError) as info:
        transport.deliver(b"x", sender="a@b", recipient=f"{local}@mx.test")
    assert info.value.status == "5.1.3" and not info.value.transient
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_a_temporary_failure(tmp_path: Path) -> None:
    """A real full file system: a tiny tmpfs (needs root)."""
    mount = tmp_path / "small"
    with mounted_tmpfs(mount, "size=64k"):
        with pytest.raises(MaildirError) as info:
            deliver(mount / "box", b"x" * 200_000, return_path="a@b", delivered_to="c@d")
        assert info.value.transient and info.value.status == "4.3.1"
        assert "No space left on device" in info.value.text
        assert not list((mount / "box" / "tmp").iterdir()), "the partial file is removed"
        assert not list((mount / "box" / "new").iterdir())


# -- alias files ------------------------------------------------------------------------

ALIASES = """\
# the usual ones
postmaster:   root
root:         alice
team:         alice, bob@example.net,
              carol   # continued
"quoted name": dave
gone:         :fail: This address no longer exists
busy:         :defer: Mailbox being moved
devnull:      :blackhole:
loop1:        loop2
loop2:        loop1, erin
partly:       devnull, frank
sad:          frank, gone
"""


@pytest.mark.parametrize(("address", "targets", "kind"), [
    ("postmaster@mx.test", ("alice@mx.test",), None),
    ("POSTMASTER@mx.test", ("alice@mx.test",), None),
    ("team@mx.test", ("alice@mx.test", "bob@example.net", "carol@mx.test"), None),
    ("quoted name@mx.test", ("dave@mx.test",), None),
    ("nobody@mx.test", ("nobody@mx.test",), None),
    ("gone@mx.test", (), "fail"),
    ("busy@mx.test", (), "defer"),
    ("devnull@mx.test", (), "blackhole"),
    ("loop1@mx.test", ("loop1@mx.test", "erin@mx.test"), None),
    ("partly@mx.test", ("frank@mx.test",), None),
    ("sad@mx.test", (), "fail"),
])  # fmt: skip
def test_aliases_resolve(address: str, targets: tuple[str, ...], kind: str | None) -> None:
    from smtpedge.delivery.aliases import Aliases

    r = Aliases.parse(ALIASES).resolve(address)
    assert r.targets == targets
    assert (r.fail is not None, r.defer is not None, r.blackhole) == (
        kind == "fail", kind == "defer", kind == "blackhole")  # fmt: skip
    if kind == "fail":
        assert r.fail == "This address no longer exists"


@pytest.mark.parametrize(("text", "problem"), [
    ("  indented: first", "nothing to continue"),
    ("nocolon", "want 'name: target"),
    ("a: b\nA: c", "given twice"),
    ("a: |/usr/bin/prog", "no pipes, files or includes"),
    ("a: :include:/etc/list", "no pipes"),
    ('a: "open', "unterminated quote"),
    ("a:", "no target"),
])  # fmt: skip
def test_bad_alias_files(text: str, problem: str) -> None:
    from smtpedge.delivery.aliases import AliasError, Aliases

    with pytest.raises(AliasError, match=problem):
        Aliases.parse(text)


def test_alias_chains_are_bounded() -> None:
    from smtpedge.delivery.aliases import Aliases

    chain = "\n".join(f"a{i}: a{i + 1}" for i in range(30))
    r = Aliases.parse(chain).resolve("a0@mx.test")
    assert r.fail is not None and "deeper than" in r.fail
