"""Schema of ``vtp-gen scaling`` / ``make scaling``.

A study is a grid of points (objective preset x stage-1 steps). Every point is
an ordinary run under ``runs/<run.name>/<preset>-<steps>/`` made by the usual
steps (stage1, cache, stage2, eval), each configured exactly as its own
command would be: recipe files layered left to right, an optional data recipe,
then ``key=value`` overrides. Only the preset recipe, the stage-1 step count
and the run folder change from point to point; everything else (the stage-2
recipe, the evaluation protocol, the seed) is shared, which is what makes the
points comparable.
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
