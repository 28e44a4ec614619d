"""diffusers export: AutoencoderVTP, LightningDiTTransformer2DModel and VTPPipeline.

Round trips (save_pretrained -> from_pretrained) must give identical outputs,
the wrapped models must reproduce the reference fixtures, and the pipeline
must equal our own sampler + decoder called directly.
"""

import inspect
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vtp_gen
from vtp_gen.data.transforms import denormalize
from vtp_gen.interop.diffusers import (
    AutoencoderVTP,
    LightningDiTTransformer2DModel,
    VTPPipeline,
    build_pipeline,
    flow_scheduler,
    pipeline_sampling,
)
from vtp_gen.interop.diffusers.pipeline import uniform_sigmas
from vtp_gen.latents.dataset import LatentStats
from vtp_gen.models.generators import LightningDiT
from vtp_gen.transport import sample, time_grid

TOLERANCE = 1e-4
CLASS_NAMES = {i: f"class {i}" for i in range(10)}


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere: adaLN-Zero would otherwise make a fresh generator output exactly 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model.eval()


def random_stats(channels: int, seed: int = 1, multiplier: float = 1.0) -> LatentStats:
    generator = torch.Generator().manual_seed(seed)
    mean = 0.1 * torch.randn(1, channels, 1, 1, generator=generator)
    std = 0.05 + 0.2 * torch.rand(1, channels, 1, 1, generator=generator)
    return LatentStats(mean, std, multiplier)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    tokenizer = perturbed(vtp_gen.create_model("vtp-tiny"), seed=1)  # 32 px -> 16x8x8 latents
    generator = perturbed(vtp_gen.create_model("LightningDiT-T/1", num_classes=10), seed=2)
    return tokenizer, generator, random_stats(16, multiplier=0.8)


@pytest.fixture(scope="module")
def pipe(models):
    tokenizer, generator, stats = models
    pipeline = build_pipeline(
        tokenizer,
        generator,
        stats,
        shift=0.3,
        num_inference_steps=4,
        guidance_scale=2.5,
        guidance_interval_start=0.3,
        id2label=CLASS_NAMES,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------- tokenizer


def test_autoencoder_round_trip_reproduces_official_fixture(reference_dir, tmp_path):
    folder = reference_dir / "vtp_tiny_default"
    golden = load_file(folder / "golden_outputs.safetensors")
    stats = random_stats(16)
    vae = AutoencoderVTP.from_vtp(vtp_gen.load_tokenizer(folder), stats)
    vae.save_pretrained(tmp_path / "vae")
    loaded = AutoencoderVTP.from_pretrained(tmp_path / "vae").eval()

    # The weights keep the official tensor names and dtypes (bf16 RoPE periods), CLIP towers left out.
    official = load_file(folder / "model.safetensors")
    saved = load_file(tmp_path / "vae" / "diffusion_pytorch_model.safetensors")
    expected_names = {k for k in official if k.startswith(("trunk.", "pixel_decoder."))}
    assert set(saved) == expected_names
    for name in expected_names:
        assert saved[name].dtype == official[name].dtype
        assert torch.equal(saved[name], official[name]), name

    with torch.no_grad():
        latents = loaded.encode(golden["input.images"]).latent
        images = loaded.decode(golden["out.reconstruction_latents"]).sample
        reconstruction = loaded(golden["input.images"]).sample
    assert (latents - golden["out.reconstruction_latents"]).abs().max().item() <= TOLERANCE
    assert (images - golden["out.decoded_images"]).abs().max().item() <= TOLERANCE
    assert (reconstruction - golden["out.decoded_images"]).abs().max().item() <= TOLERANCE
    assert torch.equal(loaded.latent_stats.mean, stats.mean) and torch.equal(
        loaded.latent_stats.std, stats.std
    )


def test_autoencoder_config_carries_latent_statistics(models, tmp_path):
    tokenizer, _, stats = models
    vae = AutoencoderVTP.from_vtp(tokenizer, stats)
    vae.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderVTP"
    assert config["latents_mean"] == stats.mean.flatten().tolist()
    assert config["latents_std"] == stats.std.flatten().tolist()
    assert config["latent_multiplier"] == pytest.approx(0.8)
    assert config["vtp_config"]["vision_patch_size"] == 4 and config["vtp_config"]["train_clip"] is False

    loaded = AutoencoderVTP.from_pretrained(tmp_path).eval()
    z = torch.randn(2, 16, 8, 8)
    # normalize / denormalize are the cache's standardisation and its inverse, as LatentStats does them.
    assert torch.allclose(loaded.normalize_latents(z), stats.normalize(z))
    assert torch.allclose(loaded.denormalize_latents(loaded.normalize_latents(z)), z, atol=1e-6)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode(images).latent, tokenizer.get_reconstruction_latents(images))
        assert torch.equal(loaded.decode(z, return_dict=False)[0], tokenizer.get_latents_decoded_images(z))
    # to_vtp gives back the official API on the same weights.
    assert loaded.to_vtp().trunk is loaded.trunk


