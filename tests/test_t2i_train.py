"""Text-to-image training end to end on a tiny synthetic captioned cache: it learns, exports, samples
from a prompt list, resumes bit-exactly, and caption dropout / guidance act in both directions."""

import json
from pathlib import Path

import pytest
import torch
from test_stage2_helpers import make_latent_cache

from vtp_gen import load_tokenizer
from vtp_gen.config import ConfigError, load_config
from vtp_gen.interop.diffusers import VTPTextPipeline
from vtp_gen.interop.export_cli import main as export_main
from vtp_gen.interop.generators import load_text_generator
from vtp_gen.latents.dataset import LatentDataset
from vtp_gen.pipeline.stage2.config import Stage2Config
from vtp_gen.pipeline.t2i.config import T2IConfig, T2ISampleConfig
from vtp_gen.pipeline.t2i.run import run
from vtp_gen.pipeline.t2i.sample import run as sample_run
from vtp_gen.t2i.captions import CAPTIONS_FILE, CacheCaptions, write_captions
from vtp_gen.t2i.guidance import sample_text, text_guided_velocity
from vtp_gen.t2i.system import draw_captions
from vtp_gen.t2i.text_features import CaptionEncoder, TextFeatures

REPO_ROOT = Path(__file__).resolve().parents[1]

T2I_RECIPE = REPO_ROOT / "configs" / "stage2" / "t2i_tiny.yaml"
CLASSES = ("circle", "square", "stripe", "dot")


@pytest.fixture(scope="module")
def captioned_cache(tmp_path_factory):
    folder = make_latent_cache(tmp_path_factory.mktemp("t2i") / "cache", num_items=128)
    # Two wordings per class for even items, one for odd: several captions per image are allowed.
    captions = [
        [f"a {CLASSES[i % 4]}", f"the {CLASSES[i % 4]} pattern"] if i % 2 == 0 else [f"a {CLASSES[i % 4]}"]
        for i in range(128)
    ]
    write_captions(folder, captions)
    return folder


def overrides(out, name, cache, tokenizer, *extra):
    return [
        f"run.out_dir={out}",
        f"run.name={name}",
        f"latents.cache_dir={cache}",
        f"latents.tokenizer={tokenizer}",
        "latents.verify_tokenizer=false",
        "latents.make_cache=false",
        "text.write_captions=false",
        "model.overrides.depth=2",
        "model.overrides.hidden_size=32",
        "model.overrides.num_heads=2",
        "train.global_batch_size=16",
        "trainer.max_steps=8",
        "trainer.checkpoint_every_n_steps=4",
        "trainer.log_every_n_steps=2",
        "trainer.progress_bar=false",
        "ema.decay=0.9",
        "preview.enabled=false",
        *extra,
    ]


def test_captions_file_is_read_beside_an_unchanged_class_conditional_cache(captioned_cache):
    latents = LatentDataset(captioned_cache, flip_prob=0.5)
    captions = CacheCaptions.load(captioned_cache, latents.files)
    assert len(captions) == len(latents) == 128
    assert captions.captions[:3] == ["a circle", "the circle pattern", "a square"]
    assert captions.choices[0].tolist() == [0, 1] and captions.choices[1].tolist() == [2, -1]
    # The class-conditional path reads the same folder as before (labels, latents), ignoring the file.
    assert (captioned_cache / CAPTIONS_FILE).is_file()
    assert int(latents[5][1]) == 1


def test_a_stale_captions_file_is_refused(tmp_path):
    cache = make_latent_cache(tmp_path / "cache", num_items=64)
    write_captions(cache, [["x"]] * 10)  # fewer images than the cache holds
    with pytest.raises(ValueError, match="holds captions of 10 images"):
        CacheCaptions.load(cache, LatentDataset(cache, flip_prob=0).files)


