"""Every file under configs/ run as shipped: real optimiser steps on the CPU, shrunk only where it must be.

Each recipe is loaded the way its header says to use it (``vtp_gen.pipeline.cli.build_config``:
``--config`` layers left to right, ``--data`` merged into the data section) and its step
runs in process with the recipe's own precision (bf16-mixed runs on the CPU), optimiser
and fusing, clipping, EMA, objectives and data source. The data are small synthetic sets
written to tmp_path in the format the recipe reads (an image-class folder, image-text
webdataset shards from the project's writer, a latent cache from the cache step itself,
Fashion-MNIST from the embedded dataset). What is shrunk, and nothing else:

- model depth and width (``STAGE1_MODEL``, ``STAGE2_MODEL``): paper-size models would not fit
  two shared cores;
- batch, steps, devices, accelerator and strategy (``gpu`` -> ``cpu``, ``ddp`` / ``fsdp`` ->
  ``auto``: FSDP refuses CPUs, see configs/stage1/vtp_l.yaml), sample and image counts;
- the paths that name data on a cluster.

The default suite runs the embedded default chain (stage 1 tiny -> cache -> stage 2 ->
sample) and plans both scaling studies (~55 s on two busy cores); ``make test-slow`` runs the
objective presets, the Fashion-MNIST shards, the three paper tokenizer recipes at 256 px,
the ImageNet cache, the four paper generator recipes, paper sampling and both evaluations.
``test_every_file_under_configs_is_exercised`` keeps the list whole.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vtp_gen.pipeline.cli import build_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# Which test exercises each shipped file (paths relative to configs/).
EXERCISED_BY = {
    "data/fashion_mnist.yaml": "test_embedded_default_chain_runs_as_shipped",
    "stage1/tiny.yaml": "test_embedded_default_chain_runs_as_shipped",
    "stage2/cache_tiny.yaml": "test_embedded_default_chain_runs_as_shipped",
    "stage2/tiny.yaml": "test_embedded_default_chain_runs_as_shipped",
    "stage2/sample_tiny.yaml": "test_embedded_default_chain_runs_as_shipped",
    "scaling/tiny.yaml": "test_scaling_studies_plan_every_step",
    "scaling/quick.yaml": "test_scaling_studies_plan_every_step (run: test_scaling.py::test_quick_study_end_to_end)",
    "scaling/paper.yaml": "test_scaling_studies_plan_every_step",
    "stage1/ae_only.yaml": "test_objective_presets_take_steps",
    "stage1/clip_ae.yaml": "test_objective_presets_take_steps",
    "stage1/ssl_ae.yaml": "test_objective_presets_take_steps",
    "stage1/vtp.yaml": "test_objective_presets_take_steps",
    "data/fashion_mnist_wds.yaml": "test_fashion_mnist_shards_recipe_takes_steps",
    "stage1/vtp_s.yaml": "test_paper_tokenizer_recipes_take_steps",
    "stage1/vtp_l.yaml": "test_paper_tokenizer_recipes_take_steps",
    "data/datacomp.yaml": "test_paper_tokenizer_recipes_take_steps",
    "stage1/vtp_b.yaml": "paper_chain (the issue's vtp_b command)",
    "data/imagenet.yaml": "paper_chain (the issue's vtp_b command)",
    "stage2/cache_imagenet.yaml": "paper_chain",
    "stage2/lightningdit_xl1.yaml": "test_paper_generator_recipes_take_steps",
    "stage2/lightningdit_b1.yaml": "test_paper_generator_recipes_take_steps",
    "stage2/sit_xl2.yaml": "test_paper_generator_recipes_take_steps",
    "stage2/dit_xl2.yaml": "test_paper_generator_recipes_take_steps",
    "stage2/sample_paper.yaml": "test_paper_sampling_and_evaluation",
    "eval/imagenet.yaml": "test_paper_sampling_and_evaluation",
    "eval/tiny.yaml": "test_embedded_default_evaluation",
    # Text-to-image: trained, resumed, sampled and evaluated with their own settings in test_t2i_*.py.
    "stage2/t2i_tiny.yaml": "test_t2i_train.py::test_train_export_and_resume_bit_exactly",
    "stage2/sample_t2i_tiny.yaml": "test_t2i_train.py::test_a_prompt_file_end_to_end",
    "eval/t2i_tiny.yaml": "test_t2i_train.py::test_evaluation_end_to_end_without_fid",
    "stage2/t2i_xl_laion.yaml": (
        "test_t2i_generator.py::test_the_paper_scale_recipe_builds_a_dit_xl_sized_model_on_the_meta_device"
    ),
}

# Stage-1 tokenizers: one block of width 64 in each tower; patch size, latent channels,
# image and crop sizes, the DINO head and LPIPS stay the recipe's.
STAGE1_MODEL = [
    "model.overrides.vision_embed_dim=64",
    "model.overrides.vision_num_heads=2",
    "model.overrides.vision_depth=1",
    "model.overrides.text_embed_dim=64",
    "model.overrides.text_num_heads=2",
    "model.overrides.text_depth=1",
    "model.overrides.decoder_embed_dim=64",
    "model.overrides.decoder_num_heads=2",
    "model.overrides.decoder_depth=1",
]
# Generators: one block of width 64 (patch size, latent shape and everything else as shipped).
STAGE2_MODEL = ["model.overrides.depth=1", "model.overrides.hidden_size=64", "model.overrides.num_heads=2"]
ON_THE_CPU = [
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.strategy=auto",
    "trainer.progress_bar=false",
]


def configure(step: str, recipes: list[str], data: str | None = None, overrides=()):
    """The config `make <step> CONFIG="<recipes>" DATA=<data> ARGS="<overrides>"` would run."""
    return build_config(
        step, [str(CONFIGS / r) for r in recipes], str(CONFIGS / data) if data else None, list(overrides)
    )


def stage1_steps(out: Path, name: str, steps: int = 2, finetune_steps: int = 1) -> list[str]:
    return [
        f"run.out_dir={out}",
        f"run.name={name}",
        *ON_THE_CPU,
        "data.num_workers=0",
        f"trainer.max_steps={steps}",
        "trainer.log_every_n_steps=1",
        f"decoder_finetune.max_steps={finetune_steps}",
    ]


def run_stage1(cfg) -> dict:
    from vtp_gen.pipeline.stage1.run import run

    metrics = run(cfg)
    progress = json.loads((Path(cfg.run.out_dir) / cfg.run.name / "stage1" / "progress.json").read_text())
    assert progress["pretrain_steps"] == cfg.trainer.max_steps
    assert progress["finetune_steps"] == (
        cfg.decoder_finetune.max_steps if cfg.decoder_finetune.enabled else 0
    )
    losses = metrics["pretrain"]["train/loss"]
    assert np.isfinite(losses["first"]) and np.isfinite(losses["last"])
    return metrics


def write_image_folder(root: Path, classes=("n01440764", "n01443537"), per_class: int = 6, size=(288, 320)):
    """JPEGs in ImageNet's class-folder layout, larger than 256 px so the centre crop does work."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = rng.integers(0, 60, (*size, 3), dtype=np.uint8)
            pixels[40 + 30 * label : 140 + 30 * label, 60:200] = 200  # a square that moves with the class
            Image.fromarray(pixels).save(root / name / f"{name}_{index}.JPEG")
    return root


