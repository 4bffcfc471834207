"""``lost_write`` and ``misdirected_write``: the coming forward's K/V write of one token, in one layer,
skipped, or sent into another live slot, as a kernel with a wrong mask or index would.

The write is intercepted on the pool itself (``set_kv_buffer``; dsv4's ``set_k_buffer``) for that
one layer call of that one forward, then the pool's own method is back. The token is the last one
the forward computes for its request with the most tokens left, so its row is read at once (a
token attends to itself) and for long after. ``group: full`` takes a layer whose K/V lives in the
full pool, ``group: swa`` a window layer (dsv4: any layer, its K-only latent).

* ``lost_write``: the token's row keeps whatever its slot held: the previous occupant's bytes, or,
  with ``check_lost_writes``, the mark the canary's HEAD write left, which its TAIL write reports.
  Without the check no record disagrees with those bytes: nothing reports it.
* ``misdirected_write``: the token's K/V lands in a live slot another request (preferably) reads
  and overwrites it there; the token's own row is left as for a lost write. The overwritten slot
  fails its real-KV hash when next read; the lost half is seen only by the lost-write check.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from mock_models.config import ModelMode
from mock_models.engine.engine import Engine
from mock_models.engine.request import Request
from mock_models.faults.targets import FaultContext, NoTarget, SlotRef, live_slots, next_forward_requests
from mock_models.models.spec import LayerKind

_LAYER_KINDS = {"full": (LayerKind.FULL,), "swa": (LayerKind.WINDOW, LayerKind.COMPRESSED_WINDOW)}


def lost_write(context: FaultContext) -> str:
    token = _pick_token(context)
    PoolWriteHook(context.engine, layer_id=token.layer_id, token_index=token.index).install()
    return f"{token.describe()} is skipped: its slot keeps the bytes it held"


def misdirected_write(context: FaultContext) -> str:
    token = _pick_token(context)
    victim = _other_live_slot(context, token.request)
    PoolWriteHook(
        context.engine, layer_id=token.layer_id, token_index=token.index, redirect_to=victim.full_slot
    ).install()
    return f"{token.describe()} lands in {victim.describe()} instead, overwriting it; its own slot keeps its bytes"


def group_layers(engine: Engine, group: str) -> list[int]:
    """The layers whose K/V lives in pool group ``group`` (``full`` or ``swa``)."""
    return [layer for layer, kind in enumerate(engine.model_runner.spec.layer_kinds) if kind in _LAYER_KINDS[group]]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class _Token:
    request: Request
    index: int  # in the forward's out_cache_loc
    position: int
    layer_id: int
    step: int

    def describe(self) -> str:
        return (
            f"forward {self.step}'s layer-{self.layer_id} K/V write of request {self.request.rid[:8]}'s token at "
            f"position {self.position}"
        )


def _pick_token(context: FaultContext) -> _Token:
    engine, batch = context.engine, context.batch
    layers = group_layers(engine, context.target.group or "full")
    if batch is None or not layers:
        raise NoTarget(f"no layer of the {context.target.group} group writes K/V in this model")
    req = next_forward_requests(context)[0]
    start = 0
    for item in batch.items:
        if item.req is req:
            return _Token(
                request=req,
                index=start + item.count - 1,
                position=item.start + item.count - 1,
                layer_id=context.rng.choice(layers),
                step=context.step,
            )
        start += item.count
    raise AssertionError("next_forward_requests returns requests of the coming forward's batch")


def _other_live_slot(context: FaultContext, writer: Request) -> SlotRef:
    """The newest live slot of the target group, of another request of the coming forward if one has any."""
    requests = sorted(next_forward_requests(context), key=lambda req: req is writer)  # stable: others first
    for req in requests:
        slots = live_slots(context.engine, req, dataclasses.replace(context.target, position=None))
        if slots:
            return slots[-1]
    raise NoTarget(f"no request of forward {context.step} reads a slot of the {context.target.group} group yet")


class PoolWriteHook:
    """Replaces one K/V write of the coming forward: the write of token ``token_index`` in layer
    ``layer_id`` is dropped, or sent to full-pool slot ``redirect_to``. Removes itself after that
    layer's write, or at the first write of a later forward (one that never wrote that layer)."""

    def __init__(self, engine: Engine, *, layer_id: int, token_index: int, redirect_to: int | None = None) -> None:
        self.engine = engine
        self.pool: Any = engine.token_to_kv_pool  # the pool's own class: the write method differs per mode
        self.method_name = "set_k_buffer" if engine.config.model_mode is ModelMode.DSV4 else "set_kv_buffer"
        self.layer_id = layer_id
        self.token_index = token_index
        self.redirect_to = redirect_to
        self.forward = engine.forward_count + 1
        self._replaced: Callable[..., None] | None = None
        self._had_own_attribute = False

    def install(self) -> None:
        # Whatever the instance answers now (the class's method, or a wrapper such as the jitter's)
        # is what the hook calls and what it puts back.
        self._had_own_attribute = self.method_name in vars(self.pool)
        self._replaced = getattr(self.pool, self.method_name)
        setattr(self.pool, self.method_name, self._write)

    def _remove(self) -> None:
        if self._had_own_attribute:
            setattr(self.pool, self.method_name, self._replaced)
        else:
            delattr(self.pool, self.method_name)

    def _write(self, layer_id: int, loc: torch.Tensor, *values: torch.Tensor) -> None:
        assert self._replaced is not None, "installed before it is called"
        write = self._replaced
        if self.engine.forward_count + 1 != self.forward:
            self._remove()
            write(layer_id, loc, *values)
            return
        if layer_id != self.layer_id:
            write(layer_id, loc, *values)
            return
        self._remove()
        if self.redirect_to is None:
            keep = torch.ones(loc.shape[0], dtype=torch.bool, device=loc.device)
            keep[self.token_index] = False
            write(layer_id, loc[keep], *(value[keep] for value in values))
        else:
            redirected = loc.clone()
            redirected[self.token_index] = self.redirect_to
            write(layer_id, redirected, *values)
