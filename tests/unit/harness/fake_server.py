"""A stand-in for ``python -m mock_models.server``: same flags, same endpoints, scripted behaviour.

It lets the runner's process management and HTTP flow be tested before the real engine exists.
Each generate call counts 1 + max_new_tokens forwards. FAKE_SERVER_BEHAVIOUR (comma-separated):

  detect (default)   an applied fault is followed by a violation FAKE_SERVER_LATENCY (2) forwards later
  miss               an applied fault is never reported
  no_target          faults end as status no_target
  dirty              a violation at forward 3 whatever happens
  crash_on_start     exit 3 before printing the ready line
  never_ready        never print the ready line
  crash_on_generate  exit 7 on the first generate
  hang_generate      generate never answers
  hang_generate_swa  generate never answers in model mode swa (a run stuck at a known pair)
  ignore_sigterm     SIGTERM is ignored (the runner must escalate to SIGKILL)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BEHAVIOUR = set(filter(None, os.environ.get("FAKE_SERVER_BEHAVIOUR", "detect").split(",")))
LATENCY = int(os.environ.get("FAKE_SERVER_LATENCY", "2"))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-mode", required=True, choices=["mha", "swa", "dsv4"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--device", required=True, choices=["cpu", "cuda"])
    for flag in ("--page-size", "--max-total-tokens", "--swa-window", "--sweep-interval"):
        parser.add_argument(flag, type=int, required=True)
    parser.add_argument("--real-kv", required=True, choices=["none", "partial", "all"])
    parser.add_argument("--canary-mode", required=True, choices=["log", "raise"])
    for flag in (
        "--max-running-requests",
        "--chunked-prefill-size",
        "--seed",
        "--stats-interval",
        "--swa-divergence-interval",
    ):
        parser.add_argument(flag, type=int)
    return parser.parse_args()


class Engine:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.lock = threading.Lock()
        self.forward_count = 0
        self.faults: list[dict] = []
        self.pending_violations: dict[int, int] = {}  # forward -> slot
        self.violation_lines: list[str] = []

    def log(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def generate(self, input_ids: list[int], max_new_tokens: int) -> list[int]:
        with self.lock:
            for _ in range(1 + max_new_tokens):
                self.forward_count += 1
                self.on_forward(self.forward_count)
        return [(sum(input_ids) + i) % 97 + 1 for i in range(max_new_tokens)]

    def on_forward(self, step: int) -> None:
        for fault in self.faults:
            trigger = fault["body"].get("at_step", fault["body"].get("after_warmup_steps", 0))
            if fault["status"] == "scheduled" and step >= trigger:
                if "no_target" in BEHAVIOUR:
                    fault.update(status="no_target", detail="no running request holds a locked radix node")
                    continue
                fault.update(status="applied", step=step, detail="slot 17")
                if "miss" not in BEHAVIOUR:
                    self.pending_violations[step + LATENCY] = 17
        if "dirty" in BEHAVIOUR and step == 3:
            self.pending_violations[3] = 5
        if step in self.pending_violations:
            self.violation(step, self.pending_violations.pop(step))
        interval = self.args.swa_divergence_interval
        if interval and step % interval == 0:
            self.log(
                f'kv_canary_swa_divergence={{"forward_ct":{step},"verify_full":{10 * step},"verify_swa":{4 * step},'
                '"swa_full_idx_divergence":2,"swa_out_of_window_tokens":3}'
            )
        if self.args.stats_interval and step % self.args.stats_interval == 0:
            self.log(
                f"kv_canary_stats step={step} protected_tokens={step * 8} sweep_passes=0 "
                f"violations={len(self.violation_lines)} launch_tags_active=4/4"
            )

    def violation(self, step: int, slot: int) -> None:
        group = "FULL" if self.args.model_mode == "mha" else "SWA"
        line = (
            f"kv_canary violation: launch_tag=HEAD_K_{group} fail_reason=chain_hash+position "
            f"slot_idx={slot} position=40 stored_token=9 expected_token=11 step={step}"
        )
        self.violation_lines.append(line)
        self.log(line)


def make_handler(engine: Engine) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: object) -> None:
            pass  # keep the log to the engine's lines

        def answer(self, payload: dict, status: int = 200) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/health":
                self.answer({})
            elif self.path == "/get_server_info":
                self.answer(
                    {
                        "forward_count": engine.forward_count,
                        "vocab_size": 100,
                        "max_context_len": 64,
                        "model_mode": engine.args.model_mode,
                    }
                )
            elif self.path == "/kv_canary/injections":
                self.answer(
                    {
                        "injections": [
                            {key: fault[key] for key in ("fault_id", "kind", "status", "step", "detail")}
                            for fault in engine.faults
                        ]
                    }
                )
            elif self.path == "/kv_canary/violations":
                self.answer({"count": len(engine.violation_lines), "lines": engine.violation_lines})
            else:
                self.answer({"error": f"no route {self.path}"}, 404)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
            if self.path == "/generate":
                if "crash_on_generate" in BEHAVIOUR:
                    engine.log("fatal: the fake engine crashed on purpose")
                    os._exit(7)
                if "hang_generate" in BEHAVIOUR or f"hang_generate_{engine.args.model_mode}" in BEHAVIOUR:
                    time.sleep(3600)
                output = engine.generate(body["input_ids"], body["sampling_params"]["max_new_tokens"])
                self.answer({"output_ids": output, "meta_info": {}})
            elif self.path == "/kv_canary/inject":
                fault_id = len(engine.faults) + 1
                engine.faults.append(
                    {
                        "fault_id": fault_id,
                        "kind": body["kind"],
                        "status": "scheduled",
                        "step": None,
                        "detail": "",
                        "body": body,
                    }
                )
                engine.log(f"fake server: fault {fault_id} scheduled: {json.dumps(body, sort_keys=True)}")
                self.answer({"fault_id": fault_id})
            else:
                self.answer({"error": f"no route {self.path}"}, 404)

    return Handler


def main() -> None:
    args = parse_args()
    engine = Engine(args)
    engine.log(f"fake server pid={os.getpid()} argv={' '.join(sys.argv[1:])}")
    if "ignore_sigterm" in BEHAVIOUR:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if "crash_on_start" in BEHAVIOUR:
        engine.log("Traceback (most recent call last):\nRuntimeError: the fake engine failed to start on purpose")
        sys.exit(3)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(engine))
    server.daemon_threads = True
    if "never_ready" not in BEHAVIOUR:
        engine.log(f"kv_canary_server listening on http://127.0.0.1:{args.port}")
    server.serve_forever()


if __name__ == "__main__":
    main()
