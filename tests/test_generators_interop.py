"""load_generator / save_generator: our folder format, bare safetensors and reference .pt checkpoints."""

import argparse
import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from vtp_gen import load_generator
from vtp_gen.interop.generators import infer_config_from_state_dict, save_generator
from vtp_gen.models.generators import LightningDiT

MODERN = dict(
    input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, num_classes=10,
    use_swiglu=True, use_rope=True, use_rmsnorm=True, use_qknorm=True,
)  # fmt: skip
PLAIN_DIT = dict(
    input_size=8, patch_size=2, in_channels=4, hidden_size=384, depth=1, num_heads=6, num_classes=10,
    learn_sigma=True,
)  # fmt: skip


def _random(model):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


def _same_outputs(a, b):
    x, t, y = torch.randn(2, a.in_channels, a.input_size, a.input_size), torch.rand(2), torch.tensor([1, 10])
    with torch.no_grad():
        torch.testing.assert_close(a(x, t, y), b(x, t, y), rtol=0, atol=0)


def test_folder_roundtrip(tmp_path):
    model = _random(LightningDiT(**MODERN))
    save_generator(model, tmp_path / "gen")
    assert json.loads((tmp_path / "gen" / "config.json").read_text())["use_qknorm"] is True
    loaded = load_generator(tmp_path / "gen")
    assert not loaded.training
    _same_outputs(model, loaded)


def test_bare_safetensors_infers_the_architecture(tmp_path):
    model = _random(LightningDiT(**MODERN, wo_shift=True))
    save_file(model.state_dict(), tmp_path / "weights.safetensors")
    inferred = infer_config_from_state_dict(model.state_dict())
    for key in (
        "input_size",
        "patch_size",
        "in_channels",
        "hidden_size",
        "depth",
        "num_heads",
        "num_classes",
    ):
        assert inferred[key] == model.config[key], key
    assert inferred["wo_shift"] and inferred["use_qknorm"] and not inferred["learn_sigma"]
    _same_outputs(model, load_generator(tmp_path / "weights.safetensors"))


def test_lightningdit_training_checkpoint_prefers_ema(tmp_path):
    model, ema = _random(LightningDiT(**MODERN)), _random(LightningDiT(**MODERN))
    optimizer = torch.optim.AdamW(model.parameters())
    checkpoint = {
        # DDP prefixes, as train.py saves model.module... but users re-save wrapped models too.
        "model": {f"module.{k}": v for k, v in model.state_dict().items()},
        "ema": ema.state_dict(),
        "opt": optimizer.state_dict(),
        "config": {
            "model": {"model_type": "LightningDiT-XL/1", "use_swiglu": True},
            "train": {"max_steps": 10},
        },
    }
    torch.save(checkpoint, tmp_path / "0000010.pt")
    _same_outputs(ema, load_generator(tmp_path / "0000010.pt"))
    _same_outputs(model, load_generator(tmp_path / "0000010.pt", use_ema=False))


def test_dit_checkpoint_with_argparse_args_keeps_variance_outputs(tmp_path):
    model = _random(LightningDiT(**PLAIN_DIT, return_sigma=True))
    args = argparse.Namespace(model="DiT-XL/2", num_classes=10, image_size=64)
    torch.save({"model": model.state_dict(), "ema": model.state_dict(), "args": args}, tmp_path / "dit.pt")
    loaded = load_generator(tmp_path / "dit.pt")
    assert loaded.out_channels == 8 and loaded.config["num_heads"] == 6
    _same_outputs(model, loaded)
    # The same weights as SiT drop the variance channels.
    args.model = "SiT-XL/2"
    torch.save({"model": model.state_dict(), "args": args}, tmp_path / "sit.pt")
    assert load_generator(tmp_path / "sit.pt").out_channels == 4
    # A bare state dict (released weights) with plain blocks is read as DiT unless told otherwise.
    torch.save(model.state_dict(), tmp_path / "released.pt")
    assert load_generator(tmp_path / "released.pt").out_channels == 8
    assert load_generator(tmp_path / "released.pt", architecture="SiT").out_channels == 4


class _Exploit:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_refused(tmp_path):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"model": _Exploit()}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError) as refused:
        load_generator(tmp_path / "evil.pt")
    # One line naming the file, and never PyTorch's advice to turn the check off.
    message = str(refused.value)
    assert "evil.pt" in message and "\n" not in message and "weights_only" not in message


def test_unknown_heads_and_keys_are_reported(tmp_path):
    model = LightningDiT(**{**PLAIN_DIT, "hidden_size": 96, "num_heads": 2})
    save_file(model.state_dict(), tmp_path / "odd.safetensors")
    with pytest.raises(ValueError, match="num_heads"):
        load_generator(tmp_path / "odd.safetensors")
    assert load_generator(tmp_path / "odd.safetensors", num_heads=2).config["num_heads"] == 2
    save_generator(model, tmp_path / "folder")
    config = json.loads((tmp_path / "folder" / "config.json").read_text())
    (tmp_path / "folder" / "config.json").write_text(json.dumps({**config, "hiden_size": 3}))
    with pytest.raises(ValueError, match="hiden_size"):
        load_generator(tmp_path / "folder")
