"""Stage-2 training step side by side with hustvl/LightningDiT's own code, in one process.

    python bench/stage2_vs_reference.py --reference /path/to/LightningDiT          # a checkout of it
    python bench/stage2_vs_reference.py --reference ... --rounds 12 --compile      # also our compiled step

The reference is not part of vtp_gen and is never downloaded: point
``--reference`` at a checkout (its ``models/`` and ``transport/`` are imported
from there). Both sides train the same LightningDiT on the same batch:
depth 12, width 384, 6 heads, patch 1, SwiGLU + RMSNorm + RoPE, 8x8x16
latents, batch 64, fp32, velocity MSE + cosine loss with logit-normal times.

- reference, as shipped: its model (``torch.compile`` on every block, on
  ``modulate`` and on the embedders, as the file has it), its
  ``Transport.training_losses``, ``torch.optim.AdamW`` as its train.py builds it
  (torch's default foreach implementation) and its per-parameter EMA loop;
- ours: ``LatentFlowMatching``'s step as stage 2 runs it (``Transport``,
  AdamW with ``optim.fused``'s default, ``EMA.update``); ``--compile`` adds the
  same step with ``trainer.compile=true``.

The script also profiles one step of each side and reports its matrix-multiply
share (``aten::mm`` / ``addmm`` / ``bmm`` self time). Both sides run the same
GEMMs (same shapes, same FLOPs), so ``1 / share`` of the reference is the
ceiling of any ratio on this machine: a step whose non-GEMM work cost nothing
would reach it and no more.

Workloads are timed in interleaved rounds (``vtp_bench.timing``), so a load
spike of the shared machine hits both sides of a ratio; the script prints
the median ratio, its range over rounds and the load average, and appends
them as CSV rows in ``bench/run.py``'s columns (``--csv``): benchmark
``stage2_reference/<side>``, metric ``time`` (ms per step; ``ratio`` = speed
against the reference as shipped, median over rounds), ``ratio_min`` /
``ratio_max`` (its range), ``gemm_share`` (%), and
``stage2_reference/gemm_ceiling``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import types
from collections import OrderedDict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vtp_bench.results import append_csv, row, run_context  # noqa: E402
from vtp_bench.timing import interleaved_times, median, paired_ratio, spread  # noqa: E402

from vtp_gen.models.generators.presets import LIGHTNINGDIT_RECIPE  # noqa: E402

# The configuration the comparison is defined on (LightningDiT's constructor arguments): the
# LightningDiT recipe's blocks (SwiGLU, RMSNorm, RoPE) at depth 12, width 384, on 8x8x16 latents.
ARCH = {
    **LIGHTNINGDIT_RECIPE,
    **dict(input_size=8, patch_size=1, in_channels=16, hidden_size=384, depth=12, num_heads=6),
    "num_classes": 1000,
}
BATCH = 64
CONFIG = "d12-w384-B64"  # the CSV rows' config: depth, width, batch
LR, BETAS = 2e-4, (0.9, 0.95)


def import_reference(checkout: Path, compile_as_shipped: bool = True):
    """The reference's model class and transport factory, imported from a checkout.

    Its ``models/rmsnorm.py`` imports fairscale for model-parallel layers that
    LightningDiT never uses; empty stand-in modules satisfy that import when
    fairscale is not installed. ``compile_as_shipped=False`` imports the model
    with its ``@torch.compile`` decorators turned into no-ops.
    """
    if not (checkout / "models" / "lightningdit.py").is_file():
        raise SystemExit(f"{checkout} is not a LightningDiT checkout (models/lightningdit.py is missing)")
    try:
        import fairscale  # noqa: F401
    except ImportError:
        layers = types.ModuleType("fairscale.nn.model_parallel.layers")
        layers.ColumnParallelLinear = layers.ParallelEmbedding = layers.RowParallelLinear = None
        for name in ("fairscale", "fairscale.nn", "fairscale.nn.model_parallel"):
            sys.modules[name] = types.ModuleType(name)
        sys.modules["fairscale.nn.model_parallel.initialize"] = types.ModuleType("initialize")
        sys.modules["fairscale.nn.model_parallel.layers"] = layers
    real_compile = torch.compile
    if not compile_as_shipped:
        torch.compile = lambda fn=None, **kwargs: fn if fn is not None else (lambda f: f)
    sys.path.insert(0, str(checkout))
    try:
        from models.lightningdit import LightningDiT
        from transport import create_transport
    finally:
        torch.compile = real_compile
        sys.path.remove(str(checkout))
    return LightningDiT, create_transport


def batch():
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(
        BATCH, ARCH["in_channels"], ARCH["input_size"], ARCH["input_size"], generator=generator
    )
    labels = torch.randint(0, ARCH["num_classes"], (BATCH,), generator=generator)
    return latents, labels


class ReferenceStep:
    """One iteration of LightningDiT's train.py loop: loss, backward, AdamW, EMA."""

    def __init__(self, model_class, create_transport):
        self.model = model_class(**ARCH)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=0, betas=BETAS)
        self.transport = create_transport(
            "Linear", "velocity", None, None, None, use_cosine_loss=True, use_lognorm=True
        )
        self.latents, self.labels = batch()

    @torch.no_grad()
    def update_ema(self, decay: float = 0.9999) -> None:
        ema_params = OrderedDict(self.ema.named_parameters())
        for name, param in self.model.named_parameters():
            ema_params[name].mul_(decay).add_(param.data, alpha=1 - decay)

    def __call__(self) -> None:
        terms = self.transport.training_losses(self.model, self.latents, dict(y=self.labels))
        loss = terms["cos_loss"].mean() + terms["loss"].mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.update_ema()