def write_shards_from(dataset, out: Path, shard_size: int) -> str:
    """Image-text shards written by vtp_gen.data.write_shards; returns the brace pattern of their paths."""
    from vtp_gen.data.write_shards import write_shards

    paths = write_shards(dataset, out, shard_size=shard_size)
    return str(out / f"shard-{{000000..{len(paths) - 1:06d}}}.tar")


# ------------------------------------------------------------------------------ coverage
def test_every_file_under_configs_is_exercised():
    shipped = {str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml")}
    assert shipped == set(EXERCISED_BY), (
        f"not exercised: {sorted(shipped - set(EXERCISED_BY))}; gone: {sorted(set(EXERCISED_BY) - shipped)}"
    )


# ------------------------------------------------------------------------------ the embedded default
@pytest.fixture(scope="module")
def tiny_chain(tmp_path_factory):
    """`make stage1 DATA=configs/data/fashion_mnist.yaml`, `make cache`, `make stage2`, `make sample`, shrunk."""
    from vtp_gen.pipeline.cache.run import run as run_cache
    from vtp_gen.pipeline.sample.run import run as run_sample
    from vtp_gen.pipeline.stage2.run import run as run_stage2

    out = tmp_path_factory.mktemp("tiny_chain")
    stage1 = configure(
        "stage1",
        ["stage1/tiny.yaml"],
        "data/fashion_mnist.yaml",
        [
            *stage1_steps(out, "default"),
            "data.batch_size=16",
            "decoder_finetune.batch_size=4",
            "evaluation.reconstruction_images=8",
            "evaluation.zero_shot_images=20",
        ],
    )
    metrics = run_stage1(stage1)
    cache = configure(
        "cache",
        ["stage2/cache_tiny.yaml"],
        None,
        [
            f"run.out_dir={out}",
            "run.name=default",
            "data.max_samples=48",
            "data.batch_size=16",
            "progress_bar=false",
        ],
    )
    cached = run_cache(cache)
    stage2 = configure(
        "stage2",
        ["stage2/tiny.yaml"],
        None,
        [
            f"run.out_dir={out}",
            "run.name=default",
            *ON_THE_CPU,
            "train.global_batch_size=8",
            "trainer.max_steps=2",
            "trainer.log_every_n_steps=1",
            "preview.rows=2",
            "preview.per_class=2",
            "preview.steps=2",
        ],
    )
    trained = run_stage2(stage2)
    sample = configure(
        "sample",
        ["stage2/sample_tiny.yaml"],
        None,
        [
            f"run.out_dir={out}",
            "run.name=default",
            "num_samples=10",
            "batch_size=5",
            "sampling.steps=2",
            "progress_bar=false",
        ],
    )
    sampled = run_sample(sample)
    return dict(out=out, stage1=stage1, metrics=metrics, cache=cached, stage2=trained, sample=sampled)


def test_embedded_default_chain_runs_as_shipped(tiny_chain):
    stage1 = tiny_chain["stage1"]
    assert stage1.trainer.precision == "auto" and stage1.trainer.gradient_clip_val == 3.0
    assert tiny_chain["metrics"]["evaluation"]["zero_shot"]["num_images"] == 20
    assert tiny_chain["cache"].manifest["dataset"]["num_images"] == 48
    summary = tiny_chain["stage2"].summary
    assert summary["step"] == 2 and summary["latent_shape"] == [16, 8, 8]
    assert (tiny_chain["stage2"].generator / "config.json").is_file()
    assert tiny_chain["sample"].num_samples == 10 and tiny_chain["sample"].npz.is_file()


@pytest.mark.slow
def test_embedded_default_evaluation(tiny_chain):
    """configs/eval/tiny.yaml on the chain's run folder, with the real Inception, on a few images."""
    from vtp_gen.pipeline.evaluate.run import run as run_eval

    cfg = configure(
        "eval",
        ["eval/tiny.yaml"],
        None,
        [
            f"run.out_dir={tiny_chain['out']}",
            "run.name=default",
            "device=cpu",
            "progress_bar=false",
            "cache_reference=false",
            "generation.num_samples=20",
            "generation.num_reference=20",
            "generation.kid_subset_size=10",
            "reconstruction.num_images=16",
            "linear_probe.train_images=60",
            "linear_probe.test_images=40",
            "linear_probe.epochs=1",
            "zero_shot.num_images=20",
        ],
    )
    result = run_eval(cfg)
    assert {r.metric for r in result["records"]} >= {"gfid", "rfid"}


# ------------------------------------------------------------------------------ scaling studies
@pytest.mark.parametrize("recipe", ["scaling/tiny.yaml", "scaling/quick.yaml", "scaling/paper.yaml"])
def test_scaling_studies_plan_every_step(recipe, tmp_path):
    """Every point's step configs resolve against their schemas (the steps are the recipes tested here),
    and so do the stage-2 curve's.

    Running a study is tests/test_scaling.py's slow micro and quick studies; the paper study is cluster
    jobs (``execute: false``) whose commands are what this plans.
    """
    from vtp_gen.pipeline.scaling.run import curve_calls, plan_points, stage2_seeds, step_calls

    cfg = configure("scaling", [recipe], None, [f"run.out_dir={tmp_path}"])
    points = plan_points(cfg)
    per_width = [
        len(cfg.width_presets[w]) if w in cfg.width_presets else len(cfg.presets)
        for w in (cfg.widths or [None])
    ]
    assert len(points) == sum(per_width) * len(cfg.steps)
    seeds = len(stage2_seeds(cfg))
    for point in points:
        calls = step_calls(cfg, point)
        assert [c.step for c in calls][:2] == ["stage1", "cache"]
        assert [c.step for c in calls].count("stage2") == seeds
        assert [c.step for c in calls].count("eval") == seeds + (1 if cfg.stage2_seeds else 0)
        for call in calls:
            assert call.build() is not None and call.command()
    if cfg.stage2_curve.point:
        point = next(p for p in points if p.name == cfg.stage2_curve.point)
        for group in curve_calls(cfg, point).values():
            for call in group:
                assert call.build() is not None and call.command()


# ------------------------------------------------------------------------------ stage-1 variants (slow)
@pytest.mark.slow
@pytest.mark.parametrize("preset", ["ae_only", "clip_ae", "ssl_ae", "vtp"])
def test_objective_presets_take_steps(preset, tmp_path):
    """Layered on the base recipe as their headers say: --config tiny.yaml --config <preset>.yaml."""
    cfg = configure(
        "stage1",
        ["stage1/tiny.yaml", f"stage1/{preset}.yaml"],
        None,
        [
            *stage1_steps(tmp_path, preset),
            "data.batch_size=16",
            "data.max_samples=64",
            "decoder_finetune.batch_size=4",
            "evaluation.reconstruction_images=8",
            "evaluation.zero_shot_images=20",
        ],
    )
    run_stage1(cfg)


@pytest.mark.slow
def test_fashion_mnist_shards_recipe_takes_steps(tmp_path):
    """configs/data/fashion_mnist_wds.yaml over the tiny recipe, on shards written as its header says."""
    from vtp_gen.data.fashion_mnist import FashionMNIST

    shards = write_shards_from(FashionMNIST(None, "train", None, True, 96), tmp_path / "wds", shard_size=32)
    cfg = configure(
        "stage1",
        ["stage1/tiny.yaml"],
        "data/fashion_mnist_wds.yaml",
        [
            *stage1_steps(tmp_path, "wds"),
            f"data.shards={shards}",
            "data.batch_size=16",
            "decoder_finetune.batch_size=4",
            "evaluation.reconstruction_images=8",
            "evaluation.zero_shot_images=20",
        ],
    )
    assert cfg.data.source == "webdataset" and cfg.data.resampled
    run_stage1(cfg)


def paper_stage1_overrides(out: Path, name: str, images: Path) -> list[str]:
    return [
        *stage1_steps(out, name, steps=2, finetune_steps=1),
        *STAGE1_MODEL,
        "data.batch_size=4",
        "decoder_finetune.batch_size=2",
        f"evaluation.root={images}",
        "evaluation.reconstruction_images=2",
        "evaluation.zero_shot_images=4",
        "evaluation.batch_size=4",
    ]


def check_paper_settings(cfg) -> None:
    """What the CPU run keeps of the GPU recipe (the point of running it)."""
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.gradient_clip_val == 3.0
    assert cfg.data.image_size == 256 and cfg.ssl.prototypes == 65536 and cfg.objectives.lpips_weight == 1.0


@pytest.fixture(scope="module")
def imagenet_folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imagenet") / "train")


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe, data", [("stage1/vtp_s.yaml", None), ("stage1/vtp_l.yaml", "data/datacomp.yaml")]
)
def test_paper_tokenizer_recipes_take_steps(recipe, data, tmp_path, imagenet_folder):
    """VTP-S on its own shard settings, VTP-L on configs/data/datacomp.yaml: bf16, clip 3.0, the recipe's AdamW."""
    from vtp_gen.data.image_folder import LabelledImageFolder

    shards = write_shards_from(LabelledImageFolder(imagenet_folder, with_captions=True), tmp_path / "wds", 6)
    name = Path(recipe).stem
    cfg = configure(
        "stage1",
        [recipe],
        data,
        [*paper_stage1_overrides(tmp_path, name, imagenet_folder), f"data.shards={shards}"],
    )
    check_paper_settings(cfg)
    assert cfg.data.source == "webdataset"
    assert cfg.optim.fused == (name != "vtp_l")  # VTP-L: FSDP on GPUs, the foreach AdamW
    run_stage1(cfg)


