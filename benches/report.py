"""Print the medians of a pytest-benchmark JSON file and the ratios against
the Rust backend, one table per run.

    python benches/report.py .benchmarks/latest.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from typing import Any


def label(name: str) -> str:
    if "[" in name:
        return name.split("[", 1)[1].rstrip("]")
    return name.rsplit("_", 1)[1]


def server_tables(run: dict[str, Any]) -> None:
    """Messages per second under smtp-source, the ratios the targets name, and
    the CPU each server spent per message."""
    for b in run["benchmarks"]:
        if b["group"] == "queue runner memory":
            info = b["extra_info"]
            print(
                "queue runner, allocation peak of a delivery run: "
                + ", ".join(
                    f"{v:.2f} MB with {k.rsplit('_', 1)[1]} queued" for k, v in info.items()
                )
                + "\n"
            )
        elif b["group"] == "idle connections":
            info = b["extra_info"]
            before, after = info["rss_before_mb"], info["rss_after_mb"]
            print(f"{info['connections']} idle connections: server RSS {before:.1f} MB before, "
                  f"{after:.1f} MB after\n")  # fmt: skip
    for b in sorted(run["benchmarks"], key=lambda b: b["group"]):
        if not b["group"].startswith("server") or "median_seconds" not in b["extra_info"]:
            continue
        info = b["extra_info"]
        rows = {n: info["messages"] / t for n, t in info["median_seconds"].items()}
        cpus = info["server_cpu_us_per_message"]
        bases = [rows.get("postfix-durable"), rows.get("aiosmtpd-durable"),
                 rows.get("smtp-sink")]  # fmt: skip
        print(f"| {b['group']} | messages/s | vs Postfix durable | vs aiosmtpd durable "
              "| vs smtp-sink | server CPU per message |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|")
        for name, rate in sorted(rows.items(), key=lambda kv: -kv[1]):
            ratios = " | ".join(f"{rate / base:.2f}x" if base else "" for base in bases)
            cpu = f"{cpus[name]:,.0f} us" if name in cpus else ""
            print(f"| {name} | {rate:,.0f} | {ratios} | {cpu} |")
        plain, v2 = rows.get("smtpedge-via-haproxy"), rows.get("smtpedge-via-haproxy-proxy-v2")
        if plain and v2:
            print(f"\nPROXY v2 through haproxy: {v2:,.0f} vs {plain:,.0f} messages/s without "
                  f"the header ({(plain - v2) / plain * 100:+.1f}% cost)")  # fmt: skip
        before = cpus.get("smtpedge-baseline")
        if before:
            names = [n for n in ("smtpedge", "smtpedge-1-worker") if n in cpus]
            now = ", ".join(f"{n} {cpus[n] / before:.2f}x" for n in names)
            print(f"\nserver CPU per message against smtpedge-baseline ({before:,.0f} us): {now}")
        print()


def relay_tables(run: dict[str, Any]) -> None:
    """Messages per second through accept, queue and delivery, and the
    queue runner's own cost per delivery."""
    rows = {label(b["name"]): b for b in run["benchmarks"]
            if b["group"] == "relay through the whole path"}  # fmt: skip
    rate = {n: b["extra_info"]["messages"] / b["stats"]["median"] for n, b in rows.items()}
    if rate:
        postfix = rate.get("postfix")
        print("| relay to a smarthost | messages/s | vs Postfix | server CPU per message |")
        print("|---|---:|---:|---:|")
        for name, r in sorted(rate.items(), key=lambda kv: -kv[1]):
            ratio = f"{r / postfix:.2f}x" if postfix else ""
            cpu = rows[name]["extra_info"]["server_cpu_us_per_message"]
            print(f"| {name} | {r:,.0f} | {ratio} | {cpu:,.0f} us |")
        print()
    for b in run["benchmarks"]:
        if b["group"] == "queue runner, deliveries":
            info = b["extra_info"]
            print(
                f"queue runner alone: {info['messages'] / b['stats']['median']:,.0f} deliveries/s"
                f", {info['runner_cpu_us_per_delivery']:,.0f} us CPU per delivery\n"
            )


def cluster_tables(run: dict[str, Any]) -> None:
    """Redis-backed limits against the shared-memory table, per connection;
    three nodes behind haproxy against one."""
    for group, base in (("limits per connection", "table"), ("cluster behind haproxy",
                                                             "one-node")):  # fmt: skip
        found = [b for b in run["benchmarks"] if b["group"] == group]
        if not found:
            continue
        info = found[0]["extra_info"]
        rate = {n: info["messages"] / t for n, t in info["median_seconds"].items()}
        cpus = info["server_cpu_us_per_message"]
        ref = rate.get(base)
        print(
            f"| {group} | messages/s | vs {base} | time per connection | server CPU per message |"
        )
        print("|---|---:|---:|---:|---:|")
        for name, r in sorted(rate.items(), key=lambda kv: -kv[1]):
            ratio = f"{r / ref:.2f}x" if ref else ""
            cpu = cpus.get(name)
            cpu_text = f"{cpu:,.0f} us" if cpu is not None else ""
            print(f"| {name} | {r:,.0f} | {ratio} | {1e6 / r:,.0f} us | {cpu_text} |")
        print()


_SPECIAL = (
    "limits per connection",
    "cluster behind haproxy",
    "idle connections",
    "queue runner memory",
    "relay through the whole path",
    "queue runner, deliveries",
)


def main(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        run = json.load(f)
    for b in run["benchmarks"]:
        b["group"] = b["group"] or label(b["name"])
    server_tables(run)
    relay_tables(run)
    cluster_tables(run)
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for b in run["benchmarks"]:
        if b["group"].startswith("server") or b["group"] in _SPECIAL:
            continue
        groups[b["group"]][label(b["name"])] = b["stats"]["median"]
    print("| group | implementation | median | vs rust (or plain) |")
    print("|---|---|---:|---:|")
    for group in sorted(groups):
        rows = groups[group]
        # Against the Rust backend, the plain variant, or the smallest queue.
        base_name = next(
            (n for n in ("rust", "plain", "1000-queued", "opportunistic") if n in rows), ""
        )
        rust = rows.get(base_name)
        for impl, median in sorted(rows.items(), key=lambda kv: kv[1]):
            ratio = f"{median / rust:.2f}x" if rust and impl != base_name else ""
            print(f"| {group} | {impl} | {fmt(median)} | {ratio} |")
    return 0


def fmt(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} us"
    return f"{seconds * 1e3:.2f} ms"


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
