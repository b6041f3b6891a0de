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
    """Messages per second under smtp-source, and the ratios the targets name."""
    rates: dict[str, dict[str, float]] = defaultdict(dict)
    for b in run["benchmarks"]:
        if b["group"].startswith("server"):
            name = b["name"].split("[", 1)[1].rstrip("]")
            name = name.rsplit("-", 2)[0]  # drop "-new-connections" / "-reused-connections"
            rates[b["group"]][name] = b["extra_info"]["messages"] / b["stats"]["median"]
        elif b["group"] == "idle connections":
            info = b["extra_info"]
            before, after = info["rss_before_mb"], info["rss_after_mb"]
            print(f"{info['connections']} idle connections: server RSS {before:.1f} MB before, "
                  f"{after:.1f} MB after\n")  # fmt: skip
    for group in sorted(rates):
        rows = rates[group]
        durable, discard = rows.get("aiosmtpd-durable"), rows.get("aiosmtpd-discard")
        print(f"| {group} | messages/s | vs aiosmtpd durable | vs aiosmtpd discarding |")
        print("|---|---:|---:|---:|")
        for name, rate in sorted(rows.items(), key=lambda kv: -kv[1]):
            a = f"{rate / durable:.2f}x" if durable else ""
            b = f"{rate / discard:.2f}x" if discard else ""
            print(f"| {name} | {rate:,.0f} | {a} | {b} |")
        plain, v2 = rows.get("smtpedge-via-haproxy"), rows.get("smtpedge-via-haproxy-proxy-v2")
        if plain and v2:
            print(f"\nPROXY v2 through haproxy: {v2:,.0f} vs {plain:,.0f} messages/s without "
                  f"the header ({(plain - v2) / plain * 100:+.1f}% cost)")  # fmt: skip
        print()


def main(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        run = json.load(f)
    server_tables(run)
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for b in run["benchmarks"]:
        if b["group"].startswith("server") or b["group"] == "idle connections":
            continue
        groups[b["group"]][label(b["name"])] = b["stats"]["median"]
    print("| group | implementation | median | vs rust (or plain) |")
    print("|---|---|---:|---:|")
    for group in sorted(groups):
        rows = groups[group]
        base_name = "rust" if "rust" in rows else "plain"
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
