"""timm's ViT blocks replaying a step's own transformer calls: a baseline with the step's shapes.

The issue's baseline for the stage-1 step is timm's ViT of the trunk's size on
one batch (``timm_vit_fwd_bwd``). The step does not run one batch: it runs the
trunk on the CLIP images, the SSL global and local crops and the
reconstruction images, the EMA teacher without gradients, the decoder and the
text tower, each on its own sequence length. At width 64 a matmul's speed
depends on its size, so part of the FLOP-rate gap to the one-batch baseline is
the shapes the recipe asks for, not how the blocks are written.

:class:`SameCallsReplay` separates the two. One step is run with a hook on
every transformer block, recording each block call's tower, width, heads,
batch, sequence length and whether autograd was on. The replay then runs
timm ``Block``s (LayerNorm, GELU MLP with ratio 4, fused SDPA: the same
parameter count as our SwiGLU blocks) on random tokens of exactly those
shapes, chaining each recorded forward through as many blocks as the step did,
and backpropagates the forwards that had gradients. Heads, losses and the
optimiser are not replayed: the ratio "step vs replay" tells how fast our whole
step turns FLOPs into progress compared with timm's blocks doing the
transformer part of the same work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class BlockCall:
    tower: str  # the ModuleList's name in the system, e.g. "model.trunk.blocks"
    index: int  # the block's position in it
    width: int
    heads: int
    batch: int
    tokens: int
    grad: bool


@dataclass(frozen=True)
class TowerForward:
    """Consecutive calls of one tower's blocks 0..depth-1: one forward through that tower."""

    tower: str
    width: int
    heads: int
    batch: int
    tokens: int
    depth: int
    grad: bool


def block_lists(system: nn.Module, block_types: tuple[type, ...]) -> dict[str, nn.ModuleList]:
    """Every ModuleList in ``system`` made of transformer blocks, by its qualified name."""
    return {
        name: module
        for name, module in system.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module)
        and all(isinstance(m, block_types) for m in module)
    }


def record_block_calls(step, towers: dict[str, nn.ModuleList]) -> list[BlockCall]:
    """Run ``step()`` once and return every block call it made, in order."""
    calls: list[BlockCall] = []

    def recorder(tower: str, index: int):
        def hook(module, args, kwargs):
            x = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
            if x.dim() != 3:
                raise ValueError(f"{tower}[{index}] got a {x.dim()}-d input; expected (batch, tokens, width)")
            heads = module.attn.num_heads
            calls.append(
                BlockCall(tower, index, x.shape[2], heads, x.shape[0], x.shape[1], torch.is_grad_enabled())
            )

        return hook

    handles = [
        block.register_forward_pre_hook(recorder(tower, index), with_kwargs=True)
        for tower, blocks in towers.items()
        for index, block in enumerate(blocks)
    ]
    try:
        step()
    finally:
        for handle in handles:
            handle.remove()
    return calls


def group_forwards(calls: list[BlockCall]) -> list[TowerForward]:
    """Split the call list into tower forwards: a forward starts at block 0 of a tower."""
    forwards: list[TowerForward] = []
    for call in calls:
        previous = forwards[-1] if forwards else None
        continues = (
            previous is not None
            and call.index == previous.depth
            and (call.tower, call.batch, call.tokens, call.grad)
            == (previous.tower, previous.batch, previous.tokens, previous.grad)
        )
        if continues:
            forwards[-1] = TowerForward(**{**previous.__dict__, "depth": previous.depth + 1})
        elif call.index == 0:
            forwards.append(
                TowerForward(call.tower, call.width, call.heads, call.batch, call.tokens, 1, call.grad)
            )
        else:
            raise ValueError(f"block call {call} does not continue a forward from block 0")
    return forwards


def record_forwards(step) -> list[TowerForward]:
    """One call of a stage-1 step (anything with ``.system``), recorded as tower forwards."""
    from vtp_gen.pipeline.stage1.run import tokenizer_block_types

    return group_forwards(record_block_calls(step, block_lists(step.system, tokenizer_block_types())))


def _module_key(tower: str) -> str:
    """A tower name as a ModuleDict key (which may not contain dots)."""
    return tower.replace(".", "/")


class SameCallsReplay:
    """timm blocks on the recorded forwards' shapes; forward + one backward over those that had grad."""

    def __init__(self, forwards: list[TowerForward], device: torch.device, settings) -> None:
        from timm.models.vision_transformer import Block

        if not forwards:
            raise ValueError("no transformer block calls were recorded")
        self.forwards = forwards
        self.settings = settings
        depth_of: dict[str, int] = {}
        for f in forwards:
            depth_of[f.tower] = max(depth_of.get(f.tower, 0), f.depth)
        shape_of = {f.tower: (f.width, f.heads) for f in forwards}
        self.towers = nn.ModuleDict(
            {
                _module_key(tower): nn.ModuleList(
                    Block(shape_of[tower][0], shape_of[tower][1], mlp_ratio=4.0) for _ in range(depth)
                )
                for tower, depth in depth_of.items()
            }
        ).to(device)
        generator = torch.Generator().manual_seed(0)
        self.inputs = [
            torch.randn(f.batch, f.tokens, f.width, generator=generator).to(device) for f in forwards
        ]

    def __call__(self) -> None:
        self.towers.zero_grad(set_to_none=True)
        losses = []
        with self.settings.autocast():
            for forward, tokens in zip(self.forwards, self.inputs):
                with torch.set_grad_enabled(forward.grad):
                    for block in self.towers[_module_key(forward.tower)][: forward.depth]:
                        tokens = block(tokens)
                if forward.grad:
                    losses.append(tokens.float().mean())
        if losses:
            torch.stack(losses).sum().backward()

    def compile(self) -> int:
        from timm.models.vision_transformer import Block

        from vtp_gen.utils.compile import compile_blocks

        return compile_blocks(self.towers, (Block,))

    def describe(self) -> str:
        """e.g. ``trunk 48x65 (3), ...``: each forward as batch x tokens (depth), ``*`` without grad."""
        parts = []
        for f in self.forwards:
            short = f.tower.removeprefix("model.").removesuffix(".blocks").removesuffix(".resblocks")
            parts.append(f"{short} {f.batch}x{f.tokens}{'' if f.grad else '*'}")
        return ", ".join(parts)
