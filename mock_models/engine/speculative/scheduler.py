"""The speculative scheduler: decode batches become TARGET_VERIFY batches, and acceptance commits.

A batch that would decode verifies instead: every running request writes a window of the same
size (SGLang's ``draft_token_num`` is one per batch), its last sampled token and then the drafts,
at positions ``[kv_len, kv_len + window)``. The window never reaches past the request's last
position (``DraftWorker.window_size``), so it stays inside what admission reserved. After the
forward the accepted tokens are committed (the drafts that matched and the target's next token)
and the rest of the window is rolled back (``SpeculativeKVCacheManager.rollback``).
"""

from __future__ import annotations

import dataclasses

from kv_canary_contract.token_oracle import TokenOracle
from mock_models.config import EngineConfig
from mock_models.engine.forward_batch import ForwardMode, VerifyInput
from mock_models.engine.kv_cache_manager import KVCacheManager
from mock_models.engine.request import Request
from mock_models.engine.scheduler import ScheduledBatch, Scheduler
from mock_models.engine.speculative.draft_worker import DraftWindow, DraftWorker
from mock_models.engine.speculative.kv_cache import SpeculativeKVCacheManager


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class VerifyBatch(ScheduledBatch):
    windows: tuple[DraftWindow, ...] = ()

    def sampled_outputs(self) -> list[tuple[int, int, int]]:
        """Every accepted row: each one's hidden state predicts a token the request keeps."""
        sampled, start = [], 0
        for window in self.windows:
            req = window.req
            first_output = len(req.output_ids) - req.digest_base
            sampled += [(start + row, req.req_pool_idx, first_output + row) for row in range(window.accepted)]
            start += len(window.tokens)
        return sampled


class SpeculativeScheduler(Scheduler):
    def __init__(self, *, config: EngineConfig, kv_cache: KVCacheManager, oracle: TokenOracle) -> None:
        super().__init__(config=config, kv_cache=kv_cache, oracle=oracle)
        if not isinstance(kv_cache, SpeculativeKVCacheManager):
            raise TypeError("SpeculativeScheduler rolls windows back through a SpeculativeKVCacheManager")
        self.speculative_kv_cache = kv_cache
        self.draft_worker = DraftWorker(oracle=oracle, num_steps=config.speculative_num_steps, bugs=kv_cache.bugs)

    def schedule(self) -> ScheduledBatch | None:
        batch = super().schedule()
        if batch is None or batch.forward_mode is not ForwardMode.DECODE:
            return batch
        reqs = [item.req for item in batch.items]
        size = self.draft_worker.window_size(reqs)
        windows = tuple(self.draft_worker.draft(req, size) for req in reqs)
        return VerifyBatch(
            forward_mode=ForwardMode.TARGET_VERIFY,
            items=tuple(dataclasses.replace(item, count=size) for item in batch.items),
            admitted=batch.admitted,
            retracted=batch.retracted,
            spec_info=VerifyInput(
                draft_token=[token for window in windows for token in window.tokens],
                positions=[position for window in windows for position in window.positions],
                draft_token_num=size,
            ),
            windows=windows,
        )

    def process_forward(
        self, batch: ScheduledBatch, *, step: int, next_batch: ScheduledBatch | None = None
    ) -> list[Request]:
        if not isinstance(batch, VerifyBatch):
            return super().process_forward(batch, step=step, next_batch=next_batch)
        finished: list[Request] = []
        rows, positions, tokens = [], [], []
        for window in batch.windows:
            req = window.req
            window_end = req.kv_len + len(window.tokens)
            # The matching drafts and the target's token after them: one token per accepted row.
            kept = window.tokens[1 : window.accepted] + [self.oracle.sample(window.accepted_state)]
            for token in kept:
                rows.append(req.req_pool_idx)
                positions.append(len(req.fill_ids))
                tokens.append(token)
                req.oracle_state = req.oracle_state.advance(token)
                req.output_ids.append(token)
                req.fill_ids.append(token)
                req.output_steps.append(step)
            req.kv_len += window.accepted
            self.speculative_kv_cache.rollback(req, allocated_end=window_end)
            if req.is_finished:
                finished.append(req)
        self._record_sampled(rows, positions, tokens)
        self.kv_cache.release_out_of_window([window.req for window in batch.windows if not window.req.is_finished])
        return self._retire_finished(finished, next_batch=next_batch)
