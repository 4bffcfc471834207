"""CUDA-event timing shared by the benchmarks: eager launches and CUDA-graph replays."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch


def time_eager_us(launch: Callable[[], None], iterations: int = 200, warmup: int = 50, rounds: int = 5) -> float:
    """Median over ``rounds`` of the mean microseconds per launch: small eager launches are host-bound,
    and one round alone moved by 1.5x from run to run."""
    for _ in range(warmup):
        launch()
    torch.cuda.synchronize()
    per_round = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iterations):
            launch()
        end.record()
        torch.cuda.synchronize()
        per_round.append(start.elapsed_time(end) * 1000.0 / iterations)
    return statistics.median(per_round)


def time_graph_us(launch: Callable[[], None], launches_per_graph: int = 10, replays: int = 20) -> float:
    """Microseconds per launch when ``launches_per_graph`` launches are replayed from one graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        launch()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(launches_per_graph):
            launch()
    return time_eager_us(graph.replay, iterations=replays) / launches_per_graph