def test_name_variant_captions_are_written_and_follow_the_recipe(tmp_path, fashion_mnist):
    from vtp_gen.data.captions import NAME_VARIANTS
    from vtp_gen.data.fashion_mnist import FashionMNIST
    from vtp_gen.pipeline.t2i.run import ensure_captions

    dataset = FashionMNIST(split="train", max_samples=60)
    varied = load_config(T2IConfig, T2I_RECIPE, ["data.max_samples=60", "text.name_variants=true"])
    record = json.loads(ensure_captions(varied, tmp_path).read_text())
    assert record["made_from"] == "labels+name_variants"
    rows = [[record["captions"][c] for c in ids] for ids in record["per_image"]]
    for i, row in enumerate(rows):
        name = dataset.class_name(i)
        assert len(row) == 2 and row[0] == dataset.caption(i)
        assert any(f" {v}" in f" {row[1]}" for v, _ in NAME_VARIANTS[name]), row
    assert any("trousers" in row[1] for row in rows)
    # The recipe without variants (its default) rewrites a file vtp_gen made from labels ...
    plain = load_config(T2IConfig, T2I_RECIPE, ["data.max_samples=60"])
    record = json.loads(ensure_captions(plain, tmp_path).read_text())
    assert record["made_from"] == "labels" and all(len(ids) == 1 for ids in record["per_image"])
    # ... but never one written by hand.
    write_captions(tmp_path, [["mine"]] * 60)
    assert json.loads(ensure_captions(varied, tmp_path).read_text())["captions"] == ["mine"]


def test_draw_captions_picks_only_real_choices():
    torch.manual_seed(0)
    choices = torch.tensor([[3, 4], [7, -1]]).repeat(200, 1)
    drawn = draw_captions(choices)
    assert set(drawn[0::2].tolist()) == {3, 4} and set(drawn[1::2].tolist()) == {7}


@pytest.fixture(scope="module")
def trained(captioned_cache, tmp_path_factory, reference_dir):
    """A text model trained for 8 steps on the synthetic captioned cache (shared by the tests below)."""
    out = tmp_path_factory.mktemp("t2i_runs")
    tokenizer = reference_dir / "vtp_tiny_default"  # official layout; 48-wide text tower, 16x4x4 latents
    result = run(load_config(T2IConfig, T2I_RECIPE, overrides(out, "straight", captioned_cache, tokenizer)))
    return out, tokenizer, result


def test_train_export_and_resume_bit_exactly(captioned_cache, trained):
    out, tokenizer, straight = trained
    assert straight.summary["step"] == 8 and straight.summary["distinct_captions"] == 6  # 4 + 2 wordings
    # Resume: stop at step 4, then continue to 8 from last.ckpt: the same weights, bit for bit.
    first = overrides(out, "resumed", captioned_cache, tokenizer, "trainer.max_steps=4")
    run(load_config(T2IConfig, T2I_RECIPE, first))
    resumed = run(load_config(T2IConfig, T2I_RECIPE, overrides(out, "resumed", captioned_cache, tokenizer)))
    assert resumed.summary["weights_sha256"] == straight.summary["weights_sha256"]
    # Stage 2's resume rules hold here too: a changed seed is refused, in one line naming the key.
    reseeded = overrides(out, "resumed", captioned_cache, tokenizer, "trainer.max_steps=12", "run.seed=7")
    with pytest.raises(ConfigError, match="run.seed=7 differs"):
        run(load_config(T2IConfig, T2I_RECIPE, reseeded))

    generator = load_text_generator(straight.generator)
    assert generator.config["text_dim"] == 48 and generator.config["in_channels"] == 16
    info = json.loads((straight.generator / "stage2.json").read_text())
    assert info["conditioning"] == "text" and info["weights"] == "ema"


def test_a_prompt_file_end_to_end(trained, tmp_path):
    out, _, _ = trained
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("a circle\n\nthe dot pattern\n")
    cfg = load_config(
        T2ISampleConfig,
        REPO_ROOT / "configs" / "stage2" / "sample_t2i_tiny.yaml",
        [
            f"run.out_dir={out}",
            "run.name=straight",
            f"prompts_file={prompts_file}",
            "per_prompt=3",
            "batch_size=4",
            "sampling.steps=4",
            "sampling.cfg_scale=2.0",
            "sampling.cfg_interval_start=0.3",
        ],
    )
    result = sample_run(cfg)
    assert result.prompts == ["a circle", "the dot pattern"] and result.written == 6
    import numpy as np

    with np.load(result.npz) as npz:
        assert npz["arr_0"].shape == (6, 64, 64, 3) and npz["arr_1"].tolist() == [0, 0, 0, 1, 1, 1]
    assert (result.folder / "grid.png").is_file()
    assert (result.folder / "prompts.txt").read_text() == "a circle\nthe dot pattern\n"
    # A rerun has nothing left to make.
    assert sample_run(cfg).written == 0


