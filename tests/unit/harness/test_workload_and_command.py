"""Concrete requests from a workload, and the server's command line from engine settings."""

from __future__ import annotations

from harness.runner.server_command import effective_swa_divergence_interval, server_argv
from harness.runner.workload import FIRST_TOKEN, filler_request, plan_requests
from tests.unit.harness.samples import DESIGN_EXAMPLE


def test_requests_share_their_prefix_tokens_exactly(load_text):
    workload = load_text(DESIGN_EXAMPLE.read_text()).scenario.workload
    planned = plan_requests(workload, vocab_size=100)
    assert [len(request.input_ids) for request in planned] == [128] * 6 + [300]
    assert [request.max_new_tokens for request in planned] == [48] * 6 + [80]
    prefixes = {request.input_ids[:96] for request in planned[:6]}
    assert len(prefixes) == 1  # one shared prefix ...
    assert len({request.input_ids[96:] for request in planned[:6]}) == 6  # ... and distinct suffixes
    assert all(FIRST_TOKEN <= token < 100 for request in planned for token in request.input_ids)


def test_plans_repeat_exactly_and_depend_on_the_seed(load_text):
    workload = load_text(DESIGN_EXAMPLE.read_text()).scenario.workload
    assert plan_requests(workload, vocab_size=100) == plan_requests(workload, vocab_size=100)
    reseeded = workload.model_copy(update={"seed": 8})
    assert plan_requests(reseeded, vocab_size=100) != plan_requests(workload, vocab_size=100)


def test_fillers_are_short_and_distinct():
    first, second = filler_request(0, vocab_size=100), filler_request(1, vocab_size=100)
    assert first != second and len(first.input_ids) < 8


def test_the_server_command_carries_every_engine_setting(load_text):
    engine = load_text(DESIGN_EXAMPLE.read_text()).scenario.engine.model_copy(
        update={"max_running_requests": 8, "seed": 3}
    )
    argv = server_argv(
        server_command=("python", "-m", "mock_models.server"),
        engine=engine,
        mode="swa",
        port=4321,
        device="cpu",
        swa_divergence_interval=1,
    )
    assert argv == [
        "python",
        "-m",
        "mock_models.server",
        "--model-mode",
        "swa",
        "--port",
        "4321",
        "--device",
        "cpu",
        "--page-size",
        "1",
        "--max-total-tokens",
        "4096",
        "--swa-window",
        "64",
        "--sweep-interval",
        "8",
        "--real-kv",
        "partial",
        "--canary-mode",
        "log",
        "--max-running-requests",
        "8",
        "--seed",
        "3",
        "--swa-divergence-interval",
        "1",
    ]


def test_an_swa_divergence_expectation_turns_the_reporter_on(load_text):
    engine = load_text(DESIGN_EXAMPLE.read_text()).scenario.engine
    assert effective_swa_divergence_interval(engine, expects_swa_divergence=True) == 1
    assert effective_swa_divergence_interval(engine, expects_swa_divergence=False) is None
    explicit = engine.model_copy(update={"swa_divergence_interval": 5})
    assert effective_swa_divergence_interval(explicit, expects_swa_divergence=True) == 5
