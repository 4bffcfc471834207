"""The per-forward canary path captured in a CUDA graph: replays verify, write and detect."""

from __future__ import annotations

import pytest
import torch

from kv_canary import KernelBackend
from kv_canary.launch_tags import KvHalf, Phase, PoolGroupKind
from kv_canary.records import RecordWord
from tests.unit.canary.fake_engine import ForwardBatch
from tests.unit.canary.test_detection import make_engine, reported, serve_shared_prefix_traffic

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_captured_decode_replays_clean_and_catches_a_corrupted_record():
    engine = make_engine(KernelBackend.TRITON, "cuda")
    requests = serve_shared_prefix_traffic(engine)
    device = "cuda"

    def static(n: int) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.int64, device=device)

    input_ids, positions, out_cache_loc, seq_lens = static(2), static(2), static(2), static(2)
    batch = ForwardBatch(
        req_pool_indices=torch.tensor([r.row for r in requests], device=device),
        seq_lens=seq_lens,
        extend_prefix_lens=static(2),
        extend_seq_lens=torch.ones(2, dtype=torch.int64, device=device),
        extend_prefix_lens_cpu=None,
        extend_seq_lens_cpu=None,
        out_cache_loc=out_cache_loc,
        req_to_token_pool=engine.req_pool,
    )

    def prepare_decode(tokens: list[int]) -> None:
        """Host-side scheduling for one decode step, written into the graph's static inputs."""
        slots = []
        for request, token in zip(requests, tokens, strict=True):
            position = len(request.tokens)
            slot = engine.free_slots.pop(0)
            engine.req_pool.req_to_token[request.row, position] = slot
            engine.req_pool.req_token_ids[request.row, position] = token
            request.tokens.append(token)
            slots.append(slot)
        lengths = [len(r.tokens) for r in requests]
        input_ids.copy_(torch.tensor(tokens))
        positions.copy_(torch.tensor([n - 1 for n in lengths]))
        out_cache_loc.copy_(torch.tensor(slots))
        seq_lens.copy_(torch.tensor(lengths))
        batch.extend_prefix_lens.copy_(positions)

    graph = torch.cuda.CUDAGraph()
    prepare_decode([500, 600])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        engine.model(input_ids, positions, batch)  # eager warm-up compiles the kernels
    torch.cuda.current_stream().wait_stream(side)
    prepare_decode([501, 601])
    with torch.cuda.graph(graph):
        engine.model(input_ids, positions, batch)  # recorded, not run: the step is run by the first replay
    graph.replay()
    engine.canary.after_forward_on_host()  # replays run no host code; the engine calls this after each

    for step in range(4):
        prepare_decode([510 + step, 610 + step])
        graph.replay()
        engine.canary.after_forward_on_host()
    assert reported(engine) == []
    runs_before = engine.canary.stats_snapshot()["kernel_runs"]["HEAD_K_FULL"]

    victim = engine.slot_of(requests[0], 3)
    engine.canary.group(PoolGroupKind.FULL).records(Phase.HEAD, KvHalf.V)[victim, RecordWord.TOKEN] += 1
    prepare_decode([520, 620])
    graph.replay()
    engine.canary.after_forward_on_host()
    violations = reported(engine)
    assert {(v.launch_tag, v.slot_idx, v.position) for v in violations if "token" in v.fail_reasons} == {
        ("HEAD_V_FULL", victim, 3)
    }
    assert engine.canary.stats_snapshot()["kernel_runs"]["HEAD_K_FULL"] == runs_before + 1