@pytest.mark.distributed
def test_two_ranks_sample_what_one_process_samples(trained, tmp_path):
    """``devices=2``: each gloo CPU rank makes its own blocks of the prompt samples; the PNGs, the .npz
    and the grid are those of one process, byte for byte."""
    import os
    import subprocess
    import sys

    out, _, _ = trained
    common = [
        f"run.out_dir={out}",
        "run.name=straight",
        "prompts=[a circle,the dot pattern,a stripe]",
        "per_prompt=2",
        "batch_size=4",  # 6 samples: blocks 0-3 (rank 0) and 4-7 (rank 1; 6 and 7 only fill the batch)
        "sampling.steps=3",
        "progress_bar=false",
    ]
    recipe = REPO_ROOT / "configs" / "stage2" / "sample_t2i_tiny.yaml"
    one = sample_run(load_config(T2ISampleConfig, recipe, [*common, f"out_dir={tmp_path / 'one'}"]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    two = tmp_path / "two"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "stage2" / "sample.py"), "--config", str(recipe), *common]
        + [f"out_dir={two}", "devices=2", "strategy=ddp"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    for name in [f"images/{i:06d}.png" for i in range(6)] + ["samples.npz", "grid.png", "prompts.txt"]:
        assert (two / name).read_bytes() == (one.folder / name).read_bytes(), name
    assert not (two / "images" / "000006.png").exists()


def _evaluate(out, *extra):
    from vtp_gen import create_model
    from vtp_gen.interop.generators import save_generator
    from vtp_gen.pipeline.t2i.config import T2IEvalConfig
    from vtp_gen.pipeline.t2i.evaluate import run as eval_run

    torch.manual_seed(0)
    class_model = create_model("LightningDiT-T/2", input_size=4, in_channels=16, num_classes=10, depth=1)
    save_generator(class_model, out / "class_generator")
    evaluation = [
        f"run.out_dir={out}",
        "run.name=straight",
        f"class_generator={out / 'class_generator'}",
        "per_prompt=2",
        "batch_size=10",
        "sampling.steps=3",
        "judge_epochs=1",
        "judge_train_images=300",
        *extra,
    ]
    return eval_run(load_config(T2IEvalConfig, REPO_ROOT / "configs" / "eval" / "t2i_tiny.yaml", evaluation))


def test_the_trained_run_exports_as_a_diffusers_text_pipeline(trained, tmp_path):
    """export_cli --t2i on the trained run: the pipeline loaded from disk samples what sample_text samples."""
    out, tokenizer, straight = trained
    folder = tmp_path / "exported"
    assert export_main(["--run", str(out / "straight"), "--t2i", "--out", str(folder)]) == 0
    pipe = VTPTextPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.default_num_inference_steps == 49  # the recipe's 50 grid points

    prompts = ["a circle", "the dot pattern"]
    guidance = dict(guidance_scale=2.0, guidance_interval_start=0.3)
    latents = pipe(
        prompts, num_inference_steps=3, generator=seeded(1), output_type="latent", **guidance
    ).images
    encoder = CaptionEncoder.from_tokenizer(load_tokenizer(tokenizer))
    noise = torch.randn(2, 16, 4, 4, generator=seeded(1))
    generator = load_text_generator(straight.generator)
    direct = sample_text(
        generator, noise, encoder(prompts), encoder.null(), steps=4, cfg_scale=2.0, cfg_interval_start=0.3
    )
    assert (latents - direct).abs().max().item() <= 1e-5 * max(1.0, direct.abs().max().item())


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_evaluation_end_to_end_without_fid(trained):
    out, _, _ = trained
    metrics = _evaluate(out, "fid_real_images=0")
    for model in ("text_model", "class_model"):
        assert 0 <= metrics[model]["agreement"] <= 1 and 0 <= metrics[model]["clip_score"] <= 100
        assert "fid" not in metrics[model]
    assert 0 < metrics["judge_test_accuracy"] <= 1
    folder = out / "straight" / "t2i_eval"
    assert (folder / "grid.png").is_file() and "prompt agreement" in (folder / "report.md").read_text()


@pytest.mark.slow
def test_evaluation_end_to_end_with_fid(trained):
    # Inception on the CPU: minutes on a shared machine, hence slow-marked.
    metrics = _evaluate(trained[0], "fid_real_images=6")
    assert metrics["text_model"]["fid"] > 0 and metrics["class_model"]["fid"] > 0


def test_caption_dropout_uses_the_empty_caption_in_both_directions():
    from vtp_gen.t2i.system import TextFlowMatching
    from vtp_gen.transport import Transport

    class Bank:
        null = TextFeatures(torch.zeros(1, 3, 4), torch.tensor([[True, True, False]]), torch.zeros(1, 4))

        def __call__(self, ids):
            n = len(ids)
            return TextFeatures(torch.ones(n, 3, 4), torch.ones(n, 3, dtype=torch.bool), torch.ones(n, 4))

    def system(p):
        return TextFlowMatching(torch.nn.Linear(1, 1), Transport(), Bank(), caption_dropout_prob=p)

    choices = torch.zeros(4000, 1, dtype=torch.long)
    torch.manual_seed(0)
    never = system(0.0).condition(choices)
    assert bool(never.pooled.eq(1).all())
    torch.manual_seed(0)
    some = system(0.25).condition(choices)
    dropped = some.pooled[:, 0] == 0
    assert 0.2 < float(dropped.float().mean()) < 0.3
    assert not some.mask[dropped, 2].any() and some.mask[~dropped].all()


def test_guidance_moves_away_from_the_null_prediction_and_the_interval_switches_it_off():
    def model(x, t, text, text_mask, pooled_text):  # a linear "model": the prediction is the caption
        return x * 0 + pooled_text[:, :1, None, None]

    x = torch.zeros(2, 1, 2, 2)
    cond = TextFeatures(torch.zeros(2, 1, 1), torch.ones(2, 1, dtype=torch.bool), torch.full((2, 1), 1.0))
    null = TextFeatures(torch.zeros(1, 1, 1), torch.ones(1, 1, dtype=torch.bool), torch.full((1, 1), 0.2))
    v = text_guided_velocity(model, cond, null, cfg_scale=3.0, cfg_interval_start=0.5)
    out = v(x, torch.tensor([0.9, 0.1]))
    assert torch.allclose(out[0], torch.full((1, 2, 2), 0.2 + 3.0 * 0.8))  # guided: beyond cond
    assert torch.allclose(out[1], torch.full((1, 2, 2), 1.0))  # outside the interval: plain cond
    weak = text_guided_velocity(model, cond, null, cfg_scale=0.5)(x, torch.tensor([0.9, 0.9]))
    assert torch.allclose(weak, torch.full((2, 1, 2, 2), 0.2 + 0.5 * 0.8))  # scale < 1: toward null


def test_the_t2i_recipes_validate_and_the_class_recipe_is_unchanged():
    from vtp_gen.pipeline.cli import recipe_step, schema_for_recipe

    assert schema_for_recipe(T2I_RECIPE) is T2IConfig
    assert recipe_step("stage2", [str(T2I_RECIPE)]) == "t2i"
    assert recipe_step("sample", ["configs/stage2/sample_t2i_tiny.yaml"]) == "t2i-sample"
    assert recipe_step("stage2", ["configs/stage2/tiny.yaml"]) == "stage2"
    cfg = load_config(T2IConfig, T2I_RECIPE)
    assert cfg.model.name == "TextDiT-T/2" and cfg.text.caption_dropout_prob == 0.1
    assert (
        load_config(Stage2Config, REPO_ROOT / "configs" / "stage2" / "tiny.yaml").model.name
        == "LightningDiT-T/2"
    )


def test_captions_of_another_dataset_are_refused(tmp_path):
    from vtp_gen.latents.manifest import FORMAT_NAME, MANIFEST_FILE

    cache = make_latent_cache(tmp_path / "cache", num_items=64)
    manifest = {"format": FORMAT_NAME, "complete": True, "dataset": {"fingerprint": "abc"}}
    (cache / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not the one the cache"):
        write_captions(cache, [["x"]] * 64, dataset_fingerprint="def")
    write_captions(cache, [["x"]] * 64, dataset_fingerprint="abc")
    record = json.loads((cache / CAPTIONS_FILE).read_text())
    assert record["dataset_fingerprint"] == "abc" and record["captions"] == ["x"]
