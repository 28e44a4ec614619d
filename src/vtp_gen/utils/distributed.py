"""Small torch.distributed helpers that are no-ops in a single process.

Every collective the losses need (CLIP feature gathering, the DINO centre,
Sinkhorn-Knopp sums) goes through here, so the same code runs on one CPU, two
gloo ranks in the tests and many NCCL ranks in training.

:func:`run_on_gloo_ranks` starts ``world_size`` CPU processes joined in a gloo
process group; the tests use it to check each collective against the
single-process computation on the concatenated batch.
"""

from __future__ import annotations

import os
import queue
import tempfile
import traceback
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a new tensor; no gradient flows through the collective)."""
    if not is_distributed():
        return tensor
    tensor = tensor.detach().clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (a new tensor; no gradient flows through the collective)."""
    if not is_distributed():
        return tensor
    return all_reduce_sum(tensor) / get_world_size()


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over ranks (a new tensor, no gradient)."""
    if not is_distributed():
        return tensor
    tensor = tensor.detach().clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0; gradients flow back to every rank's input.

    The backward of ``torch.distributed.nn.all_gather`` sums, on each rank, the
    gradients all ranks computed for its slice. Shapes must match across ranks.
    """
    if not is_distributed():
        return tensor
    import torch.distributed.nn  # registers the autograd-aware collectives

    return torch.cat(torch.distributed.nn.all_gather(tensor), dim=0)


def all_gather_keep_local_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0; only this rank's slice carries gradient.

    The other ranks' slices are constants here (each rank back-propagates into
    its own slice), which is cheaper than :func:`all_gather_with_grad` and is
    OpenCLIP's default. Shapes must match across ranks.
    """
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(parts, tensor.detach().contiguous())
    parts[get_rank()] = tensor
    return torch.cat(parts, dim=0)


# ---------------------------------------------------------------------------
# Running a function on several CPU ranks (tests, small checks).


def _gloo_worker(
    rank: int,
    world_size: int,
    store_path: str,
    fn: Callable[..., dict[str, torch.Tensor]],
    args: tuple,
    results: mp.Queue,
) -> None:
    # One thread per rank: the ranks share the machine's cores.
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world_size)
        try:
            out = fn(rank, world_size, *args)
            # Tensors travel as safetensors bytes: nothing is unpickled on the way back.
            payload = save_safetensors_bytes(
                {k: v.detach().contiguous().cpu() for k, v in (out or {}).items()}
            )
            results.put((rank, payload, None))
        finally:
            dist.destroy_process_group()
    except Exception:  # reported to the parent, which raises
        results.put((rank, None, traceback.format_exc()))


def run_on_gloo_ranks(
    fn: Callable[..., dict[str, torch.Tensor]],
    world_size: int = 2,
    args: tuple = (),
    timeout_s: float = 120.0,
) -> list[dict[str, torch.Tensor]]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` spawned CPU processes in a gloo group.

    ``fn`` must be importable (a module-level function) and return a dict of
    tensors; the dicts come back ordered by rank. A failure on any rank raises
    ``RuntimeError`` with that rank's traceback.
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        store_path = os.path.join(tmp, "gloo_store")
        procs = [
            ctx.Process(
                target=_gloo_worker, args=(rank, world_size, store_path, fn, args, results), daemon=True
            )
            for rank in range(world_size)
        ]
        for p in procs:
            p.start()
        outputs: dict[int, dict[str, torch.Tensor]] = {}
        errors: list[str] = []
        for _ in range(world_size):
            try:
                rank, payload, error = results.get(timeout=timeout_s)
            except queue.Empty:
                codes = [p.exitcode for p in procs]
                errors.append(f"no result within {timeout_s} s (exit codes {codes})")
                break
            if error is not None:
                errors.append(f"rank {rank}:\n{error}")
                break  # the other ranks may be stuck in a collective: stop them below
            outputs[rank] = load_safetensors_bytes(payload)
        for p in procs:
            p.join(timeout=timeout_s if not errors else 5.0)
            if p.is_alive():
                p.terminate()
                p.join()
        if errors:
            raise RuntimeError("a gloo rank failed:\n" + "\n".join(errors))
    return [outputs[r] for r in range(world_size)]
