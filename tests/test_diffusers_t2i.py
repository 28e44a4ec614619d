"""diffusers text-to-image export: VTPTextPipeline, VTPTextEncoder, TextDiTTransformer2DModel, export_cli --t2i.

The round trip is through disk: the pipeline is saved, loaded back with
``from_pretrained`` (no network), and must sample what our own text sampler
(``sample_text``, Euler on the same grid) samples, with caption features equal
to ``CaptionEncoder``'s.
"""

import inspect
import json
import socket
import warnings

import pytest
import torch

import vtp_gen
from vtp_gen.data.images import load_png
from vtp_gen.data.transforms import denormalize
from vtp_gen.interop.diffusers import (
    TextDiTTransformer2DModel,
    VTPTextEncoder,
    VTPTextPipeline,
    build_text_pipeline,
)
from vtp_gen.interop.diffusers.text_encoder import VOCABULARY_FILE
from vtp_gen.interop.export_cli import EXPORT_INFO_FILE, export_run, main
from vtp_gen.interop.generators import save_generator
from vtp_gen.latents.dataset import LatentStats
from vtp_gen.models.generators.text_dit import TextLightningDiT
from vtp_gen.t2i.guidance import sample_text
from vtp_gen.t2i.text_features import CaptionEncoder

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: threads only contend on a busy CPU

PROMPTS = ["a coat", "a red sneaker with white laces", ""]
STEPS, SHIFT = 4, 0.3  # 4 Euler steps of the pipeline = our Euler sampler with steps=5


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere: zero-initialised outputs (adaLN, cross-attention) would hide the caption."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model.eval()


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def models():
    """vtp-tiny (32 px -> 16x8x8 latents, 64-wide text tower) and a 2-block TextDiT-T/1 reading that tower."""
    torch.manual_seed(0)
    tokenizer = perturbed(vtp_gen.create_model("vtp-tiny"), 1)
    generator = perturbed(vtp_gen.create_model("TextDiT-T/1", depth=2, hidden_size=32, num_heads=2), 2)
    stats = LatentStats(0.1 * torch.randn(1, 16, 1, 1), 0.05 + 0.2 * torch.rand(1, 16, 1, 1), 0.8)
    return tokenizer, generator, stats


@pytest.fixture(scope="module")
def saved(models, tmp_path_factory):
    """The pipeline written to disk and loaded back from there."""
    tokenizer, generator, stats = models
    folder = tmp_path_factory.mktemp("t2i_pipeline")
    pipe = build_text_pipeline(
        tokenizer,
        generator,
        stats,
        shift=SHIFT,
        num_inference_steps=STEPS,
        guidance_scale=2.5,
        guidance_interval_start=0.3,
    )
    pipe.save_pretrained(folder)
    loaded = VTPTextPipeline.from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    return folder, loaded


def test_text_transformer_arguments_are_the_generators():
    ours = inspect.signature(TextDiTTransformer2DModel.__init__).parameters
    theirs = inspect.signature(TextLightningDiT.__init__).parameters
    assert [(p.name, p.default) for p in ours.values()] == [(p.name, p.default) for p in theirs.values()]


def test_saved_folder_holds_every_part_as_safetensors(saved):
    folder, loaded = saved
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "VTPTextPipeline"
    assert index["text_encoder"] == ["vtp_gen.interop.diffusers.text_encoder", "VTPTextEncoder"]
    assert index["transformer"] == ["vtp_gen.interop.diffusers.transformer", "TextDiTTransformer2DModel"]
    for part in ("vae", "transformer", "text_encoder"):
        assert (folder / part / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))
    # The BPE vocabulary travels with the tower and is the one the loaded encoder reads.
    assert loaded.text_encoder.bpe.bpe_path == folder / "text_encoder" / VOCABULARY_FILE
    assert loaded.config.default_num_inference_steps == STEPS
    assert loaded.scheduler.config.shift == pytest.approx(1 / SHIFT)


def test_saved_text_encoder_gives_the_caption_encoders_features(models, saved):
    tokenizer = models[0]
    folder, loaded = saved
    reloaded = VTPTextEncoder.from_pretrained(folder / "text_encoder")
    expected = CaptionEncoder.from_tokenizer(tokenizer)(PROMPTS)
    for encoder in (loaded.text_encoder, reloaded):
        features = encoder.encode_prompt(PROMPTS)
        assert torch.equal(features.last_hidden_state, expected.tokens)
        assert torch.equal(features.attention_mask, expected.mask)
        assert torch.equal(features.pooled_output, expected.pooled)
    # Not vacuous: the prompts give different features, and "" is the two-token null caption.
    assert (expected.pooled[0] - expected.pooled[2]).abs().max() > 1e-3
    assert expected.mask[2].sum() == 2


