"""Modeled occupancy: how many warps of a kernel one SM of a target keeps resident.

Modeled from the registers and shared memory ptxas reports and each architecture's per-SM
limits (:data:`SM_LIMITS`, from the CUDA programming guide); no GPU is asked. Not to be
confused with :class:`fusionlab.cost.GPUSpec`, the whole-GPU spec sheet (bandwidth, FLOP/s)
the step model uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SMLimits:
    """Per-SM limits used by the occupancy model (CUDA programming guide, compute capabilities table)."""

    name: str
    regs_per_sm: int = 65536
    max_warps_per_sm: int = 64
    max_blocks_per_sm: int = 32
    smem_per_sm: int = 164 * 1024  # bytes usable for shared memory per SM
    max_smem_per_block: int = 163 * 1024
    reserved_smem_per_block: int = 1024  # the CUDA runtime keeps 1 KiB per block (sm_80+)
    reg_alloc_unit: int = 256  # registers are allocated per warp, in units of 256
    max_regs_per_thread: int = 255


# sm_86 and sm_89 (consumer and workstation parts) share smaller SMs than the datacenter ones
_SMALL_SM = {"max_warps_per_sm": 48, "smem_per_sm": 100 * 1024, "max_smem_per_block": 99 * 1024}

SM_LIMITS: dict[int, SMLimits] = {
    80: SMLimits("A100 class (sm_80)"),
    86: SMLimits("RTX 30 class (sm_86)", max_blocks_per_sm=16, **_SMALL_SM),
    89: SMLimits("L4/L40/RTX 40 class (sm_89)", max_blocks_per_sm=24, **_SMALL_SM),
    90: SMLimits("H100/H200 class (sm_90)", smem_per_sm=228 * 1024, max_smem_per_block=227 * 1024),
}


@dataclass
class Occupancy:
    """Modeled residency of one kernel on one SM (no GPU was asked)."""

    blocks: int
    resident_warps: int
    max_warps: int
    limiter: str  # "registers" | "shared memory" | "warps" | "blocks"
    by_registers: int
    by_shared_memory: int
    by_warps: int

    @property
    def fraction(self) -> float:
        return self.resident_warps / self.max_warps if self.max_warps else 0.0


def model_occupancy(arch: int, registers: int, shared_mem: int, num_warps: int) -> Occupancy | None:
    """Resident warps per SM for a kernel using ``registers`` per thread, ``shared_mem`` bytes
    of shared memory per block and ``num_warps`` warps per block, on ``sm_<arch>``.

    Modeled, like CUDA's occupancy calculator: registers are allocated per warp, rounded
    up to 256; blocks per SM are the minimum of what registers, shared memory (plus the
    1 KiB the runtime reserves per block), the warp limit and the block limit allow.
    None when the architecture is not in :data:`SM_LIMITS`.
    """
    spec = SM_LIMITS.get(arch)
    if spec is None or num_warps <= 0:
        return None
    regs = max(1, registers)
    regs_per_warp = math.ceil(regs * 32 / spec.reg_alloc_unit) * spec.reg_alloc_unit
    by_regs = (
        (spec.regs_per_sm // regs_per_warp) // num_warps if regs <= spec.max_regs_per_thread else 0
    )
    if shared_mem > spec.max_smem_per_block:
        by_smem = 0
    else:
        by_smem = spec.smem_per_sm // (shared_mem + spec.reserved_smem_per_block)
    by_warps = spec.max_warps_per_sm // num_warps
    limits = {  # on a tie, name the SM's own limit rather than the kernel's use
        "warps": by_warps,
        "blocks": spec.max_blocks_per_sm,
        "registers": by_regs,
        "shared memory": by_smem,
    }
    limiter = min(limits, key=lambda k: limits[k])
    blocks = limits[limiter]
    return Occupancy(
        blocks, blocks * num_warps, spec.max_warps_per_sm, limiter, by_regs, by_smem, by_warps
    )
