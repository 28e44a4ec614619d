"""Peak memory of one call.

GPU: the CUDA caching allocator's own high-water mark
(``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``): every
live tensor, parameters and optimiser state included.

CPU: torch keeps no statistics for host memory, and the process RSS does not
shrink when tensors are freed, so the peak of one call cannot be read from the
OS. :class:`LiveTensorBytes` counts it instead: it starts from the storages of
the tracked modules and optimisers (parameters, gradients, buffers, optimiser
state), adds every storage an operator creates during the call, and subtracts
each one when Python's weak reference to it reports it freed. Storages shared
by views are counted once. Inputs prepared before the call are not counted;
allocator slack and fragmentation are not either (the GPU number includes the
latter). The tracking makes the call slower, so it runs on a separate,
untimed call.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from vtp_bench.timing import synchronize


class LiveTensorBytes(TorchDispatchMode):
    """Dispatch mode keeping ``live`` and ``peak`` bytes of the tensor storages it knows about."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._known: dict[int, int] = {}  # storage data_ptr -> bytes

    def track(self, tensor: torch.Tensor) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu" or tensor.is_sparse:
            return
        storage = tensor.untyped_storage()
        pointer, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or pointer in self._known:
            return
        self._known[pointer] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._release, pointer)

    def _release(self, pointer: int) -> None:
        self.live -= self._known.pop(pointer, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            self.track(leaf)
        return out


def existing_tensors(tracked: Sequence[torch.nn.Module | torch.optim.Optimizer]) -> Iterable[torch.Tensor]:
    for item in tracked:
        if isinstance(item, torch.nn.Module):
            for parameter in item.parameters():
                yield parameter
                if parameter.grad is not None:
                    yield parameter.grad
            yield from item.buffers()
        elif isinstance(item, torch.optim.Optimizer):
            for state in item.state.values():
                yield from (v for v in state.values() if isinstance(v, torch.Tensor))


def peak_memory_bytes(
    fn: Callable[[], object],
    device: torch.device | str,
    tracked: Sequence[torch.nn.Module | torch.optim.Optimizer] = (),
) -> int | None:
    """Peak bytes in use during one call of ``fn``: the tracked state plus everything the call allocates."""
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    if device.type != "cpu":
        return None
    counter = LiveTensorBytes()
    for tensor in existing_tensors(tracked):
        counter.track(tensor)
    with counter:
        fn()
    return int(counter.peak)
