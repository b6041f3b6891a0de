"""The queue runner: delivers what the server accepted.

It picks due messages by their indexed next-attempt time (the cost of a pick
does not depend on how many messages wait), at most ``queue_run_max`` at
once. For each message it routes every recipient that is due, hands them to
their transports, and makes the outcome durable in one transaction before
anything else happens: each recipient's new state (delivered, failed,
deferred with its next attempt by the retry rules, or expanded into the
addresses an alias gave), the delivery reports the outcome calls for (queued
as messages from ``<>`` in the same transaction), and the removal of a
message that is done. A crash loses nothing: a recipient whose outcome was
not written is tried again, so a delivery repeats only when the crash falls
between the remote host's 250 and that write.

Delivery reports (RFC 3461 section 6, RFC 3464) are made for ``failed``
(FAILURE requested or NOTIFY absent), ``delayed`` (at each ``delay_warning``,
DELAY requested or NOTIFY absent), ``delivered`` (local delivery, SUCCESS
requested), ``relayed`` (SUCCESS requested and the next hop does not offer
DSN, or its router has ``dsn_lasthop``) and ``expanded`` (an alias gave
several addresses, SUCCESS requested); one report per message and kind. No
report ever goes to the null sender: a report that cannot be delivered is
logged and dropped when its own retries end.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from smtpedge import metrics, xtext
from smtpedge.config import Config
from smtpedge.delivery.retry import RetryRules
from smtpedge.delivery.routers import Route, Routing
from smtpedge.delivery.transports import Delivered, Job, Transport, build_transports
from smtpedge.dsn import OriginalMessage, Outcome, build_report, report_wanted
from smtpedge.esmtp import MailParams, RcptParams, Recipient
from smtpedge.log import logger
from smtpedge.queue import (
    MessageRecord,
    Queue,
    QueuedMessage,
    RecipientState,
    StateWriter,
    make_record,
)

__all__ = ["Delivery", "QueueRunner", "RunStats"]


@dataclass
class RunStats:
    """Counts since the runner started."""

    attempts: int = 0  # messages taken up
    delivered: int = 0  # recipients
    failed: int = 0
    deferred: int = 0
    reports: int = 0
    picks: int = 0
    pick_seconds: float = 0.0


@dataclass
class Delivery:
    """The routers and transports of a configuration, built once (a bad
    router or transport raises ConfigError, naming the option)."""

    config: Config
    routing: Routing = field(init=False)
    transports: dict[str, Transport] = field(init=False)
    retry: RetryRules = field(init=False)

    def __post_init__(self) -> None:
        from smtpedge.config import ConfigError
        from smtpedge.delivery.retry import RetryRuleError

        self.transports = build_transports(self.config)
        self.routing = Routing.from_config(self.config, list(self.transports))
        try:
            self.retry = RetryRules(self.config.retry_rules)
        except RetryRuleError as exc:
            raise ConfigError("retry_rules", str(exc)) from None

    async def verify(self, address: str, sender: str) -> str | None:
        """The RCPT reply for a recipient in a local domain when the routers
        do not take it (None: they do). Exim's ``verify = recipient``."""
        route = await self.routing.route(address, sender, verifying=True)
        if route.kind == "fail":
            status = route.status if route.status.startswith("5.") else "5.1.1"
            return f"550 {status} {_one_line(route.text) or 'Unrouteable address'}"
        if route.kind == "defer":
            return f"451 4.4.3 {_one_line(route.text) or 'Could not verify the address now'}"
        return None

    async def close(self) -> None:
        for t in self.transports.values():
            await t.close()


def _one_line(text: str) -> str:
    return " ".join(text.split())[:400]


_GAVE_UP = "retry time exceeded: "


def _why(text: str, d: Delivered | None) -> str:
    """The end of a failure's log line: the host and its whole reply when a
    remote host answered (as Exim logs it), else the reason."""
    if d is not None and d.reply is not None and not d.reply.local:
        note = _GAVE_UP if text.startswith(_GAVE_UP) else ""
        return f" H={d.remote_mta}: {note}" + _one_line(" ".join(d.reply.wire_lines()))
    return ": " + _one_line(text)


def _when(t: float | None) -> dt.datetime | None:
    return None if t is None else dt.datetime.fromtimestamp(t, dt.UTC)


