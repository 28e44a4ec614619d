"""Counting the FLOPs of one real call with ``torch.utils.flop_counter``.

``FlopCounterMode`` records matrix products (mm, addmm, bmm, baddbmm),
convolutions and attention kernels, forward and backward, at 2 FLOPs per
multiply-add; elementwise work is not counted (the usual convention for model
FLOPs and MFU). One addition to torch's table: the CPU attention kernels
(``_scaled_dot_product_flash_attention_for_cpu`` and its backward) are counted
with torch's own SDPA formulas. torch registers only the GPU kernels, so on a
CPU attention would otherwise count as zero. As for every fused attention
kernel, a causal mask is not discounted and the backward counts the
recomputation of the scores (what the kernel executes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten


def _cpu_attention_forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


CPU_ATTENTION_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_forward,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
}


def count_flops(fn: Callable[[], object]) -> int:
    """Matmul / convolution / attention FLOPs of one call of ``fn`` (forward and backward alike)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FORMULAS) as counter:
        fn()
    return int(counter.get_total_flops())
