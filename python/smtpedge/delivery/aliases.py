"""Alias files, as Exim's ``redirect`` router reads them with an ``lsearch``
lookup (the ``/etc/aliases`` format):

    # comment
    postmaster:   root
    team:         alice, bob@example.net,
                  carol                    # continued on an indented line
    "quoted name": dave
    gone:         :fail: This address no longer exists
    busy:         :defer: Mailbox being moved, try later
    devnull:      :blackhole:

The key is a local part (matched without regard to case); the value a list
of targets separated by commas (a target without ``@`` is a local part of
the same domain) or one of the special items. ``resolve()`` follows aliases
through aliases, with loops and depth bounded; a ``:fail:`` or ``:defer:``
met on the way decides for the whole address.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AliasError", "Aliases", "Redirect"]

_MAX_DEPTH = 10
_MAX_TARGETS = 1000
_KEY = re.compile(r'^("(?:[^"\\]|\\.)*"|[^\s:"]+)\s*:(.*)$')


class AliasError(ValueError):
    """An alias file that cannot be read, with the line that is wrong."""


@dataclass(frozen=True, slots=True)
class Redirect:
    """What a local part redirects to: ``targets`` (addresses), or a
    ``fail`` / ``defer`` with its text, or ``blackhole`` (discard)."""

    targets: tuple[str, ...] = ()
    fail: str | None = None
    defer: str | None = None
    blackhole: bool = False


def _split_targets(value: str, where: str) -> list[str]:
    out: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            out.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    if quoted:
        raise AliasError(f"{where}: unterminated quote")
    out.append("".join(current).strip())
    return [t for t in out if t]


def _parse_value(value: str, where: str) -> Redirect:
    value = value.strip()
    for special in (":fail:", ":defer:"):
        if value.lower().startswith(special):
            text = value[len(special) :].strip() or (
                "Unrouteable address" if special == ":fail:" else "Temporary failure"
            )
            return Redirect(fail=text) if special == ":fail:" else Redirect(defer=text)
    if value.lower() == ":blackhole:":
        return Redirect(blackhole=True)
    targets = _split_targets(value, where)
    if not targets:
        raise AliasError(f"{where}: no target")
    for t in targets:
        if t.startswith(":") or t.startswith("|") or t.startswith("/"):
            raise AliasError(f"{where}: {t!r}: only addresses, :fail:, :defer: and :blackhole: "
                             "are supported (no pipes, files or includes)")  # fmt: skip
    return Redirect(targets=tuple(targets))


class Aliases:
    """A parsed alias file (``Aliases.load(path)``) or mapping."""

    def __init__(self, entries: Mapping[str, Redirect]) -> None:
        self.entries = {k.lower(): v for k, v in entries.items()}

    @classmethod
    def parse(cls, text: str, name: str = "aliases") -> Aliases:
        entries: dict[str, Redirect] = {}
        logical: list[tuple[int, str]] = []
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.rstrip()
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0] in " \t":
                if not logical:
                    raise AliasError(f"{name}:{n}: a continuation line with nothing to continue")
                start, previous = logical[-1]
                logical[-1] = (start, previous + " " + line.strip())
            else:
                logical.append((n, line))
        for n, line in logical:
            where = f"{name}:{n}"
            m = _KEY.match(_strip_comment(line))
            if m is None:
                raise AliasError(f"{where}: want 'name: target, ...'")
            key = m.group(1)
            if key.startswith('"'):
                key = key[1:-1].replace('\\"', '"')
            if key.lower() in entries:
                raise AliasError(f"{where}: {key!r} is given twice")
            entries[key.lower()] = _parse_value(m.group(2), where)
        return cls(entries)

    @classmethod
    def load(cls, path: str | Path) -> Aliases:
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise AliasError(f"cannot read {path}: {exc.strerror}") from None
        return cls.parse(text, str(path))

    def lookup(self, local_part: str) -> Redirect | None:
        return self.entries.get(local_part.lower())

    def resolve(self, address: str) -> Redirect:
        """Follow ``address`` (``local@domain``) through the aliases to the
        addresses it ends at. A local part with no alias is itself; an alias
        that leads back to one already seen stops there (as Exim does with
        an address that redirects to itself); too deep a chain fails."""
        local, _, domain = address.rpartition("@")
        if not local:
            local, domain = address, ""
        found: list[str] = []
        seen: set[str] = set()

        def walk(local_part: str, depth: int) -> Redirect | None:
            key = local_part.lower()
            entry = self.entries.get(key)
            if entry is None or key in seen:
                found.append(f"{local_part}@{domain}" if domain else local_part)
                return None
            if depth > _MAX_DEPTH:
                return Redirect(fail=f"alias chain deeper than {_MAX_DEPTH} at {local_part!r}")
            seen.add(key)
            if entry.blackhole:
                return entry if depth == 0 else None  # a discarded branch adds nothing
            if entry.fail is not None or entry.defer is not None:
                return entry
            for target in entry.targets:
                local_of, target_domain = _split(target)
                if target_domain and target_domain.lower() != domain.lower():
                    found.append(target)  # another domain: routed on its own later
                else:
                    stop = walk(local_of, depth + 1)
                    if stop is not None and (stop.fail is not None or stop.defer is not None):
                        return stop
                if len(found) > _MAX_TARGETS:
                    return Redirect(fail=f"more than {_MAX_TARGETS} targets")
            return None

        stop = walk(local, 0)
        if stop is not None:
            return stop
        unique = tuple(dict.fromkeys(found))
        return Redirect(targets=unique) if unique else Redirect(blackhole=True)


def _split(target: str) -> tuple[str, str]:
    """Local part and domain, splitting at the last ``@`` outside quotes."""
    quoted, at = False, -1
    for i, ch in enumerate(target):
        if ch == '"':
            quoted = not quoted
        elif ch == "@" and not quoted:
            at = i
    return (target, "") if at < 0 else (target[:at], target[at + 1 :])


def _strip_comment(line: str) -> str:
    quoted = False
    for i, ch in enumerate(line):
        if ch == '"':
            quoted = not quoted
        elif ch == "#" and not quoted and (i == 0 or line[i - 1] in " \t,"):
            return line[:i].rstrip()
    return line
