"""The SWA divergence reporter on a hand-built SWA state: each signal moves when it should."""

from __future__ import annotations

import logging

import pytest
import torch

from kv_canary import CanaryConfig, KernelBackend, SwaDivergenceLog, install_canary
from kv_canary.observers.swa_divergence import SwaDivergenceReporter
from tests.unit.canary.fake_engine import FakeEngine, ForwardBatch, ReqToTokenPool
from tests.unit.canary.fake_swa_engine import FakeSwaEngine, SWAKVPool

WINDOW = 2


class NoOpModel(torch.nn.Module):
    def forward(self, input_ids, positions, forward_batch):
        return None


def config(**overrides) -> CanaryConfig:
    # Verification is blinded: the records of this hand-built state were never written.
    settings = {
        "backend": KernelBackend.TORCH,
        "swa_divergence_interval": 1,
        "stats_interval": 0,
        "health_check_interval": 0,
        "self_test_disable_verify": True,
        "verify_capacity": 64,
        "write_capacity": 16,
        "max_requests_per_forward": 4,
        **overrides,
    }
    return CanaryConfig(**settings)


class HandBuiltSwaState:
    """Request row 1 holds full slots 1..6, row 2 slots 7..9; every SWA index equals its full index."""

    def __init__(self, *, host_lengths: bool, **overrides) -> None:
        self.pool = SWAKVPool(num_full_slots=16, num_swa_slots=16)
        self.mapping = self.pool.full_to_swa_index_mapping
        self.mapping[1:10] = torch.arange(1, 10)
        self.req_pool = ReqToTokenPool(rows=4, max_context=12, device="cpu")
        self.req_pool.req_to_token[1, :6] = torch.arange(1, 7, dtype=torch.int32)
        self.req_pool.req_to_token[2, :3] = torch.arange(7, 10, dtype=torch.int32)
        self.model = NoOpModel()
        self.canary = install_canary(
            model=self.model,
            kv_pool=self.pool,
            req_to_token_pool=self.req_pool,
            config=config(**overrides),
            swa_window=WINDOW,
        )
        self.host_lengths = host_lengths

    def forward(self) -> None:
        """A decode of both requests: prefixes 5 and 2, one new token each (slots 6 and 9)."""
        prefix, extend = [5, 2], [1, 1]
        batch = ForwardBatch(
            req_pool_indices=torch.tensor([1, 2]),
            seq_lens=torch.tensor([6, 3]),
            extend_prefix_lens=torch.tensor(prefix),
            extend_seq_lens=torch.tensor(extend),
            extend_prefix_lens_cpu=prefix if self.host_lengths else None,
            extend_seq_lens_cpu=extend if self.host_lengths else None,
            out_cache_loc=torch.tensor([6, 9]),
            req_to_token_pool=self.req_pool,
        )
        self.model(torch.tensor([106, 109]), torch.tensor([5, 2]), batch)


@pytest.fixture
def log_text(caplog):
    caplog.set_level(logging.INFO, logger="kv_canary")
    return lambda: caplog.text


def last_line(state: HandBuiltSwaState, log_text) -> SwaDivergenceLog | None:
    state.canary.flush()
    return SwaDivergenceLog.find_last(log_text())


@pytest.mark.parametrize("host_lengths", [True, False], ids=["host-lengths", "no-host-lengths"])
def test_each_signal_moves_when_it_should(host_lengths, log_text):
    state = HandBuiltSwaState(host_lengths=host_lengths)
    state.forward()
    # Prefixes 5 and 2: the FULL group verifies 5 + 2 entries, the SWA group its window, 2 + 2.
    assert last_line(state, log_text) == SwaDivergenceLog(
        forward_ct=1, verify_full=7, verify_swa=4, swa_full_idx_divergence=0, swa_out_of_window_tokens=0
    )
    state.mapping[[1, 2]] = 0  # the oldest two tokens of row 1 slide out of the window
    state.forward()
    assert last_line(state, log_text) == SwaDivergenceLog(
        forward_ct=2, verify_full=14, verify_swa=8, swa_full_idx_divergence=0, swa_out_of_window_tokens=2
    )
    state.mapping[8] = 12  # a live token of row 2 now reads another SWA slot
    state.mapping[14] = 3  # not a live token: does not count
    state.forward()
    assert last_line(state, log_text) == SwaDivergenceLog(
        forward_ct=3, verify_full=21, verify_swa=12, swa_full_idx_divergence=1, swa_out_of_window_tokens=2
    )


def test_lines_come_every_interval_with_counts_read_one_forward_late(log_text):
    state = HandBuiltSwaState(host_lengths=True, swa_divergence_interval=2)
    for _ in range(4):
        state.forward()
    assert [line.forward_ct for line in SwaDivergenceLog.find_all(log_text())] == [2]
    state.mapping[5] = 0  # after forward 4 was staged: must not show in its line
    state.canary.flush()
    assert SwaDivergenceLog.find_all(log_text())[-1] == SwaDivergenceLog(
        forward_ct=4, verify_full=28, verify_swa=16, swa_full_idx_divergence=0, swa_out_of_window_tokens=0
    )


def test_decoding_past_the_window_shows_fewer_swa_verifies_and_out_of_window_tokens(log_text):
    engine = FakeSwaEngine(config(self_test_disable_verify=False, swa_divergence_interval=4), window=4)
    request = engine.add_request([1, 2, 3, 4, 5, 6, 7])
    engine.forward([request])
    for step in range(7):
        engine.forward([request], new_tokens=[[30 + step]])
    engine.canary.flush()
    line = SwaDivergenceLog.find_last(log_text())
    assert line.forward_ct == 8 and line.verify_swa < line.verify_full
    # Forward 8 read a prefix of 13 and wrote 1 token; the window kept 4 of the 13 cached ones.
    assert line.swa_out_of_window_tokens == 13 - 4
    assert engine.canary.violations == []


def test_the_reporter_is_opt_in_and_needs_a_full_and_an_swa_group():
    def has_reporter(engine) -> bool:
        return any(isinstance(o, SwaDivergenceReporter) for o in engine.canary.observers)

    assert has_reporter(FakeSwaEngine(config(swa_divergence_interval=3)))
    assert not has_reporter(FakeSwaEngine(config(swa_divergence_interval=0)))
    assert not has_reporter(FakeEngine(config(swa_divergence_interval=3)))  # MHA: no SWA group
