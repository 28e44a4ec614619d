"""Golden outputs of hustvl/LightningDiT and facebookresearch/DiT: forward, guidance and the ODE sampler."""

import json

import pytest
import torch
from safetensors.torch import load_file

from vtp_gen.interop.generators import load_generator
from vtp_gen.transport import sample

pytestmark = pytest.mark.conformance
TOLERANCE = 1e-4
GENERATOR_FIXTURES = ["lightningdit_tiny", "lightningdit_tiny_qknorm_p2", "dit_tiny"]
# The sampler fixture's guided runs: scale 3 on the reference's 3 channels, only for t >= 0.2.
FIXTURE_GUIDANCE = {"nocfg": {}, "cfg3_interval0.2": dict(cfg_scale=3.0, cfg_interval_start=0.2)}


@pytest.mark.parametrize("name", GENERATOR_FIXTURES)
def test_forward_matches_reference(reference_dir, name):
    folder = reference_dir / name
    model = load_generator(folder)
    golden = load_file(folder / "golden_outputs.safetensors")
    with torch.no_grad():
        out = model(golden["input.x"], golden["input.t"], golden["input.y"])
    assert out.shape == golden["out.forward"].shape
    assert (out - golden["out.forward"]).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("name", GENERATOR_FIXTURES)
def test_forward_with_cfg_matches_reference_mode(reference_dir, name):
    folder = reference_dir / name
    model = load_generator(folder)
    golden = load_file(folder / "golden_outputs.safetensors")
    with torch.no_grad():
        out = model.forward_with_cfg(
            golden["input.cfg_x"],
            golden["input.cfg_t"],
            golden["input.cfg_y"],
            golden["input.cfg_scale"].item(),
            guidance_mode="reference",
        )
    expected = golden["out.forward_with_cfg"]
    assert (out - expected).abs().max().item() <= TOLERANCE
    # The fixture does discriminate the modes: all-channel guidance moves channels >= 3.
    with torch.no_grad():
        all_channels = model.forward_with_cfg(
            golden["input.cfg_x"],
            golden["input.cfg_t"],
            golden["input.cfg_y"],
            golden["input.cfg_scale"].item(),
        )
    assert (all_channels - expected)[:2, 3:].abs().max().item() > 10 * TOLERANCE


def _sampler_cases(reference_dir):
    folder = reference_dir / "lightningdit_tiny"
    settings = json.loads((folder / "sampler_settings.json").read_text())
    golden = load_file(folder / "golden_sampler.safetensors")
    cases = []
    for setting_name, setting in settings.items():
        for guidance_name, guidance in FIXTURE_GUIDANCE.items():
            cases.append((f"out.{setting_name}.{guidance_name}", setting, guidance))
    return folder, golden, cases


def test_sampler_trajectories_match_reference(reference_dir):
    folder, golden, cases = _sampler_cases(reference_dir)
    assert len(cases) == 6 and all(key in golden for key, _, _ in cases)
    model = load_generator(folder)
    for key, setting, guidance in cases:
        out = sample(
            model,
            golden["input.z"],
            golden["input.y"],
            method=setting["sampling_method"],
            steps=setting["num_steps"],
            shift=setting["timestep_shift"],
            guidance_mode="reference",
            **guidance,
        )
        error = (out - golden[key]).abs().max().item()
        assert error <= TOLERANCE, f"{key}: max abs error {error:.2e}"
