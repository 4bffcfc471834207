"""The Triton per-forward launches against the torch reference, byte for byte, over random forwards.

On CPU the Triton kernels run in Triton's interpreter (TRITON_INTERPRET=1, set in conftest).
Two identical installs (pool, records, counters) run the same forwards: the HEAD launches, a
model writing K/V into the new slots, the TAIL launch. Between forwards the same faults are
planted in both (record words, K/V bytes, a layer the model forgets to write); after each forward
records, K/V bytes, counters and violation rows (as sorted multisets: Triton blocks claim ring
rows in any order) must agree. Forwards mix prefill chunks, decodes, shared prefixes, padded
batch entries, requests sliding past the SWA window, with and without the host's lengths (as
under graph capture) and with decode batches given by ``seq_lens`` alone.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from kv_canary.config import CanaryConfig, KernelBackend, RealKvHashMode
from kv_canary.forward_rows import ForwardRows
from kv_canary.kernels import forward_launch
from tests.unit.canary.canary_pools import (
    Install,
    assert_same_state,
    layer_buffers,
    layer_buffers_by_pool,
    make_install,
)
from tests.unit.canary.devices import DEVICES

SLOTS = 400
SWA_SLOTS = 200
WINDOW = 24
ROWS = 10
MAX_CONTEXT = 100


@dataclasses.dataclass(frozen=True)
class Scale:
    """How large the random forwards get: small in the default run (the interpreter runs every lane)."""

    max_context: int
    max_batch: int
    max_prompt: int
    extends: tuple[int, ...]


SMALL = Scale(max_context=44, max_batch=3, max_prompt=30, extends=(1, 3, 17))
LARGE = Scale(max_context=MAX_CONTEXT, max_batch=5, max_prompt=60, extends=(1, 3, 17, 40))


@dataclasses.dataclass
class Request:
    row: int
    tokens: list[int]
    slots: list[int]  # full-pool slot of each position written so far


@dataclasses.dataclass
class Simulation:
    """The engine's side: rows, slots, the SWA mapping, and a model that writes K/V."""

    rng: random.Random
    mode: str
    device: str
    scale: Scale
    installs: list[Install]
    req_to_token: torch.Tensor
    token_ids: torch.Tensor
    free_slots: list[int]
    free_swa: list[int]
    requests: list[Request] = dataclasses.field(default_factory=list)
    free_rows: list[int] = dataclasses.field(default_factory=lambda: list(range(1, ROWS)))

    def start_request(self) -> None:
        if not self.free_rows:
            return
        row = self.free_rows.pop(0)
        request = Request(
            row=row, tokens=[self.rng.randrange(50_000) for _ in range(self.rng.randint(1, 60))], slots=[]
        )
        if self.requests and self.rng.random() < 0.4:  # share a cached prefix
            other = self.rng.choice(self.requests)
            shared = self.rng.randint(0, len(other.slots))
            request.tokens[:shared] = other.tokens[:shared]
            request.slots = list(other.slots[:shared])
            self.req_to_token[row, :shared] = torch.tensor(request.slots, dtype=torch.int32)
        self.token_ids[row, : len(request.tokens)] = torch.tensor(request.tokens)
        self.requests.append(request)

    def plan_forward(self, *, hints: bool, seq_lens_form: bool) -> ForwardRows:
        growing = [request for request in self.requests if len(request.slots) < self.scale.max_context]
        batch = self.rng.sample(growing, self.rng.randint(1, min(self.scale.max_batch, len(growing))))
        rows: list[int] = []
        prefixes: list[int] = []
        extends: list[int] = []
        slots: list[int] = []
        input_ids: list[int] = []
        positions: list[int] = []
        for request in batch:
            prefix = len(request.slots)
            if prefix == len(request.tokens):
                request.tokens.append(self.rng.randrange(50_000))  # decode one more token
                self.token_ids[request.row, prefix] = request.tokens[-1]
            extend = min(
                len(request.tokens) - prefix, self.rng.choice(self.scale.extends), self.scale.max_context - prefix
            )
            new = [self.free_slots.pop() for _ in range(extend)]
            self.req_to_token[request.row, prefix : prefix + extend] = torch.tensor(new, dtype=torch.int32)
            request.slots += new
            for position, slot in zip(range(prefix, prefix + extend), new, strict=True):
                self._map_swa(request, slot, position)
            rows.append(request.row)
            prefixes.append(prefix)
            extends.append(extend)
            slots += new
            input_ids += request.tokens[prefix : prefix + extend]
            positions += range(prefix, prefix + extend)
        if self.rng.random() < 0.3:  # a graph-padding entry: the padding row, writing nothing
            rows.append(0)
            prefixes.append(self.rng.choice([0, 5]))
            extends.append(1)
            slots.append(0)
            input_ids.append(0)
            positions.append(0)
        decode = all(n == 1 for n in extends)

        def tensor(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64, device=self.device)

        return ForwardRows(
            req_pool_indices=tensor(rows),
            prefix_lens=None if decode and seq_lens_form else tensor(prefixes),
            extend_lens=None if decode and seq_lens_form else tensor(extends),
            seq_lens=tensor([p + 1 for p in prefixes]) if decode else None,
            out_cache_loc=tensor(slots),
            input_ids=tensor(input_ids),
            positions=tensor(positions),
            req_to_token=self.req_to_token,
            req_token_ids=self.token_ids,
            prefix_lens_host=tuple(prefixes) if hints else None,
            extend_lens_host=tuple(extends) if hints else None,
            max_extend_len=1 if decode else None,
        )

    def _map_swa(self, request: Request, slot: int, position: int) -> None:
        """Give the new slot an SWA slot; free the one of the position that slid out of the window."""
        if self.mode == "mha":
            return
        for install in self.installs:
            install.full_to_swa()[slot] = self.free_swa[-1]
        self.free_swa.pop()
        if position >= WINDOW + 2:
            gone = request.slots[position - WINDOW - 2]
            swa_slot = int(self.installs[0].full_to_swa()[gone])
            if swa_slot:
                self.free_swa.insert(0, swa_slot)
                for install in self.installs:
                    install.full_to_swa()[gone] = 0

    def write_kv(self, rows: ForwardRows, forgotten: tuple[int, int] | None) -> None:
        """The model: K/V of every new token in every layer, but ``forgotten`` (entry, buffer index)."""
        values = (rows.input_ids * 7 + rows.positions).to(torch.float16)[:, None]
        for install in self.installs:
            for index, (buffer, swa) in enumerate(layer_buffers_by_pool(install.pool)):
                slots = install.full_to_swa()[rows.out_cache_loc] if swa else rows.out_cache_loc
                written = values + index + torch.arange(buffer.shape[1], device=self.device)
                keep = torch.ones_like(slots, dtype=torch.bool)
                if forgotten is not None and forgotten[1] == index:
                    keep[forgotten[0]] = False
                buffer[slots[keep]] = written[keep]


