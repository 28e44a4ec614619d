"""Attention forward + backward at the shapes the recipes run: our dispatch beside torch's SDPA.

``vtp_gen.models.attention.dot_product_attention`` computes short fp32 CPU
sequences with two matmuls instead of SDPA's fused kernel; this group measures
that choice at the step shapes of the stage-1 recipes (trunk, SSL local crops,
causal text tower, pixel decoder) and past the cut-over, where both sides
must be the same kernel (on the GPU every shape is).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vtp_bench.suite import Group, Settings, Workload

# (name, batch, heads, tokens, head_dim, causal): where each shape occurs.
SHAPES = {
    "cpu": (
        ("tiny_trunk", 72, 4, 65, 16, False),  # vtp-tiny: CLIP + SSL global crops in one forward
        ("tiny_local_crops", 24, 4, 17, 16, False),  # vtp-tiny: SSL local crops
        ("tiny_text", 48, 4, 32, 16, True),  # vtp-tiny text tower
        ("small_b_trunk", 48, 12, 65, 64, False),  # VTP-B width at 128 px
        ("long_257", 16, 12, 257, 64, False),  # 256 px / patch 16: above the cut-over
    ),
    "quick": (("tiny_trunk", 4, 4, 65, 16, False), ("long_257", 1, 2, 257, 16, False)),
}


class AttentionStep:
    """Forward + backward of one attention call on fixed q, k, v."""

    def __init__(self, attend, shape: tuple[int, ...], causal: bool, device: torch.device) -> None:
        generator = torch.Generator().manual_seed(0)
        self.q, self.k, self.v = (
            torch.randn(shape, generator=generator).to(device).requires_grad_() for _ in range(3)
        )
        self.upstream = torch.randn(shape, generator=generator).to(device)
        self.attend, self.causal = attend, causal

    def __call__(self) -> None:
        out = self.attend(self.q, self.k, self.v, is_causal=self.causal)
        torch.autograd.grad(out, (self.q, self.k, self.v), self.upstream)


def attention_group(setting: str) -> Group:
    def build(settings: Settings) -> list[Workload]:
        from vtp_gen.models.attention import dot_product_attention, prefers_explicit_attention

        workloads = []
        for name, batch, heads, tokens, head_dim, causal in SHAPES[setting]:
            shape = (batch, heads, tokens, head_dim)
            ours = AttentionStep(dot_product_attention, shape, causal, settings.device)
            sdpa = AttentionStep(F.scaled_dot_product_attention, shape, causal, settings.device)
            path = "two matmuls" if prefers_explicit_attention(ours.q, ours.k) else "SDPA (same kernel)"
            base = f"attention/{setting}/{name}_sdpa"
            workloads += [
                Workload(
                    name=f"attention/{setting}/{name}",
                    step=ours,
                    items=batch,
                    unit="seq",
                    baseline=base,
                    notes=f"{'x'.join(map(str, shape))}{' causal' if causal else ''}: {path}",
                ),
                Workload(
                    name=base, step=sdpa, items=batch, unit="seq", notes="F.scaled_dot_product_attention"
                ),
            ]
        return workloads

    return Group(
        name=f"attention/{setting}",
        description="dot_product_attention vs F.scaled_dot_product_attention, fwd+bwd, at the recipes' shapes",
        build=build,
    )