@pytest.mark.parametrize(
    ("scale", "start"), [(2.5, 0.3), (4.0, 0.0), (1.0, 0.0)], ids=["cfg2.5_interval0.3", "cfg4", "nocfg"]
)
def test_pipeline_from_disk_samples_like_sample_text(models, saved, scale, start):
    tokenizer, generator, stats = models
    _, loaded = saved
    kwargs = dict(guidance_scale=scale, guidance_interval_start=start)
    latents = loaded(PROMPTS, generator=seeded(7), output_type="latent", **kwargs).images
    pixels = loaded(PROMPTS, generator=seeded(7), output_type="pt", **kwargs).images

    encoder = CaptionEncoder.from_tokenizer(tokenizer)
    noise = torch.randn(3, 16, 8, 8, generator=seeded(7))
    direct = sample_text(
        generator,
        noise,
        encoder(PROMPTS),
        encoder.null(),
        method="euler",
        steps=STEPS + 1,
        shift=SHIFT,
        cfg_scale=scale,
        cfg_interval_start=start,
    )
    with torch.no_grad():
        expected = denormalize(tokenizer.get_latents_decoded_images(stats.denormalize(direct))).clamp(0, 1)
    assert (latents - direct).abs().max().item() <= 1e-5 * max(1.0, direct.abs().max().item())
    assert (pixels - expected).abs().max().item() <= 1e-5
    # Not vacuous: the samples move away from the noise and differ per prompt.
    assert (direct - noise).abs().max() > 1e-2
    assert (direct[0] - direct[1]).abs().max() > 1e-2


def test_negative_prompt_and_images_per_prompt(saved):
    _, loaded = saved

    def latents(prompts, **kwargs):
        return loaded(prompts, generator=seeded(3), output_type="latent", **kwargs).images

    default = latents(["a coat", "a bag"])
    # The null condition is the empty caption: saying so changes nothing; another negative does.
    assert torch.allclose(latents(["a coat", "a bag"], negative_prompt=""), default, atol=1e-6)
    assert (latents(["a coat", "a bag"], negative_prompt="a bag") - default).abs().max() > 1e-3
    # Images per prompt are prompt-major: the same as listing each prompt twice.
    twice = latents(["a coat", "a bag"], num_images_per_prompt=2)
    assert torch.allclose(twice, latents(["a coat", "a coat", "a bag", "a bag"]), atol=1e-6)
    with pytest.raises(ValueError, match="negative prompts"):
        latents(["a coat", "a bag"], negative_prompt=["x"])


def test_pipeline_loads_and_samples_without_network(saved, monkeypatch):
    folder, _ = saved

    def refuse(*args, **kwargs):
        raise OSError("network access during an offline load")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    pipe = VTPTextPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    images = pipe("a coat", num_inference_steps=1, num_images_per_prompt=2, generator=seeded(0)).images
    assert len(images) == 2 and images[0].size == (32, 32)


def test_export_cli_t2i_run(models, tmp_path):
    """runs/<name>/ as text-to-image training leaves it -> a pipeline folder and a captioned grid."""
    tokenizer, generator, stats = models
    run = tmp_path / "runs" / "t2i"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vtp-tiny uses vtp_gen-only options: expected
        vtp_gen.save_pretrained(tokenizer, run / "stage1" / "tokenizer")
    folder = save_generator(generator, run / "t2i" / "generator")
    torch.save({"mean": stats.mean, "std": stats.std}, folder / "latents_stats.pt")
    sampling = {"method": "euler", "steps": 4, "shift": 0.5, "cfg_scale": 3.0, "cfg_interval_start": 0.2}
    info = {
        "step": 8,
        "weights": "ema",
        "latent_multiplier": 0.8,
        "tokenizer": str(run / "stage1" / "tokenizer"),
        "sampling": sampling,
        "conditioning": "text",
    }
    (folder / "stage2.json").write_text(json.dumps(info))
    out, grid = tmp_path / "exported", tmp_path / "grid.png"
    args = ["--run", str(run), "--t2i", "--out", str(out), "--grid", str(grid), "--per-prompt", "2"]
    assert main([*args, "--prompt", "a coat", "--prompt", "a bag"]) == 0

    pipe = VTPTextPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    # The recipe's sampler became the defaults (4 grid points = 3 Euler steps).
    assert pipe.config.default_num_inference_steps == 3 and pipe.config.default_guidance_scale == 3.0
    assert pipe.config.guidance_interval_start == pytest.approx(0.2)
    assert pipe.vae.latent_stats.multiplier == pytest.approx(0.8)
    assert json.loads((out / EXPORT_INFO_FILE).read_text())["pipeline"] == "VTPTextPipeline"

    latents = pipe(["a bag"], generator=seeded(5), output_type="latent").images
    encoder = CaptionEncoder.from_tokenizer(tokenizer)
    noise = torch.randn(1, 16, 8, 8, generator=seeded(5))
    direct = sample_text(
        generator,
        noise,
        encoder(["a bag"]),
        encoder.null(),
        steps=4,
        shift=0.5,
        cfg_scale=3.0,
        cfg_interval_start=0.2,
    )
    assert (latents - direct).abs().max().item() <= 1e-5 * max(1.0, direct.abs().max().item())
    # 2 rows x 2 columns of 32 px tiles with 2 px padding, the prompts written to the left.
    height, width, _ = load_png(grid).shape
    assert height == 2 * 34 + 2 and width > 2 * 34 + 2
    with pytest.raises(SystemExit):  # a text grid without prompts is refused before anything is written
        main(["--run", str(run), "--t2i", "--out", str(tmp_path / "none"), "--grid", str(grid)])
    assert not (tmp_path / "none").exists()
    with pytest.raises(ValueError, match="prompts, not class names"):
        export_run(tmp_path / "other", run, t2i=True, class_names={0: "coat"})
