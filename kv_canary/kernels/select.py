"""Pick the Triton kernels or their torch references for a device."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from kv_canary.config import KernelBackend


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class CanaryKernels:
    name: str
    build_plans: Callable[..., tuple[int | None, int, int | None]]
    verify: Callable[..., None]
    write: Callable[..., None]


def select_kernels(backend: KernelBackend, device: torch.device) -> CanaryKernels:
    if backend is KernelBackend.TORCH or (backend is KernelBackend.AUTO and device.type != "cuda"):
        from kv_canary.kernels import plan_reference, verify_reference, write_reference

        return CanaryKernels(
            name="torch",
            build_plans=plan_reference.build_group_plans,
            verify=verify_reference.verify_canaries,
            write=write_reference.write_canaries,
        )
    # Imported here so that CPU-only installs never need Triton.
    from kv_canary.kernels import plan_triton, verify_triton, write_triton

    return CanaryKernels(
        name="triton",
        build_plans=plan_triton.build_group_plans,
        verify=verify_triton.verify_canaries,
        write=write_triton.write_canaries,
    )
