"""Regional ``torch.compile``: compile the repeated transformer blocks, keep the rest eager.

Stage 1's step runs each trunk on several input sizes (CLIP centre crops, SSL
global and local crops), drops paths on per-step subsets and calls heads and
losses on token counts that depend on the masks; compiling the whole step
would recompile for every new combination. Blocks see only (batch, tokens,
width) inputs, so compiling each block (``nn.Module.compile``, in place:
parameter names and state dicts do not change) covers most of the FLOPs with
a handful of graphs that all blocks of a tower share; everything between
them stays eager.
"""

from __future__ import annotations

from torch import nn


def compile_blocks(module: nn.Module, block_types: tuple[type, ...], **compile_kwargs) -> int:
    """``torch.compile`` every submodule of ``block_types`` in place; returns how many.

    Compilation itself happens lazily, at each block's first call.
    """
    count = 0
    for submodule in module.modules():
        if isinstance(submodule, block_types):
            submodule.compile(**compile_kwargs)
            count += 1
    return count