def test_autoencoder_rejects_bad_statistics(models):
    tokenizer = models[0]
    with pytest.raises(ValueError, match="16 values"):
        AutoencoderVTP.from_vtp(tokenizer, LatentStats(torch.zeros(1, 8, 1, 1), torch.ones(1, 8, 1, 1)))
    with pytest.raises(ValueError, match="positive"):
        AutoencoderVTP.from_vtp(tokenizer, LatentStats(torch.zeros(1, 16, 1, 1), torch.zeros(1, 16, 1, 1)))


# --------------------------------------------------------------- generator


def test_transformer_arguments_are_the_generators():
    ours = inspect.signature(LightningDiTTransformer2DModel.__init__).parameters
    theirs = inspect.signature(LightningDiT.__init__).parameters
    assert [(p.name, p.default) for p in ours.values()] == [(p.name, p.default) for p in theirs.values()]


def test_transformer_round_trip_reproduces_reference_fixture(reference_dir, tmp_path):
    folder = reference_dir / "lightningdit_tiny"
    golden = load_file(folder / "golden_outputs.safetensors")
    transformer = LightningDiTTransformer2DModel.from_generator(vtp_gen.load_generator(folder))
    transformer.save_pretrained(tmp_path)
    loaded = LightningDiTTransformer2DModel.from_pretrained(tmp_path).eval()
    assert json.loads((tmp_path / "config.json").read_text())["num_classes"] == 10
    with torch.no_grad():
        out = loaded(golden["input.x"], golden["input.t"], golden["input.y"]).sample
    assert (out - golden["out.forward"]).abs().max().item() <= TOLERANCE


# ----------------------------------------------------------------- pipeline


@pytest.mark.parametrize("shift", [0.0, 0.075, 0.3, 2.0])
def test_scheduler_grid_is_our_time_grid(shift):
    scheduler = flow_scheduler(shift)
    scheduler.set_timesteps(sigmas=uniform_sigmas(10).tolist())
    ours = time_grid(11, shift)
    # sigma = 1 - t, on the same points; the terminal sigma 0 is t = 1.
    assert torch.allclose(1 - scheduler.sigmas, ours, atol=1e-6)
    assert torch.allclose(1 - scheduler.timesteps / 1000, ours[:-1], atol=1e-6)


@pytest.mark.parametrize("guidance_mode", ["all_channels", "reference"])
def test_pipeline_equals_transport_sample_and_decode(pipe, models, guidance_mode):
    tokenizer, generator, stats = models
    labels = [3, 0, 9]
    steps, scale, start, shift = 4, 2.5, 0.3, 0.3
    out = pipe(labels, generator=seeded(7), guidance_mode=guidance_mode, output_type="pt").images
    latents = pipe(labels, generator=seeded(7), guidance_mode=guidance_mode, output_type="latent").images

    noise = torch.randn(3, 16, 8, 8, generator=seeded(7))
    direct = sample(
        generator,
        noise,
        torch.tensor(labels),
        method="euler",
        steps=steps + 1,
        shift=shift,
        cfg_scale=scale,
        cfg_interval_start=start,
        guidance_mode=guidance_mode,
    )
    with torch.no_grad():
        pixels = denormalize(tokenizer.get_latents_decoded_images(stats.denormalize(direct))).clamp(0, 1)
    assert (latents - direct).abs().max().item() <= 1e-5 * max(1.0, direct.abs().max().item())
    assert (out - pixels).abs().max().item() <= 1e-5
    # Not a vacuous comparison: the samples differ per class and from the noise.
    assert (direct[0] - direct[1]).abs().max() > 1e-2
    assert (direct - noise).abs().max() > 1e-2