def plant_fault(rng: random.Random, installs: list[Install], written: list[int]) -> None:
    """The same damage in both installs: a record word, or a K/V byte of a written slot."""
    if not written:
        return
    slot = rng.choice(written)
    if rng.random() < 0.5:
        buffer_index = rng.randrange(len(installs[0].records()))
        word, bit = rng.randrange(4), rng.randrange(63)
        for install in installs:
            records = install.records()[buffer_index]
            records[slot % records.shape[0], word] ^= 1 << bit
    else:
        buffer_index = rng.randrange(len(layer_buffers(installs[0].pool)))
        for install in installs:
            buffer = layer_buffers(install.pool)[buffer_index]
            buffer[slot % buffer.shape[0], 0] += 1


def run_case(
    mode: str, real_kv: RealKvHashMode, seed: int, device: str, *, forwards: int, scale: Scale = SMALL, **config
) -> None:
    rng = random.Random(seed)
    settings = {
        "real_kv_hash": real_kv,
        "ring_capacity": 4096,
        "verify_capacity": 512,
        "write_capacity": 512,
        "max_requests_per_forward": 8,
        "check_lost_writes": real_kv is not RealKvHashMode.NONE and seed % 2 == 0,
        "verify_tokens": seed % 3 != 2,
        **config,
    }
    installs = [
        make_install(
            backend,
            mode,
            CanaryConfig(backend=backend, **settings),
            slots=SLOTS,
            swa_slots=SWA_SLOTS,
            window=WINDOW,
            device=device,
        )
        for backend in (KernelBackend.TORCH, KernelBackend.TRITON)
    ]
    simulation = Simulation(
        rng=rng,
        mode=mode,
        device=device,
        scale=scale,
        installs=installs,
        req_to_token=torch.zeros(ROWS, MAX_CONTEXT, dtype=torch.int32, device=device),
        token_ids=torch.full((ROWS, MAX_CONTEXT), -1, dtype=torch.int64, device=device),
        free_slots=rng.sample(range(1, SLOTS), SLOTS - 1),
        free_swa=rng.sample(range(1, SWA_SLOTS), SWA_SLOTS - 1),
    )
    for _ in range(3):
        simulation.start_request()
    for forward in range(forwards):
        if rng.random() < 0.4:
            simulation.start_request()
        rows = simulation.plan_forward(hints=rng.random() < 0.6, seq_lens_form=rng.random() < 0.5)
        forgotten = None
        if rows.num_new_tokens and rng.random() < 0.4:
            forgotten = (rng.randrange(rows.num_new_tokens), rng.randrange(len(layer_buffers(installs[0].pool))))
        for install in installs:
            kernels = install.kernels
            kernels.forward.before_forward(rows, verify=kernels.verify, write=kernels.write)
        simulation.write_kv(rows, forgotten)
        for install in installs:
            kernels = install.kernels
            kernels.forward.after_forward(rows, verify=kernels.verify, write=kernels.write)
        assert_same_state(installs[0], installs[1])
        if forward % 2:
            plant_fault(rng, installs, [slot for request in simulation.requests for slot in request.slots])


