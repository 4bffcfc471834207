"""Per-case figures of the stateful machines, and the table docs/RELIABILITY.md quotes.

Set ``KV_CANARY_RELIABILITY_STATS=/path/cases.jsonl`` and every finished machine case appends
one JSON line (appends of a line are atomic enough across pytest-xdist workers). Then::

    python -m tests.reliability.soak_stats /path/cases.jsonl

prints, per mode: cases, clean-run violations and misreads, faults injected, faults whose
corruption was read (or swept), how many of those the canary reported in time, and the
detection latency in forwards (median, worst).
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


def summarize(lines: list[dict]) -> str:
    by_mode: dict[str, list[dict]] = collections.defaultdict(list)
    for case in lines:
        by_mode[case["mode"]].append(case)
    header = ("mode", "clean cases", "clean forwards", "clean violations", "clean misreads", "fault cases",
              "injected", "read after injection", "detected in bound", "missed", "median latency",
              "worst latency", "engine broke after fault")
    rows = [header]
    for mode in sorted(by_mode):
        cases = by_mode[mode]
        clean = [case for case in cases if case["machine"] == "clean"]
        faulty = [case for case in cases if case["machine"] == "fault"]
        injected = [case for case in faulty if case.get("fault_step") is not None]
        harmful = [case for case in injected if case.get("first_misread") is not None]
        detected = [case for case in harmful if case.get("detected_in_bound")]
        latencies = [case["latency"] for case in detected]
        rows.append((mode, len(clean), sum(case["forwards"] for case in clean),
                     sum(case["violations"] for case in clean), sum(case["misreads"] for case in clean),
                     len(faulty), len(injected), len(harmful), len(detected), len(harmful) - len(detected),
                     statistics.median(latencies) if latencies else "-", max(latencies, default="-"),
                     sum(1 for case in injected if case.get("engine_error"))))
    kinds = collections.Counter((case["mode"], case["kind"], bool(case.get("first_misread")),
                                 bool(case.get("detected_in_bound")))
                                for case in lines if case["machine"] == "fault" and case.get("fault_step") is not None)
    table = "\n".join("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)
    per_kind = "\n".join(f"{mode:5} {kind:20} read={read!s:5} detected={found!s:5} {count}"
                         for (mode, kind, read, found), count in sorted(kinds.items()))
    return f"{table}\n\n{per_kind}"


def main(argv: list[str]) -> None:
    lines = [json.loads(line) for path in argv for line in Path(path).read_text().splitlines() if line.strip()]
    print(summarize(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