def test_pipeline_reproduces_reference_euler_sampler(reference_dir, models):
    """hustvl/LightningDiT's own Euler sampler outputs, from the reference noise, through the pipeline."""
    folder = reference_dir / "lightningdit_tiny"
    settings = json.loads((folder / "sampler_settings.json").read_text())
    golden = load_file(folder / "golden_sampler.safetensors")
    reference_pipe = build_pipeline(models[0], vtp_gen.load_generator(folder), guidance_mode="reference")
    reference_pipe.set_progress_bar_config(disable=True)
    guidance = {"nocfg": {}, "cfg3_interval0.2": dict(guidance_scale=3.0, guidance_interval_start=0.2)}
    checked = 0
    for name, setting in settings.items():
        if setting["sampling_method"] != "euler":
            continue  # the pipeline's scheduler is Euler; Heun is checked on transport.sample itself
        reference_pipe.scheduler = flow_scheduler(setting["timestep_shift"])
        for guidance_name, kwargs in guidance.items():
            out = reference_pipe(
                golden["input.y"],
                num_inference_steps=setting["num_steps"] - 1,
                latents=golden["input.z"],
                output_type="latent",
                **kwargs,
            ).images
            error = (out - golden[f"out.{name}.{guidance_name}"]).abs().max().item()
            assert error <= TOLERANCE, f"{name}.{guidance_name}: {error:.2e}"
            checked += 1
    assert checked == 4


def test_pipeline_defaults_guidance_and_output_types(pipe):
    # Defaults come from the pipeline config; guidance_scale=1 switches guidance off.
    default = pipe([1, 2], generator=seeded(0), output_type="latent").images
    explicit = pipe(
        [1, 2],
        num_inference_steps=4,
        guidance_scale=2.5,
        guidance_interval_start=0.3,
        generator=seeded(0),
        output_type="latent",
    ).images
    unguided = pipe([1, 2], guidance_scale=1.0, generator=seeded(0), output_type="latent").images
    assert torch.equal(default, explicit)
    assert (default - unguided).abs().max() > 1e-3

    by_name = pipe(["class 1", "class 2"], generator=seeded(0), output_type="latent").images
    assert torch.equal(by_name, default)
    # One Euler step is enough to compare the output types.
    as_np = pipe([1, 2], num_inference_steps=1, generator=seeded(0), output_type="np").images
    as_pil = pipe([1, 2], num_inference_steps=1, generator=seeded(0)).images
    as_pt = pipe([1, 2], num_inference_steps=1, generator=seeded(0), output_type="pt").images
    assert as_np.shape == (2, 32, 32, 3) and as_np.min() >= 0 and as_np.max() <= 1
    assert np.allclose(as_np, as_pt.permute(0, 2, 3, 1).numpy())
    assert len(as_pil) == 2 and as_pil[0].size == (32, 32)
    assert np.array_equal(np.asarray(as_pil[0]), np.round(as_np[0] * 255).astype(np.uint8))


def test_pipeline_rejects_bad_labels(pipe):
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        pipe([10], num_inference_steps=1)
    with pytest.raises(ValueError, match="unknown class name"):
        pipe(["not a class"], num_inference_steps=1)
    with pytest.raises(ValueError, match="output_type"):
        pipe([0], num_inference_steps=1, output_type="jpeg")


def test_pipeline_round_trip_identical(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "VTPPipeline"
    assert index["vae"] == ["vtp_gen.interop.diffusers.autoencoder", "AutoencoderVTP"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    for part in ("vae", "transformer"):
        assert (tmp_path / part / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(tmp_path.rglob("*.bin"))

    loaded = VTPPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.id2label == CLASS_NAMES
    assert loaded.config.default_num_inference_steps == 4
    assert loaded.scheduler.config.shift == pytest.approx(1 / 0.3)
    for a, b in zip(pipe.transformer.state_dict().values(), loaded.transformer.state_dict().values()):
        assert torch.equal(a, b)
    before = pipe([4, 5], generator=seeded(3), output_type="pt").images
    after = loaded([4, 5], generator=seeded(3), output_type="pt").images
    assert torch.equal(before, after)


def test_pipeline_sampling_from_recipe():
    recipe = {"method": "euler", "steps": 250, "shift": 0.075, "cfg_scale": 1.0, "guidance_mode": "reference"}
    assert pipeline_sampling(recipe) == {
        "shift": 0.075,
        "guidance_scale": 1.0,
        "guidance_interval_start": 0.0,
        "guidance_mode": "reference",
        "num_inference_steps": 249,
    }
    with pytest.warns(UserWarning, match="Euler"):
        pipeline_sampling({"method": "heun", "steps": 50})
