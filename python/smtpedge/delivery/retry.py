"""Retry rules with the meaning of Exim's ``retry`` configuration: when to try
a failed delivery again, and when to give up.

A rule is a line of three parts: a pattern (what it applies to), an error
(which failures), and parameter sets separated by ``;``:

    *                 *          F,2h,15m; G,16h,1h,1.5; F,4d,6h
    *.example.net     timeout    F,1h,5m; F,1d,1h
    slow@example.org  rcpt_4xx   F,30m,1m

Each parameter set runs until its time, counted from the first failure:

    F,<time>,<interval>                every <interval>
    G,<time>,<first>,<multiplier>      <first>, then each interval times <multiplier>
    H,<time>,<first>,<multiplier>      as G, but each interval a random one between
                                       the last and the geometric one (so retries of
                                       many messages spread out)

When the last set's time has passed since the first failure, the delivery
is given up (it fails, and a failure report is due). The first rule whose
pattern and error match decides; patterns are ``*``, a domain, ``*.domain``
(subdomains), ``*domain`` (any ending), or an address ``local@domain``.
Errors are ``*``, ``refused`` (connection refused), ``timeout``,
``lost_connection``, ``tls_required``, and ``mail_4xx``, ``rcpt_4xx``,
``data_4xx`` (a 4xx reply to that command). Times use Exim's syntax.

Exim's default, used when none is configured, is ``DEFAULT``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from smtpedge.config import parse_duration
from smtpedge.domainlist import normalize_domain

__all__ = ["DEFAULT", "ERRORS", "Decision", "RetryRule", "RetryRules", "RetryRuleError"]

DEFAULT = "* * F,2h,15m; G,16h,1h,1.5; F,4d,6h"
ERRORS = ("*", "refused", "timeout", "lost_connection", "tls_required", "mail_4xx",
          "rcpt_4xx", "data_4xx")  # fmt: skip


class RetryRuleError(ValueError):
    """A retry rule that cannot be understood."""


@dataclass(frozen=True, slots=True)
class _Set:
    kind: str  # "F", "G" or "H"
    until: float  # seconds after the first failure
    interval: float
    multiplier: float = 1.0


@dataclass(frozen=True, slots=True)
class Decision:
    """When to try next (None: give up now) and the interval that gave it,
    to keep with the recipient for the next decision."""

    next_attempt: dt.datetime | None
    interval: float

    @property
    def give_up(self) -> bool:
        return self.next_attempt is None


def _seconds(text: str, what: str, rule: str) -> float:
    try:
        value = parse_duration(text.strip())
    except ValueError as exc:
        raise RetryRuleError(f"{rule!r}: bad {what} {text.strip()!r}: {exc}") from None
    if value <= 0:
        raise RetryRuleError(f"{rule!r}: the {what} must be more than 0")
    return value


def _parse_set(text: str, rule: str) -> _Set:
    parts = [p.strip() for p in text.split(",")]
    kind = parts[0].upper()
    if kind == "F" and len(parts) == 3:
        return _Set("F", _seconds(parts[1], "time", rule), _seconds(parts[2], "interval", rule))
    if kind in ("G", "H") and len(parts) == 4:
        try:
            multiplier = float(parts[3])
        except ValueError:
            raise RetryRuleError(f"{rule!r}: bad multiplier {parts[3]!r}") from None
        if multiplier < 1.0:
            raise RetryRuleError(f"{rule!r}: the multiplier must be at least 1")
        return _Set(kind, _seconds(parts[1], "time", rule), _seconds(parts[2], "interval", rule),
                    multiplier)  # fmt: skip
    raise RetryRuleError(f"{rule!r}: {text.strip()!r} is not F,time,interval or "
                         "G,time,first,multiplier (or H,...)")  # fmt: skip


@dataclass(frozen=True, slots=True)
class RetryRule:
    pattern: str
    error: str
    sets: tuple[_Set, ...]

    @classmethod
    def parse(cls, line: str) -> RetryRule:
        fields = line.split(None, 2)
        if len(fields) < 3:
            raise RetryRuleError(f"{line!r}: want 'pattern error parameter-sets'")
        pattern, error, rest = fields
        if error not in ERRORS:
            raise RetryRuleError(f"{line!r}: unknown error {error!r} (one of {', '.join(ERRORS)})")
        if pattern != "*" and normalize_domain(pattern.rsplit("@", 1)[-1].lstrip("*.")) is None:
            raise RetryRuleError(f"{line!r}: bad pattern {pattern!r}")
        sets = tuple(_parse_set(s, line) for s in rest.split(";") if s.strip())
        if not sets:
            raise RetryRuleError(f"{line!r}: no parameter sets")
        for a, b in itertools.pairwise(sets):
            if b.until <= a.until:
                raise RetryRuleError(f"{line!r}: each set's time must be later than the last")
        return cls(pattern.lower(), error, sets)

    @property
    def give_up_after(self) -> float:
        """Seconds after the first failure when the delivery is given up."""
        return self.sets[-1].until

    def matches(self, address: str, error: str) -> bool:
        if self.error != "*" and self.error != error:
            return False
        pattern = self.pattern
        if pattern == "*":
            return True
        address = address.lower()
        domain = address.rsplit("@", 1)[-1]
        if "@" in pattern:
            return address == pattern
        if pattern.startswith("*"):
            return domain.endswith(pattern[1:])
        return domain == pattern

    def decide(
        self,
        first_failure: dt.datetime,
        now: dt.datetime,
        last_interval: float = 0.0,
        rand: Callable[[float, float], float] = random.uniform,
    ) -> Decision:
        """After a failure at ``now``: when to try next, or give up."""
        elapsed = (now - first_failure).total_seconds()
        current = next((s for s in self.sets if elapsed < s.until), None)
        if current is None:
            return Decision(None, last_interval)
        if current.kind == "F":
            interval = current.interval
        else:
            # In a geometric set the interval grows from its first value; on
            # entering the set (or after an F set) it starts there.
            grown = last_interval * current.multiplier if last_interval else current.interval
            interval = max(current.interval, grown)
            if current.kind == "H":
                interval = rand(max(last_interval, current.interval), interval)
        return Decision(now + dt.timedelta(seconds=interval), interval)


class RetryRules:
    """An ordered list of rules (one string per rule, or one string with a
    rule per line); the first that matches decides, and with none matching
    the delivery is given up at its first temporary failure, as in Exim."""

    def __init__(self, rules: str | Sequence[str] = DEFAULT) -> None:
        lines = rules.splitlines() if isinstance(rules, str) else list(rules)
        self.rules = tuple(RetryRule.parse(line) for line in lines if line.strip())
        self.source = tuple(line.strip() for line in lines if line.strip())

    def rule_for(self, address: str, error: str) -> RetryRule | None:
        return next((r for r in self.rules if r.matches(address, error)), None)

    def decide(
        self,
        address: str,
        error: str,
        first_failure: dt.datetime,
        now: dt.datetime,
        last_interval: float = 0.0,
    ) -> Decision:
        if error not in ERRORS or error == "*":
            raise ValueError(f"unknown error kind {error!r}")
        rule = self.rule_for(address, error)
        if rule is None:
            return Decision(None, last_interval)
        return rule.decide(first_failure, now, last_interval)