# ------------------------------------------------------------------------------ the paper chain (slow)
@pytest.fixture(scope="module")
def paper_chain(tmp_path_factory, imagenet_folder):
    """The issue's command, shrunk: `make stage1 CONFIG=configs/stage1/vtp_b.yaml DATA=configs/data/imagenet.yaml`,
    then `make cache CONFIG=configs/stage2/cache_imagenet.yaml` with its tokenizer (64x16x16 latents)."""
    from vtp_gen.pipeline.cache.run import run as run_cache

    out = tmp_path_factory.mktemp("paper_chain")
    stage1 = configure(
        "stage1",
        ["stage1/vtp_b.yaml"],
        "data/imagenet.yaml",
        [*paper_stage1_overrides(out, "vtp_b", imagenet_folder), f"data.root={imagenet_folder}"],
    )
    check_paper_settings(stage1)
    assert stage1.optim.fused and stage1.decoder_finetune.fused and stage1.data.source == "image_folder"
    run_stage1(stage1)
    tokenizer = out / "vtp_b" / "stage1" / "tokenizer"
    cache = configure(
        "cache",
        ["stage2/cache_imagenet.yaml"],
        None,
        [
            f"run.out_dir={out}",
            "run.name=vtp_l",  # the run name the generator recipes read their cache from (runs/vtp_l/cache)
            f"tokenizer={tokenizer}",
            f"data.root={imagenet_folder}",
            "data.batch_size=4",
            "data.num_workers=0",
            "accelerator=cpu",
            "devices=1",
            "stats_max_images=8",
            "progress_bar=false",
        ],
    )
    cached = run_cache(cache)
    assert list(cached.manifest["latent"]["shape"]) == [64, 16, 16]
    return dict(out=out, tokenizer=tokenizer, cache=cached.folder, images=imagenet_folder, generators={})


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe", ["lightningdit_xl1.yaml", "lightningdit_b1.yaml", "sit_xl2.yaml", "dit_xl2.yaml"]
)
def test_paper_generator_recipes_take_steps(recipe, paper_chain):
    from vtp_gen.pipeline.stage2.run import run as run_stage2

    cfg = configure(
        "stage2",
        [f"stage2/{recipe}"],
        None,
        [
            f"run.out_dir={paper_chain['out']}",
            f"run.name={Path(recipe).stem}",
            f"latents.cache_dir={paper_chain['cache']}",
            f"latents.tokenizer={paper_chain['tokenizer']}",
            *ON_THE_CPU,
            *STAGE2_MODEL,
            "train.global_batch_size=4",
            "train.num_workers=0",
            "trainer.max_steps=2",
            "trainer.log_every_n_steps=1",
            "preview.rows=2",
            "preview.per_class=1",
            "preview.steps=2",
        ],
    )
    assert cfg.optim.fused and cfg.ema.decay == 0.9999 and cfg.model.num_classes == 1000
    result = run_stage2(cfg)
    assert result.summary["step"] == 2 and result.summary["latent_shape"] == [64, 16, 16]
    paper_chain["generators"][recipe] = result.generator


