"""Schema of ``vtp-gen scaling`` / ``make scaling``.

A study is a grid of points (bottleneck width x objective preset x stage-1
steps). Every point is an ordinary run under
``runs/<run.name>/<preset>[-w<width>]-<steps>/`` made by the usual steps
(stage1, cache, stage2, eval), each configured exactly as its own command would
be: recipe files layered left to right, an optional data recipe, then
``key=value`` overrides. Only the preset recipe, the bottleneck width, the
stage-1 step count and the run folder change from point to point; everything
else (the stage-2 recipe, the evaluation protocol, the seeds) is shared, which
is what makes the points comparable. With ``stage2_seeds``, each point trains
and evaluates its generator once per seed on the same tokenizer and cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vtp_gen.config import RunConfig


@dataclass
class StepRecipe:
    # Recipe files, layered left to right (the step's `--config`); relative paths are looked up
    # from the working directory, then from the repository root.
    recipes: list[str] = field(default_factory=list)
    # A configs/data/*.yaml merged into the step's data section (the step's `--data`); "" = none.
    data: str = ""
    # key=value overrides applied at every point, after the recipes.
    overrides: list[str] = field(default_factory=list)


@dataclass
class Stage2CurveConfig:
    # One point's generator evaluated at several stage-2 step counts, to show its gFID has flattened
    # (images/gfid_vs_stage2_steps.png). "" = no curve. The point's stage-2 recipe is trained once
    # more in <point>/curve/ with the first stage-2 seed, resumed from step to step, and each step's
    # generator is evaluated as the seeds' are (generation metrics only).
    point: str = ""
    steps: list[int] = field(default_factory=list)


@dataclass
class ScalingConfig:
    # The study's folder is runs/<run.name>/ (out_dir/name): one sub-run per point, plus
    # scaling.csv and images/. run.seed is every point's seed.
    run: RunConfig = field(default_factory=lambda: RunConfig(name="scaling"))
    # Objective presets: stage-1 recipes layered over stage1.recipes, one per preset (paper: AE,
    # CLIP+AE, SSL+AE, CLIP+SSL+AE). A preset is named by its file's stem, which names its folders.
    presets: list[str] = field(
        default_factory=lambda: [
            "configs/stage1/ae_only.yaml",
            "configs/stage1/clip_ae.yaml",
            "configs/stage1/ssl_ae.yaml",
            "configs/stage1/vtp.yaml",
        ]
    )
    # Stage-1 pre-training steps (the compute budgets); each budget is its own run with its own
    # full learning-rate schedule.
    steps: list[int] = field(default_factory=lambda: [100, 200, 400])
    # Bottleneck widths (latent channels per token), each its own set of tokenizers; [] = the recipe's
    # own width, and point names without a width ("vtp-200"); otherwise "vtp-w16-200".
    widths: list[int] = field(default_factory=list)
    # The stage-1 key the width sets (vtp-tiny: 16 by default; VTP-S/B/L: 64).
    width_key: str = "model.overrides.vision_feature_bottleneck"
    # Presets run at a width, by file stem ({64: [ae_only, vtp]}); a width not listed runs every preset.
    width_presets: dict[int, list[str]] = field(default_factory=dict)
    # Stage-2 seeds: each point trains stage 2 and evaluates generation once per seed on the same
    # tokenizer and cache (<point>/seed<k>/stage2, eval), and the row reports the mean over seeds
    # with a 95 % interval from the bootstrap over samples and the seed spread
    # (vtp_gen.metrics.intervals.combine_seeds); the tokenizer's own metrics (rFID, probe, zero-shot)
    # are measured once in <point>/eval. [] = one stage-2 run with run.seed in <point>/stage2.
    stage2_seeds: list[int] = field(default_factory=list)
    # true: the gFID and FD-judge intervals take the seed spread pooled over all points (the same
    # stage-2 recipe everywhere; 12 points x 2 seeds = 12 degrees of freedom instead of 1 per
    # point, results.pool_seed_spread); false: each point's own seeds only.
    pool_seed_spread: bool = True
    # Real-vs-real Inception FID at N samples against N reference images ({400: 45.7}), measured
    # outside the study for the data at hand; drawn as the floor in the gFID figures (none = not drawn).
    gfid_floors: dict[int, float] = field(default_factory=dict)
    stage2_curve: Stage2CurveConfig = field(default_factory=lambda: Stage2CurveConfig())
    # Bootstrap resamples of the points for the correlations' intervals in summary.md.
    correlation_resamples: int = 2000
    # Only these points ("vtp-200", ...); [] = the whole grid. Lets a cluster run points as separate jobs.
    only: list[str] = field(default_factory=list)
    # true: run every unfinished point here, in this process (one device per step).
    # false: print the commands of each unfinished point (for multi-GPU jobs) and only collect the
    # points whose evaluation is done into the CSV and plots.
    execute: bool = True
    # Device for the one real stage-1 step whose FLOPs are counted per preset: auto = cuda if present.
    flops_device: str = "auto"
    stage1: StepRecipe = field(default_factory=lambda: StepRecipe(["configs/stage1/tiny.yaml"]))
    # recipes: [] = no separate cache step (stage 2 encodes its data itself when latents.make_cache).
    cache: StepRecipe = field(default_factory=StepRecipe)
    stage2: StepRecipe = field(default_factory=lambda: StepRecipe(["configs/stage2/tiny.yaml"]))
    eval: StepRecipe = field(default_factory=lambda: StepRecipe(["configs/eval/tiny.yaml"]))