class OurStep:
    """``LatentFlowMatching``'s step with the stage-2 recipe defaults (fused AdamW, EMA)."""

    def __init__(self, compiled: bool = False):
        from vtp_gen.models.generators import LightningDiT
        from vtp_gen.pipeline.stage2.config import OptimConfig
        from vtp_gen.systems.flow_matching import AdamWSettings, LatentFlowMatching
        from vtp_gen.transport import Transport

        model = LightningDiT(**ARCH)
        transport = Transport(time_distribution="logit_normal", cosine_weight=1.0)
        settings = AdamWSettings(lr=LR, betas=BETAS, fused=OptimConfig().fused)
        self.system = LatentFlowMatching(model, transport, settings)
        self.model = self.system.model
        if compiled:
            self.model.compile()  # what trainer.compile=true does
        self.optimizer = self.system.configure_optimizers()
        self.latents, self.labels = batch()

    def __call__(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        terms = self.system.transport.training_losses(self.model, self.latents, y=self.labels)
        terms["loss"].mean().backward()
        self.optimizer.step()
        self.system.ema.update(self.model)


GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm")


def gemm_share(step) -> dict:
    """Self CPU time of one profiled step, and the part of it spent in matrix multiplies."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    gemm = sum(e.self_cpu_time_total for e in events if e.key in GEMM_OPS)
    return {"step_ms": total / 1e3, "gemm_ms": gemm / 1e3, "gemm_share": gemm / total}


def result_rows(result: dict) -> list[dict]:
    """CSV rows of one comparison (``main``'s result)."""
    context = {k: result[k] for k in ("date", "machine", "torch", "threads", "commit")}
    context["load"] = f"{result['load_average']['before'][0]:.3g}"
    rows = []
    for name, times in result["samples_s"].items():
        benchmark = f"stage2_reference/{name}"
        speed = result["speed_vs_reference"].get(name)
        compared = {"baseline": "stage2_reference/reference", "ratio": speed["median"]} if speed else {}
        rows.append(
            row(
                context,
                benchmark,
                CONFIG,
                "time",
                1e3 * median(times),
                "ms",
                spread=spread(times),
                **compared,
            )
        )
        if speed:
            rows.append(row(context, benchmark, CONFIG, "ratio_min", speed["min"], "x"))
            rows.append(row(context, benchmark, CONFIG, "ratio_max", speed["max"], "x"))
        if name in result.get("profile", {}):
            rows.append(
                row(
                    context, benchmark, CONFIG, "gemm_share", 100 * result["profile"][name]["gemm_share"], "%"
                )
            )
    if result.get("gemm_ceiling"):
        rows.append(
            row(context, "stage2_reference/gemm_ceiling", CONFIG, "ratio", result["gemm_ceiling"], "x")
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reference", type=Path, required=True, help="a hustvl/LightningDiT checkout")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--compile", action="store_true", help="also time our step with trainer.compile=true")
    parser.add_argument(
        "--reference-eager",
        action="store_true",
        help="also time the reference with its compiles switched off",
    )
    parser.add_argument(
        "--csv", type=Path, default=Path("runs/bench/results.csv"), help="append the rows here"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    runners = {"reference": ReferenceStep(*import_reference(args.reference))}
    if args.reference_eager:
        runners["reference_eager"] = ReferenceStep(
            *import_reference(args.reference, compile_as_shipped=False)
        )
    runners["ours"] = OurStep()
    if args.compile:
        runners["ours_compiled"] = OurStep(compiled=True)
    params = sum(p.numel() for p in runners["ours"].model.parameters())

    context = run_context("cpu")
    load_before = os.getloadavg()
    # Two warm-up calls: the first compiles (reference, ours_compiled), the second settles the allocator.
    samples = interleaved_times(runners, args.rounds, "cpu", warmup=2)
    load_after = os.getloadavg()
    profiles = {name: gemm_share(step) for name, step in runners.items()}
    ceiling = 1 / profiles["reference"]["gemm_share"]
    result = {
        **context,
        "load_average": {"before": load_before, "after": load_after},
        "samples_s": samples,
        "speed_vs_reference": {},
        "profile": profiles,
        "gemm_ceiling": ceiling,
    }
    print(f"stage-2 step, {params / 1e6:.1f}M parameters, B={BATCH}, {args.threads} threads")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    for name, times in samples.items():
        line = f"  {name:16s} {1e3 * median(times):8.1f} ms/step"
        if name != "reference":
            ratios = [r / t for r, t in zip(samples["reference"], times)]
            speed = paired_ratio(samples["reference"], times)
            result["speed_vs_reference"][name] = {"median": speed, "min": min(ratios), "max": max(ratios)}
            line += f"   {speed:.2f}x the reference's speed (rounds: {min(ratios):.2f}-{max(ratios):.2f}x)"
        print(line)
    for name, prof in profiles.items():
        print(f"  {name:16s} matrix multiplies {100 * prof['gemm_share']:.0f} % of a profiled step")
    print(
        f"ceiling: the reference spends {100 / ceiling:.0f} % of its step in the GEMMs both sides share, "
        f"so no step of the same FLOPs exceeds {ceiling:.2f}x its speed on this machine"
    )
    rows = result_rows(result)
    append_csv(args.csv, rows)
    print(f"appended {len(rows)} rows to {args.csv}")
    return result


if __name__ == "__main__":
    main()