class QueueRunner:
    """Delivers due messages of the queue in ``config.spool_directory``."""

    def __init__(
        self,
        config: Config,
        delivery: Delivery | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.delivery = delivery or Delivery(config)
        self.clock = clock
        self.hostname = config.hostname
        self._reader = Queue(config.spool_path, inline_max=config.spool_inline_max)
        self._writer = StateWriter(config.spool_path, inline_max=config.spool_inline_max)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._closing: set[asyncio.Task[None]] = set()
        self.stats = RunStats()

    def reload(self, config: Config, delivery: Delivery) -> None:
        """Use new routers, transports and retry rules from now on; deliveries
        under way finish with the old ones, which are closed after them."""
        old, self.delivery = self.delivery, delivery
        self.config = config
        running = list(self._running.values())

        async def close_old() -> None:
            if running:
                await asyncio.wait(running)
            await old.close()

        task = asyncio.get_running_loop().create_task(close_old())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def wake(self) -> None:
        """New mail was queued: look at once."""
        self._wake.set()

    @property
    def busy(self) -> int:
        return len(self._running)

    # -- the loop -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set, then let deliveries under way end."""
        limit = self.config.queue_run_max
        poll = self.config.queue_poll_interval
        while not stop.is_set():
            started = self._start_due(limit)
            if started:
                continue
            self._wake.clear()
            timeout = poll
            nxt = self._reader.next_due()
            if nxt is not None and len(self._running) < limit:
                ahead = nxt - self.clock()
                if ahead > 0:
                    timeout = min(poll, ahead)
            waiters = [asyncio.ensure_future(self._wake.wait()),
                       asyncio.ensure_future(stop.wait())]  # fmt: skip
            await asyncio.wait(waiters, timeout=max(timeout, 0.01),
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            for w in waiters:
                w.cancel()
        await self.drain()

    async def run_once(self) -> int:
        """Deliver every message due now, once (``smtpedge queue run``);
        return how many were taken up."""
        seen: set[str] = set()
        limit = self.config.queue_run_max
        now = self.clock()
        while True:
            ids = [i for i in self._reader.due(now, limit + len(seen)) if i not in seen]
            room = limit - len(self._running)
            if not ids and not self._running:
                break
            for qid in ids[: max(room, 0)]:
                seen.add(qid)
                self._running[qid] = asyncio.create_task(self._deliver_task(qid))
            if self._running:
                await asyncio.wait(list(self._running.values()),
                                   return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        return len(seen)

    def _start_due(self, limit: int) -> int:
        room = limit - len(self._running)
        if room <= 0:
            return 0
        t0 = time.perf_counter()
        ids = self._reader.due(self.clock(), room + len(self._running))
        self.stats.picks += 1
        self.stats.pick_seconds += time.perf_counter() - t0
        started = 0
        for qid in ids:
            if qid in self._running:
                continue
            if started >= room:
                break
            self._running[qid] = asyncio.create_task(self._deliver_task(qid))
            started += 1
        return started

    async def _deliver_task(self, qid: str) -> None:
        try:
            await self.deliver(qid)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not stop the runner or lose the message
            logger.exception("%s delivery attempt failed: %r; retrying it later", qid, exc)
            with contextlib.suppress(Exception):
                later = self.clock() + max(60.0, self.config.queue_poll_interval)
                await self._writer.record(qid, (), next_attempt=later)
        finally:
            self._running.pop(qid, None)
            self._wake.set()

    async def drain(self, timeout: float = 10.0) -> None:
        """Let deliveries under way finish (cancel them after ``timeout``:
        their recipients stay queued and are tried again)."""
        tasks = list(self._running.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=timeout)
            for t in late:
                t.cancel()
            if late:
                await asyncio.wait(late)

    async def close(self) -> None:
        await self.drain()
        if self._closing:
            await asyncio.wait(list(self._closing))
        await self.delivery.close()
        await asyncio.to_thread(self._writer.close)
        self._reader.close()

    # -- one message --------------------------------------------------------------------

    async def deliver(self, qid: str) -> None:
        """One delivery attempt of one message: every recipient that is due."""
        msg = self._reader.get(qid)
        if msg is None:
            return
        states = self._reader.states(qid)
        content = self._reader.content(qid) or b""
        now = self.clock()
        self.stats.attempts += 1
        due = [s for s in states if s.pending and s.next_attempt <= now]
        if not due:
            waiting = [s.next_attempt for s in states if s.pending]
            await self._writer.record(qid, (), next_attempt=min(waiting) if waiting else None)
            return
        attempt = _Attempt(self, msg, content, states, now)
        await attempt.route(due)
        if attempt.expansions:
            # Alias expansions are made durable before any of their addresses
            # is delivered, so a crash cannot expand a message twice.
            await attempt.save(partial=True)
        await attempt.deliver()
        await attempt.save()


@dataclass
class _Group:
    transport: Transport
    route: Route
    members: list[tuple[RecipientState, Route]] = field(default_factory=list)


class _Attempt:
    """The work and the outcome of one delivery attempt of one message."""

    def __init__(self, runner: QueueRunner, msg: QueuedMessage, content: bytes,
                 states: list[RecipientState], now: float) -> None:  # fmt: skip
        self.runner = runner
        self.msg = msg
        self.content = content
        self.states = {s.idx: s for s in states}
        self.now = now
        self.changed: dict[int, RecipientState] = {}
        self.groups: dict[tuple[str, tuple[object, ...], str], _Group] = {}
        self.expansions: list[RecipientState] = []
        self.reports: dict[str, list[Outcome]] = {}
        self.next_idx = max(self.states, default=-1) + 1
        self.warned: int | None = None
        self._delayed: list[tuple[RecipientState, str, str, Delivered | None, float | None]] = []

    # -- routing ------------------------------------------------------------------------

    async def route(self, due: list[RecipientState]) -> None:
        delivery = self.runner.delivery
        todo = list(due)
        # One delivery per address, however many ways lead to it (as Exim does).
        seen = {s.recipient.address.lower() for s in self.states.values()
                if s.status == "delivered"}  # fmt: skip
        while todo:
            st = todo.pop(0)
            address = st.recipient.address
            route = await delivery.routing.route(address, self.msg.sender, skip=st.via)
            if route.kind == "accept" and address.lower() in seen:
                self._final(st, "delivered", None)
                logger.info("%s => <%s> R=%s: a duplicate, delivered once", self.msg.id,
                            address, route.router)  # fmt: skip
                continue
            if route.kind == "accept":
                seen.add(address.lower())
                transport = delivery.transports.get(route.transport or "")
                if transport is None:  # pragma: no cover - checked at start-up
                    self._defer(st, route, "4.3.5", f"no transport {route.transport!r}", "*")
                    continue
                # DANE's reference names depend on the next-hop domain.
                key = (
                    transport.name,
                    route.hosts,
                    f"{route.domain} {route.expanded_domain}" if route.dnssec else "",
                )
                group = self.groups.setdefault(key, _Group(transport, route))
                group.members.append((st, route))
            elif route.kind == "redirect":
                todo.extend(self._expand(st, route))
            elif route.kind == "blackhole":
                self._final(st, "delivered", None)
                logger.info("%s => :blackhole: <%s> R=%s", self.msg.id, address, route.router)
            elif route.kind == "fail":
                self._fail(st, route, route.status or "5.1.1", route.text)
            else:
                self._defer(st, route, route.status or "4.3.0", route.text, "*")

    def _expand(self, st: RecipientState, route: Route) -> list[RecipientState]:
        parent = st.recipient
        notify = parent.params.notify
        several = len(route.targets) > 1
        if several and notify and "SUCCESS" in notify:
            rest = tuple(n for n in notify if n != "SUCCESS") or ("NEVER",)
            self._report("expanded", st, "2.0.0", text="expanded to " + ", ".join(
                f"<{t}>" for t in route.targets))  # fmt: skip
            notify = rest
        # The original recipient goes with every address it expanded to.
        orcpt_type = parent.params.orcpt_type or "rfc822"
        orcpt = parent.params.orcpt or parent.address
        orcpt_xtext = parent.params.orcpt_xtext or (
            "rfc822;" + xtext.encode(parent.address.encode()) if parent.address.isascii()
            else "utf-8;" + xtext.encode_utf8_addr(parent.address))  # fmt: skip
        raw: list[tuple[str, str | None]] = []
        if notify:
            raw.append(("NOTIFY", ",".join(notify)))
        raw.append(("ORCPT", orcpt_xtext))
        children = []
        for target in route.targets:
            child = RecipientState(
                self.next_idx,
                Recipient(target, RcptParams(notify, orcpt_type, orcpt, orcpt_xtext), tuple(raw)),
                parent=st.idx, via=route.router,
            )  # fmt: skip
            self.next_idx += 1
            children.append(child)
            self.expansions.append(child)
            self.states[child.idx] = child
        self.changed[st.idx] = replace(st, status="expanded", last_attempt=self.now,
                                       last_error=None)  # fmt: skip
        logger.info("%s <%s> R=%s expanded to %s", self.msg.id, parent.address, route.router,
                    " ".join(f"<{t}>" for t in route.targets))  # fmt: skip
        return children

    # -- outcomes -----------------------------------------------------------------------

    def _final(self, st: RecipientState, status: str, error: str | None,
               host: str | None = None) -> None:  # fmt: skip
        self.changed[st.idx] = replace(st, status=status, attempts=st.attempts + 1,
                                       last_attempt=self.now, last_error=error,
                                       host=host)  # fmt: skip

    def _fail(self, st: RecipientState, route: Route, status: str, text: str,
              d: Delivered | None = None) -> None:  # fmt: skip
        logger.info("%s ** <%s>%s%s%s", self.msg.id, st.recipient.address,
                    f" R={route.router}" if route.router else "",
                    f" T={route.transport}" if d else "", _why(text, d))  # fmt: skip
        self._final(st, "failed", text, d.remote_mta if d else None)
        metrics.deliveries.labels(route.transport or "-", "failed").inc()
        self.runner.stats.failed += 1
        self._report("failed", st, status, d=d, text=text)

    def _defer(self, st: RecipientState, route: Route, status: str, text: str, error: str,
               d: Delivered | None = None) -> None:  # fmt: skip
        runner = self.runner
        first = st.first_failure if st.first_failure is not None else self.now
        decision = runner.delivery.retry.decide(
            st.recipient.address, error if error != "*" else "lost_connection",
            _when(first) or dt.datetime.now(dt.UTC), _when(self.now) or dt.datetime.now(dt.UTC),
            st.last_interval,
        )  # fmt: skip
        if decision.give_up:
            # The last error stays the most specific status known, made permanent.
            final = "5.4.7" if status in ("4.0.0", "5.0.0") else "5" + status[1:]
            self._fail(st, route, final, f"{_GAVE_UP}{text}", d)
            return
        assert decision.next_attempt is not None
        nxt = decision.next_attempt.timestamp()
        logger.info("%s == <%s> R=%s%s defer (%s)%s", self.msg.id, st.recipient.address,
                    route.router, f" T={route.transport}" if route.transport else "", error,
                    _why(text, d))  # fmt: skip
        self.changed[st.idx] = replace(
            st, status="deferred", attempts=st.attempts + 1, first_failure=first,
            last_interval=decision.interval, next_attempt=nxt, last_attempt=self.now,
            last_error=_one_line(text), host=d.remote_mta if d else st.host,
        )  # fmt: skip
        runner.stats.deferred += 1
        metrics.deliveries.labels(route.transport or "-", "deferred").inc()
        rule = runner.delivery.retry.rule_for(
            st.recipient.address, error if error != "*" else "lost_connection"
        )
        until = first + rule.give_up_after if rule else None
        self._delayed.append((st, status, text, d, until))

    def _report(self, action: str, st: RecipientState, status: str, *,
                d: Delivered | None = None, text: str = "",
                until: float | None = None) -> None:  # fmt: skip
        r = st.recipient
        if not report_wanted(r.params.notify, action, self.msg.sender or "-"):
            return
        if not self.msg.sender:  # RFC 3461 section 6.1: never a report to <>
            logger.info("%s no %s report: the sender is <> (<%s>)", self.msg.id, action,
                        r.address)  # fmt: skip
            return
        reply = d.reply if d is not None else None
        remote = d.remote_mta if d is not None else None
        diagnostic = reply.wire_lines() if reply is not None and not reply.local else ()
        self.reports.setdefault(action, []).append(Outcome(
            recipient=r.address, action=action, status=status, notify=r.params.notify,
            orcpt_type=r.params.orcpt_type, orcpt=r.params.orcpt,
            remote_mta=remote if diagnostic else None, diagnostic=diagnostic,
            text="" if diagnostic else _one_line(text),
            last_attempt=_when(self.now), will_retry_until=_when(until),
        ))  # fmt: skip

    # -- delivery -----------------------------------------------------------------------

    async def deliver(self) -> None:
        msg = self.msg
        groups = list(self.groups.values())
        jobs = [
            Job(msg.id, msg.sender, tuple(st.recipient for st, _ in g.members), self.content,
                msg.raw_mail_params, msg.mail_params.smtputf8, g.route.hosts, g.route.domain,
                g.route.dnssec, g.route.expanded_domain)
            for g in groups
        ]  # fmt: skip
        results = await asyncio.gather(
            *(g.transport.deliver(j) for g, j in zip(groups, jobs, strict=True))
        )
        for group, delivered in zip(groups, results, strict=True):
            by_address: dict[str, list[Delivered]] = {}
            for d in delivered:
                by_address.setdefault(d.recipient.address, []).append(d)
            for st, route in group.members:
                outcome = by_address.get(st.recipient.address, [])
                got = outcome.pop(0) if outcome else None
                if got is None:
                    self._defer(st, route, "4.3.0", "the transport gave no outcome", "*")
                elif got.state == "delivered":
                    self._delivered(st, route, group.transport, got)
                elif got.state == "failed":
                    self._fail(st, route, got.status, got.text, got)
                else:
                    self._defer(st, route, got.status, got.text, got.error, got)
        self._delay_warning()

    def _delivered(self, st: RecipientState, route: Route, transport: Transport,
                   d: Delivered) -> None:  # fmt: skip
        logger.info("%s => <%s> R=%s T=%s %s", self.msg.id, st.recipient.address, route.router,
                    transport.name, d.detail)  # fmt: skip
        self._final(st, "delivered", None, d.remote_mta)
        metrics.deliveries.labels(transport.name, "delivered").inc()
        self.runner.stats.delivered += 1
        if not transport.remote:
            self._report("delivered", st, "2.0.0", text=f"delivered to {d.detail}")
        elif route.dsn_lasthop or not d.dsn:
            self._report("relayed", st, d.status, d=d, text="relayed to a host that sends "
                         "no delivery notifications")  # fmt: skip

    def _delay_warning(self) -> None:
        if not self._delayed:
            return
        times = self.runner.config.delay_warning
        if not times:
            return
        # Exim's meaning: warnings at each time after arrival, then every last time.
        warned = self.runner._reader.warned(self.msg.id)
        due_at = times[warned] if warned < len(times) else (
            times[-1] * (warned + 2 - len(times)))  # fmt: skip
        if self.now - self.msg.arrival < due_at:
            return
        self.warned = warned + 1
        for st, status, text, d, until in self._delayed:
            self._report("delayed", st, status if status[0] == "4" else "4.0.0", d=d,
                         text=text, until=until)  # fmt: skip

    # -- saving -------------------------------------------------------------------------

    async def save(self, *, partial: bool = False) -> None:
        runner = self.runner
        msg = self.msg
        reports = self._build_reports()
        changed = list(self.changed.values()) + self.expansions
        self.states.update(self.changed)
        self.changed = {}
        self.expansions = []
        if partial:
            next_attempt: float | None = self.now  # the rest follows in this attempt
        else:
            waiting = [s.next_attempt for s in self.states.values() if s.pending]
            next_attempt = min(waiting) if waiting else None
        await runner._writer.record(msg.id, changed, next_attempt=next_attempt,
                                    warned=self.warned,
                                    reports=[r for r, _ in reports])  # fmt: skip
        self._log_reports(reports)
        if next_attempt is None:
            logger.info("%s Completed", msg.id)

    def _build_reports(self) -> list[tuple[MessageRecord, str]]:
        msg = self.msg
        out: list[tuple[MessageRecord, str]] = []
        if not self.reports:
            return out
        runner = self.runner
        original = OriginalMessage(
            msg.sender, self.content, _when(msg.arrival) or dt.datetime.now(dt.UTC),
            envid=msg.mail_params.envid, ret=msg.mail_params.ret,
            smtputf8=msg.mail_params.smtputf8, queue_id=msg.id,
        )  # fmt: skip
        for action, outcomes in self.reports.items():
            report = build_report(
                original,
                outcomes,
                reporting_mta=runner.hostname,
                dsn_from=runner.config.dsn_from or None,
                return_size_limit=runner.config.bounce_return_size_limit,
            )
            utf8 = not report.recipient.isascii()
            record = make_record("", [Recipient(report.recipient)], report.content,
                                 MailParams(smtputf8=utf8), (("SMTPUTF8", None),) if utf8
                                 else (), {"report": action, "about": msg.id})  # fmt: skip
            out.append((record, action))
            runner.stats.reports += 1
        self.reports = {}
        return out

    def _log_reports(self, reports: list[tuple[MessageRecord, str]]) -> None:
        for r, action in reports:
            metrics.dsn_reports.labels(action).inc()
            logger.info("%s <= <> R=%s P=local S=%d for <%s>: %s report", r.id, self.msg.id,
                        r.size, r.recipients[0].address, action)  # fmt: skip
        if reports:
            self.runner.wake()
