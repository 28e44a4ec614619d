"""``python -m vtp_gen.interop.export_cli``: a run folder (as stage 1 + stage 2 leave it) -> diffusers pipeline."""

import json
import warnings

import pytest
import torch

import vtp_gen
from vtp_gen.data.fashion_mnist import CLASS_NAMES
from vtp_gen.data.images import load_png
from vtp_gen.data.transforms import denormalize
from vtp_gen.interop.diffusers import VTPPipeline
from vtp_gen.interop.export_cli import EXPORT_INFO_FILE, main
from vtp_gen.interop.generators import save_generator
from vtp_gen.latents.dataset import LatentStats
from vtp_gen.latents.manifest import FORMAT_NAME, MANIFEST_FILE
from vtp_gen.transport import sample

SAMPLING = {"method": "euler", "steps": 4, "shift": 0.3, "cfg_scale": 1.5, "cfg_interval_start": 0.1}


def perturbed(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """runs/<name>/ with what `make stage1` and `make stage2` export, on tiny random models."""
    run = tmp_path_factory.mktemp("runs") / "default"
    torch.manual_seed(0)
    tokenizer = perturbed(vtp_gen.create_model("vtp-tiny"), 1)
    generator = perturbed(vtp_gen.create_model("LightningDiT-T/1", num_classes=10), 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vtp-tiny uses vtp_gen-only options: expected
        vtp_gen.save_pretrained(tokenizer, run / "stage1" / "tokenizer")
    cache = run / "cache"
    cache.mkdir(parents=True)
    (cache / MANIFEST_FILE).write_text(
        json.dumps({"format": FORMAT_NAME, "complete": True, "dataset": {"source": "fashion_mnist"}})
    )
    stats = {"mean": 0.1 * torch.randn(1, 16, 1, 1), "std": 0.05 + 0.2 * torch.rand(1, 16, 1, 1)}
    torch.save(stats, cache / "latents_stats.pt")
    folder = save_generator(generator, run / "stage2" / "generator")
    torch.save(stats, folder / "latents_stats.pt")
    info = {
        "step": 10,
        "weights": "ema",
        "latent_cache": str(cache),
        "latent_multiplier": 1.0,
        "tokenizer": str(run / "stage1" / "tokenizer"),
        "sampling": SAMPLING,
    }
    (folder / "stage2.json").write_text(json.dumps(info))
    return run, tokenizer, generator, LatentStats(stats["mean"], stats["std"])


def test_export_run_writes_a_pipeline_that_samples_like_our_code(run_folder, tmp_path):
    run, tokenizer, generator, stats = run_folder
    out, grid = tmp_path / "exported", tmp_path / "grid.png"
    assert (
        main(["--run", str(run), "--out", str(out), "--grid", str(grid), "--per-class", "2", "--rows", "3"])
        == 0
    )

    pipe = VTPPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    # The recipe's sampler became the pipeline's defaults (4 grid points = 3 Euler steps).
    assert pipe.config.default_num_inference_steps == 3
    assert pipe.config.default_guidance_scale == 1.5
    assert pipe.config.guidance_interval_start == pytest.approx(0.1)
    assert pipe.scheduler.config.shift == pytest.approx(1 / 0.3)
    assert [pipe.config.id2label[i] for i in range(10)] == list(CLASS_NAMES)
    info = json.loads((out / EXPORT_INFO_FILE).read_text())
    assert info["training_step"] == 10 and info["recipe_sampling"] == SAMPLING

    images = pipe(["sneaker", "bag"], generator=torch.Generator().manual_seed(5), output_type="pt").images
    noise = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(5))
    latents = sample(
        generator, noise, torch.tensor([7, 8]), steps=4, shift=0.3, cfg_scale=1.5, cfg_interval_start=0.1
    )
    with torch.no_grad():
        expected = denormalize(tokenizer.get_latents_decoded_images(stats.denormalize(latents))).clamp(0, 1)
    assert (images - expected).abs().max().item() <= 1e-5

    # 3 rows (classes 0, 4/5, 9) x 2 columns of 32 px tiles with 2 px padding.
    assert load_png(grid).shape == (3 * 34 + 2, 2 * 34 + 2, 3)


def test_export_overrides_and_explicit_inputs(run_folder, tmp_path):
    run, _, _, _ = run_folder
    names = tmp_path / "names.json"
    names.write_text(json.dumps([f"c{i}" for i in range(10)]))
    out = tmp_path / "exported"
    args = [
        "--generator", str(run / "stage2" / "generator"),
        "--tokenizer", str(run / "stage1" / "tokenizer"),
        "--latent-stats", str(run / "cache" / "latents_stats.pt"),
        "--class-names", str(names),
        "--steps", "7",
        "--shift", "0.075",
        "--guidance-scale", "1.0",
        "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    pipe = VTPPipeline.from_pretrained(out)
    assert pipe.config.default_num_inference_steps == 7 and pipe.config.default_guidance_scale == 1.0
    assert pipe.scheduler.config.shift == pytest.approx(1 / 0.075)
    assert pipe.get_label_ids(["c3", "c9"]) == [3, 9]


def test_export_explains_missing_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="make stage2"):
        main(["--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "out")])
