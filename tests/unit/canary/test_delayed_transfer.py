"""The delayed device-to-host handler: staged at step T, delivered at T+1, never blocking a forward."""

from __future__ import annotations

import pytest
import torch

from kv_canary.observers.delayed_transfer import DelayedDeviceHostHandler


class Recorder:
    """Stages ``counter`` (with a label as context) on every step and records what reaches the host."""

    def __init__(self, counter: torch.Tensor) -> None:
        self.counter = counter
        self.delivered: list[tuple[str, int]] = []
        self.stage_next = True
        self.label = ""

    def compute_on_device(self):
        if not self.stage_next:
            return None
        return {"counter": self.counter}, self.label

    def postprocess_on_host(self, snapshot, label):
        self.delivered.append((label, int(snapshot["counter"][0])))


def run_step(handler: DelayedDeviceHostHandler, recorder: Recorder, label: str) -> None:
    recorder.label = label
    handler.step(compute_on_device=recorder.compute_on_device, postprocess_on_host=recorder.postprocess_on_host)


def test_a_value_staged_at_one_step_is_delivered_at_the_next():
    counter = torch.zeros(1, dtype=torch.int64)
    handler, recorder = DelayedDeviceHostHandler(torch.device("cpu")), Recorder(counter)
    counter += 5
    run_step(handler, recorder, "T")
    assert recorder.delivered == []  # nothing is read on the step that staged it
    run_step(handler, recorder, "T+1")
    assert recorder.delivered == [("T", 5)]


def test_the_delivered_value_is_the_one_at_staging_even_if_the_device_moved_on():
    counter = torch.zeros(1, dtype=torch.int64)
    handler, recorder = DelayedDeviceHostHandler(torch.device("cpu")), Recorder(counter)
    for label, value in [("a", 1), ("b", 2), ("c", 3)]:
        counter.fill_(value)
        run_step(handler, recorder, label)
        counter.fill_(100 + value)  # later kernels keep mutating the original tensor
    assert recorder.delivered == [("a", 1), ("b", 2)]  # in staging order, one step late


def test_a_step_that_stages_nothing_still_delivers_the_previous_snapshot():
    counter = torch.full((1,), 7, dtype=torch.int64)
    handler, recorder = DelayedDeviceHostHandler(torch.device("cpu")), Recorder(counter)
    run_step(handler, recorder, "staged")
    recorder.stage_next = False
    run_step(handler, recorder, "idle")
    run_step(handler, recorder, "idle again")
    assert recorder.delivered == [("staged", 7)]


def test_flush_delivers_the_staged_snapshot_immediately_and_only_once():
    counter = torch.full((1,), 3, dtype=torch.int64)
    handler, recorder = DelayedDeviceHostHandler(torch.device("cpu")), Recorder(counter)
    run_step(handler, recorder, "T")
    handler.flush(recorder.postprocess_on_host)
    assert recorder.delivered == [("T", 3)]
    handler.flush(recorder.postprocess_on_host)
    recorder.stage_next = False
    run_step(handler, recorder, "T+1")
    assert recorder.delivered == [("T", 3)]


def test_stepping_during_cuda_graph_capture_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    # A stand-in side stream: the capture check comes before any stream is used.
    handler = DelayedDeviceHostHandler(torch.device("cuda", 0), side_stream=object())
    recorder = Recorder(torch.zeros(1, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="during CUDA-graph capture"):
        run_step(handler, recorder, "captured")
    assert recorder.delivered == []
