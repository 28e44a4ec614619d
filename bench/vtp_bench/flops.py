"""FLOP counts of a call and the matmul peak they are compared with.

FLOPs are counted by :func:`vtp_gen.utils.flops.count_flops` (``FlopCounterMode``) on one real
call: matrix products (mm, addmm, bmm, baddbmm), convolutions and attention,
forward and backward, at 2 FLOPs per multiply-add. Elementwise work (norms,
activations, the optimiser update) is not counted, which is the usual
convention for model FLOPs and MFU. Two additions to torch's table:

- the CPU attention kernels (``_scaled_dot_product_flash_attention_for_cpu``
  and its backward) are counted with torch's own SDPA formulas; torch does not
  register them, so attention on the CPU would otherwise count as zero;
- as for every fused attention kernel, a causal mask is not discounted and the
  backward counts the recomputation of the scores (what the kernel executes).

The peak is measured, not taken from a data sheet: a large matmul in the
precision the workloads compute in (fp32 on the CPU, bf16 on the GPU), timed in
the same rounds as the workloads (see :mod:`vtp_bench.timing`).
"""

from __future__ import annotations

import torch

from vtp_gen.utils.flops import count_flops  # noqa: F401  (the suite imports it from here)


def peak_dtype(device: torch.device | str) -> torch.dtype:
    """The precision training runs in: bf16 autocast on GPUs, fp32 on CPUs (no bf16 units here)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def default_peak_size(device: torch.device | str) -> int:
    # Big enough to reach the plateau of the BLAS; small enough to take ~0.1 s on 2 CPU cores.
    return 8192 if torch.device(device).type == "cuda" else 2048


class MatmulPeak:
    """``probe()`` runs ``repeats`` square matmuls; ``flops_per_call`` is what they cost.

    Used as one more runner in a group's interleaved rounds, its FLOP rate per
    round is the peak the workloads of that round are divided by.
    """

    def __init__(
        self,
        device: torch.device | str,
        size: int | None = None,
        dtype: torch.dtype | None = None,
        repeats: int = 4,
    ) -> None:
        self.device = torch.device(device)
        self.size = size or default_peak_size(self.device)
        self.dtype = dtype or peak_dtype(self.device)
        self.repeats = repeats
        generator = torch.Generator(device="cpu").manual_seed(0)
        shape = (self.size, self.size)
        self.a = torch.randn(shape, generator=generator).to(self.device, self.dtype)
        self.b = torch.randn(shape, generator=generator).to(self.device, self.dtype)
        self.out = torch.empty(shape, device=self.device, dtype=self.dtype)
        self.flops_per_call = 2 * self.size**3 * repeats

    def __call__(self) -> None:
        for _ in range(self.repeats):
            torch.mm(self.a, self.b, out=self.out)

    def describe(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{self.repeats} x {dtype} matmul {self.size}^3 on {self.device.type}"
