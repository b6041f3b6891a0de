"""Print the medians of a pytest-benchmark JSON file and the ratios against
the Rust backend, one table per run.

    python benches/report.py .benchmarks/latest.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def label(name: str) -> str:
    if "[" in name:
        return name.split("[", 1)[1].rstrip("]")
    return name.rsplit("_", 1)[1]


def main(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        run = json.load(f)
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for b in run["benchmarks"]:
        groups[b["group"]][label(b["name"])] = b["stats"]["median"]
    print("| group | implementation | median | vs rust |")
    print("|---|---|---:|---:|")
    for group in sorted(groups):
        rows = groups[group]
        rust = rows.get("rust")
        for impl, median in sorted(rows.items(), key=lambda kv: kv[1]):
            ratio = f"{median / rust:.1f}x slower" if rust and impl != "rust" else ""
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