@pytest.mark.slow
def test_paper_sampling_and_evaluation(paper_chain, tmp_path):
    """sample_paper.yaml on the LightningDiT-XL/1 recipe's generator, then eval/imagenet.yaml on it all."""
    from vtp_gen.pipeline.evaluate.run import run as run_eval
    from vtp_gen.pipeline.sample.run import run as run_sample

    generator = paper_chain["generators"].get("lightningdit_xl1.yaml")
    if generator is None:  # run alone: train the recipe's generator first
        test_paper_generator_recipes_take_steps("lightningdit_xl1.yaml", paper_chain)
        generator = paper_chain["generators"]["lightningdit_xl1.yaml"]
    sample = configure(
        "sample",
        ["stage2/sample_paper.yaml"],
        None,
        [
            f"run.out_dir={tmp_path}",
            f"generator={generator}",
            f"tokenizer={paper_chain['tokenizer']}",
            "num_samples=4",
            "batch_size=2",
            "sampling.steps=2",
            "accelerator=cpu",
            "devices=1",
            "progress_bar=false",
        ],
    )
    sampled = run_sample(sample)
    assert sampled.npz.is_file()
    evaluation = configure(
        "eval",
        ["eval/imagenet.yaml"],
        None,
        [
            f"run.out_dir={tmp_path}",
            f"data.root={paper_chain['images']}",
            "data.batch_size=4",
            "data.num_workers=0",
            f"tokenizer={paper_chain['tokenizer']}",
            f"generation.samples={sampled.folder}",
            f"generation.generator={generator}",
            "generation.num_samples=4",
            "generation.num_reference=8",
            "generation.kid_subset_size=2",
            "reconstruction.num_images=4",
            f"linear_probe.train_root={paper_chain['images']}",
            "linear_probe.train_split=train",
            "linear_probe.train_images=8",
            "linear_probe.test_images=4",
            "linear_probe.epochs=1",
            "linear_probe.batch_size=4",
            "zero_shot.num_images=4",
            "device=cpu",
            "progress_bar=false",
            "cache_reference=false",
        ],
    )
    result = run_eval(evaluation)
    assert {r.metric for r in result["records"]} >= {"gfid", "rfid"}
