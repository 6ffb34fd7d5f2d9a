"""GPU spec sheets the cost model runs a training step on (public data-sheet figures)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPUSpec:
    """Public data-sheet figures of one GPU (dense, no sparsity)."""

    key: str
    name: str
    bandwidth_gbs: float  # DRAM bandwidth, GB/s (1e9 bytes/s)
    peak_tflops: dict  # dtype name -> TFLOP/s: "fp32" (CUDA cores), "tf32", "fp16", "bf16" (tensor cores)
    launch_us: float  # kernel launch overhead, microseconds (typical measured figure)
    source: str = ""

    @property
    def bandwidth(self) -> float:
        """Bytes per second."""
        return self.bandwidth_gbs * 1e9

    def peak(self, which: str) -> float:
        """FLOP/s for "fp32" | "tf32" | "fp16" | "bf16"."""
        return self.peak_tflops.get(which, self.peak_tflops["fp32"]) * 1e12

    @property
    def label(self) -> str:
        return f"modeled ({self.name} spec)"

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (FLOP/byte) where fp32 CUDA-core compute and bandwidth meet."""
        return self.peak("fp32") / self.bandwidth


GPUS: dict[str, GPUSpec] = {
    # NVIDIA T4 data sheet (Turing, 2018): 320 GB/s GDDR6; 8.1 TFLOPS FP32; 65 TFLOPS
    # FP16 tensor cores (mixed precision). Turing has no TF32 and no BF16 tensor-core path,
    # so those fall back to the FP32 rate.
    "t4": GPUSpec("t4", "T4", 320.0, {"fp32": 8.1, "tf32": 8.1, "fp16": 65.0, "bf16": 8.1}, 5.0,
                  "NVIDIA T4 Tensor Core GPU data sheet"),
    # NVIDIA A100 data sheet (Ampere), A100 80GB SXM: 2,039 GB/s HBM2e; FP32 19.5 TFLOPS;
    # TF32 tensor 156 TFLOPS; FP16/BF16 tensor 312 TFLOPS (dense; 2x with sparsity).
    "a100": GPUSpec("a100", "A100 80GB SXM", 2039.0, {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0},
                    4.0, "NVIDIA A100 Tensor Core GPU data sheet"),
    # NVIDIA H100 data sheet (Hopper), H100 SXM5: 3.35 TB/s HBM3; FP32 67 TFLOPS; TF32
    # tensor 494.7 TFLOPS, FP16/BF16 tensor 989.4 TFLOPS (dense; the sheet's 989/1,979 are
    # with sparsity).
    "h100": GPUSpec("h100", "H100 SXM", 3350.0, {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4},
                    3.0, "NVIDIA H100 Tensor Core GPU data sheet"),
    # NVIDIA Ada Lovelace architecture white paper, appendix (GeForce RTX 4090): 1,008 GB/s
    # GDDR6X; FP32 82.6 TFLOPS; TF32 tensor 82.6 TFLOPS; FP16/BF16 tensor with FP32
    # accumulate 165.2 TFLOPS (dense).
    "rtx4090": GPUSpec("rtx4090", "RTX 4090", 1008.0, {"fp32": 82.6, "tf32": 82.6, "fp16": 165.2, "bf16": 165.2},
                       4.0, "NVIDIA Ada Lovelace GPU architecture white paper"),
}
_ALIASES = {"4090": "rtx4090", "rtx-4090": "rtx4090", "rtx_4090": "rtx4090", "a100-80gb": "a100",
            "h100-sxm": "h100"}


def get_gpu(gpu: str | GPUSpec) -> GPUSpec:
    """A GPUSpec by key ("h100", "a100", "t4", "rtx4090"; case-insensitive) or itself."""
    if isinstance(gpu, GPUSpec):
        return gpu
    key = str(gpu).lower().strip()
    key = _ALIASES.get(key, key)
    if key not in GPUS:
        raise ValueError(f"unknown GPU {gpu!r}; known: {', '.join(GPUS)}")
    return GPUS[key]
