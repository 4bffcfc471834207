"""Per-case figures of the stateful machines, and the tables docs/RELIABILITY.md quotes.

Set ``KV_CANARY_RELIABILITY_STATS=/path/cases.jsonl`` and every finished machine case appends
one JSON line (appends of a line are atomic enough across pytest-xdist workers). Then::

    python -m tests.reliability.soak_stats /path/cases.jsonl

prints, per mode: clean cases and their violations and misreads; per mode and fault source
(``fault``: the tests' own applier, ``injector``: the server's), faults injected, faults whose
corruption was read (or swept), how many of those the canary reported in time, the detection
latency in forwards (0: by the forward the fault preceded), and engines that broke down after it.
"""

from __future__ import annotations

import collections
import json
import os
import statistics
import sys
from pathlib import Path

STATS_ENV = "KV_CANARY_RELIABILITY_STATS"


def record_case(case: dict[str, object]) -> None:
    path = os.environ.get(STATS_ENV)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as stats:
        stats.write(json.dumps(case, sort_keys=True) + "\n")


def _table(rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    lines.insert(1, "|" + "---|" * len(rows[0]))
    return "\n".join(lines)


def summarize(cases: list[dict]) -> str:
    clean_rows = [
        (
            "mode",
            "cases",
            "forwards",
            "reads judged",
            "violations",
            "misreads",
            "requests",
            "aborts",
            "flushes",
            "evictions",
        )
    ]
    for mode in sorted({case["mode"] for case in cases}):
        clean = [case for case in cases if case["mode"] == mode and case["machine"] == "clean"]
        clean_rows.append(
            (
                mode,
                len(clean),
                *(
                    sum(case.get(key, 0) for case in clean)
                    for key in (
                        "forwards",
                        "reads_checked",
                        "violations",
                        "misreads",
                        "submitted",
                        "aborted",
                        "flushed",
                        "evictions",
                    )
                ),
            )
        )
    fault_rows: list[tuple[object, ...]] = [
        (
            "mode",
            "fault source",
            "cases",
            "injected",
            "read after injection",
            "detected in bound",
            "missed",
            "latency median",
            "latency p99",
            "latency worst",
            "engine broke after",
        )
    ]
    groups = collections.defaultdict(list)
    for case in cases:
        if case["machine"] != "clean":
            groups[(case["mode"], case["machine"])].append(case)
    for (mode, machine), group in sorted(groups.items()):
        injected = [case for case in group if case.get("fault_step") is not None]
        read = [case for case in injected if case.get("first_misread") is not None]
        detected = [case for case in read if case.get("detected_in_bound")]
        latencies = sorted(case["latency"] for case in detected)
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else "-"
        fault_rows.append(
            (
                mode,
                machine,
                len(group),
                len(injected),
                len(read),
                len(detected),
                len(read) - len(detected),
                statistics.median(latencies) if latencies else "-",
                p99,
                latencies[-1] if latencies else "-",
                sum(1 for case in injected if case.get("engine_error")),
            )
        )
    kind_rows: list[tuple[object, ...]] = [
        ("mode", "kind", "injected", "read", "detected in bound", "latency worst", "engine broke after")
    ]
    kinds = collections.defaultdict(list)
    for case in cases:
        if case["machine"] != "clean" and case.get("fault_step") is not None:
            kinds[(case["mode"], case["kind"])].append(case)
    for (mode, kind), group in sorted(kinds.items()):
        read = [case for case in group if case.get("first_misread") is not None]
        detected = [case for case in read if case.get("detected_in_bound")]
        kind_rows.append(
            (
                mode,
                kind,
                len(group),
                len(read),
                len(detected),
                max((case["latency"] for case in detected), default="-"),
                sum(1 for case in group if case.get("engine_error")),
            )
        )
    return "\n\n".join(_table(rows) for rows in (clean_rows, fault_rows, kind_rows))


def main(argv: list[str]) -> None:
    cases = [json.loads(line) for path in argv for line in Path(path).read_text().splitlines() if line.strip()]
    print(summarize(cases))


if __name__ == "__main__":
    main(sys.argv[1:])