MODES = ["mha", "swa", "dsv4"]
# (mode, real KV, seed): an even seed with real KV turns the lost-write check on (run_case).
DEFAULT_CASES = [
    ("mha", RealKvHashMode.NONE, 1),
    ("swa", RealKvHashMode.PARTIAL, 2),
    ("dsv4", RealKvHashMode.PARTIAL, 4),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("mode", "real_kv", "seed"), DEFAULT_CASES, ids=[case[0] for case in DEFAULT_CASES])
def test_random_forwards_match_the_reference_byte_for_byte(mode, real_kv, seed, device):
    run_case(mode, real_kv, seed, device, forwards=3)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("mode", MODES)
def test_many_random_forwards_match_the_reference_byte_for_byte(mode, seed, device):
    real_kv = [RealKvHashMode.NONE, RealKvHashMode.PARTIAL, RealKvHashMode.ALL][seed % 3]
    run_case(mode, real_kv, seed, device, forwards=8, scale=LARGE)


@pytest.mark.parametrize("device", DEVICES)
def test_hashing_every_word_matches_the_reference(device):
    run_case("swa", RealKvHashMode.ALL, 5, device, forwards=2)


@pytest.mark.parametrize("device", DEVICES)
def test_programs_loop_over_the_blocks_of_long_prefixes_and_runs(device, monkeypatch):
    """With one program per request and small blocks, each program walks many blocks of its request."""
    monkeypatch.setattr(forward_launch, "_TARGET_PROGRAMS", 1)
    monkeypatch.setattr(forward_launch, "_VERIFY_SHAPES", ((1 << 62, 16, 1),))
    monkeypatch.setattr(forward_launch, "_SHORT_RUN_WRITE_BLOCK", 16)
    monkeypatch.setattr(forward_launch, "_LONG_RUN_WRITE_BLOCK", 16)
    run_case("swa", RealKvHashMode.PARTIAL, 6, device, forwards=2)


@pytest.mark.parametrize("device", DEVICES)
def test_self_test_switch_blinds_both_backends_alike(device):
    run_case("mha", RealKvHashMode.PARTIAL, 8, device, forwards=2, self_test_disable_verify=True)
