"""Official-layout save/load: exact round trips, official config keys and tensor names, clear errors."""

import json
import pickle
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import vtp_gen
from vtp_gen.interop.vtp import UnsafeCheckpointError, load_tokenizer, save_pretrained
from vtp_gen.models.tokenizer import CheckpointMismatchError, VTPModel, preset_config

# A fresh model small enough to build in well under a second, in the official f16 layout
# and with the depths of the vtp_tiny fixtures (so the tensor names coincide).
SMALL_F16 = dict(
    image_size=32,
    vision_embed_dim=32,
    vision_depth=3,
    vision_num_heads=2,
    vision_feature_bottleneck=8,
    decoder_embed_dim=32,
    decoder_depth=2,
    decoder_num_heads=2,
    text_embed_dim=32,
    text_depth=2,
    text_num_heads=2,
    text_context_length=16,
    text_vocab_size=500,
)


def tensor_names_and_dtypes(path):
    with safe_open(str(path), framework="pt") as f:
        return {
            name: (f.get_slice(name).get_dtype(), tuple(f.get_slice(name).get_shape())) for name in f.keys()
        }


def test_round_trip_of_an_official_checkpoint_is_exact(reference_dir, tmp_path):
    source = reference_dir / "vtp_tiny_ls_qknorm"
    model = load_tokenizer(source)
    save_pretrained(model, tmp_path)
    # Same config.json content (keys and values) and the same tensors, names and dtypes.
    assert json.loads((tmp_path / "config.json").read_text()) == json.loads(
        (source / "config.json").read_text()
    )
    assert tensor_names_and_dtypes(tmp_path / "model.safetensors") == tensor_names_and_dtypes(
        source / "model.safetensors"
    )
    saved, original = load_file(tmp_path / "model.safetensors"), load_file(source / "model.safetensors")
    assert all(torch.equal(saved[k], original[k]) for k in original)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_fresh_model_save_load_gives_identical_outputs(reference_dir, tmp_path):
    torch.manual_seed(0)
    model = VTPModel(preset_config("vtp-b", **SMALL_F16)).eval()
    save_pretrained(model, tmp_path)
    loaded = load_tokenizer(tmp_path)
    images = torch.randn(2, 3, 32, 32)
    tokens = torch.randint(1, 400, (3, 16))
    with torch.no_grad():
        for method, arg in [
            ("get_reconstruction_latents", images),
            ("get_clip_image_feature", images),
            ("get_clip_text_feature", tokens),
        ]:
            assert torch.equal(getattr(model, method)(arg), getattr(loaded, method)(arg)), method
        latents = model.get_reconstruction_latents(images)
        assert torch.equal(
            model.get_latents_decoded_images(latents), loaded.get_latents_decoded_images(latents)
        )
    # The saved file uses exactly the official key set and tensor naming scheme.
    official_config = json.loads((reference_dir / "vtp_tiny_default" / "config.json").read_text())
    assert set(json.loads((tmp_path / "config.json").read_text())) == set(official_config)
    official_names = set(load_file(reference_dir / "vtp_tiny_default" / "model.safetensors"))
    assert set(load_file(tmp_path / "model.safetensors")) == official_names


def test_loaded_model_is_ready_for_inference(reference_dir):
    model = vtp_gen.load_tokenizer(reference_dir / "vtp_tiny_default")
    assert not model.training
    assert model.text.attn_mask.isneginf().sum() == 77 * 76 // 2  # causal mask rebuilt after meta init
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    # A path to a file inside the folder works too.
    again = vtp_gen.load_tokenizer(reference_dir / "vtp_tiny_default" / "model.safetensors")
    assert torch.equal(again.trunk.cls_token, model.trunk.cls_token)


@pytest.fixture
def fixture_copy(reference_dir, tmp_path):
    folder = tmp_path / "checkpoint"
    shutil.copytree(reference_dir / "vtp_tiny_default", folder)
    for path in folder.iterdir():
        path.chmod(0o644)  # the fixtures are read-only
    return folder


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_shapes_that_do_not_match_the_config_are_a_clear_error(fixture_copy):
    edit_config(fixture_copy, vision_embed_dim=128)
    with pytest.raises(
        CheckpointMismatchError,
        match=r"shape mismatch.*qkv\.weight: checkpoint \(192, 64\) vs config \(384, 128\)",
    ):
        load_tokenizer(fixture_copy)


def test_missing_and_unexpected_tensors_are_named(fixture_copy):
    state = load_file(fixture_copy / "model.safetensors")
    state["trunk.extra_thing"] = state.pop("trunk.norm.weight")
    save_file(state, fixture_copy / "model.safetensors")
    with pytest.raises(
        CheckpointMismatchError, match=r"missing: trunk\.norm\.weight.*unexpected: trunk\.extra_thing"
    ):
        load_tokenizer(fixture_copy)


def test_config_errors_name_the_problem(fixture_copy):
    edit_config(fixture_copy, vision_embed_dims=64)
    with pytest.raises(ValueError, match="did you mean 'vision_embed_dim'"):
        load_tokenizer(fixture_copy)
    edit_config(fixture_copy, model_type="bert")
    config = json.loads((fixture_copy / "config.json").read_text())
    del config["vision_embed_dims"]
    (fixture_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_type is 'bert'"):
        load_tokenizer(fixture_copy)


class _WritesFileWhenUnpickled:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.faults("untrusted files")
@pytest.mark.parametrize("file_name", ["pytorch_model.bin", "model.safetensors"])
def test_pickled_checkpoints_are_refused_without_unpickling(fixture_copy, tmp_path, file_name):
    marker = tmp_path / "unpickled.txt"
    (fixture_copy / "model.safetensors").unlink()
    with open(fixture_copy / file_name, "wb") as f:
        pickle.dump({"trunk.cls_token": _WritesFileWhenUnpickled(marker)}, f)
    with pytest.raises(UnsafeCheckpointError, match="never unpickles"):
        load_tokenizer(fixture_copy)
    # torch.save's zip container is refused the same way.
    torch.save({"x": torch.zeros(1)}, fixture_copy / file_name)
    with pytest.raises(UnsafeCheckpointError):
        load_tokenizer(fixture_copy)
    with pytest.raises(UnsafeCheckpointError):
        load_tokenizer(fixture_copy / file_name)
    assert not marker.exists(), "the pickle was executed"


def test_corrupt_or_missing_files_are_clear_errors(fixture_copy, tmp_path):
    (fixture_copy / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="not a safetensors file|not a valid safetensors"):
        load_tokenizer(fixture_copy)
    (fixture_copy / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_tokenizer(fixture_copy)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "nowhere")


def test_sharded_checkpoints_load(reference_dir, fixture_copy):
    state = load_file(fixture_copy / "model.safetensors")
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard, shard_names in shards.items():
        save_file({n: state[n] for n in shard_names}, fixture_copy / shard, metadata={"format": "pt"})
        weight_map.update({n: shard for n in shard_names})
    (fixture_copy / "model.safetensors").unlink()
    (fixture_copy / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    sharded = load_tokenizer(fixture_copy)
    single = load_tokenizer(reference_dir / "vtp_tiny_default")
    assert all(torch.equal(a, b) for a, b in zip(sharded.state_dict().values(), single.state_dict().values()))


def test_wrong_image_size_is_a_clear_error(reference_dir):
    model = load_tokenizer(reference_dir / "vtp_tiny_default")
    with pytest.raises(ValueError, match="image size 60x64 is not a multiple of the patch size 16"):
        model.get_reconstruction_latents(torch.zeros(1, 3, 60, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.get_clip_image_feature(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"latents of shape \(B, 16, h, w\)"):
        model.get_latents_decoded_images(torch.zeros(1, 64, 4, 4))


def test_vtpgen_only_options_warn_on_save(tmp_path):
    model = VTPModel(preset_config("vtp-tiny", vision_num_register_tokens=2, text_vocab_size=500))
    with pytest.warns(UserWarning, match="loads in vtp_gen only"):
        save_pretrained(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["vision_num_register_tokens"] == 2
    loaded = load_tokenizer(tmp_path)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(
            model.eval().get_reconstruction_latents(images), loaded.get_reconstruction_latents(images)
        )


@pytest.mark.faults("disk faults")
def test_a_full_disk_during_export_leaves_the_previous_export_whole(tmp_path):
    """A real write failure (file-size limit, EFBIG) while re-exporting: the old folder still loads."""
    import subprocess
    import sys

    from vtp_gen import create_model

    folder = tmp_path / "tokenizer"
    with pytest.warns(UserWarning):
        save_pretrained(create_model("vtp-tiny"), folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    script = (
        "import resource, signal, torch, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "from vtp_gen import create_model\n"
        "from vtp_gen.interop.vtp import save_pretrained\n"
        "torch.manual_seed(1)\n"
        "model = create_model('vtp-tiny')\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))\n"
        f"save_pretrained(model, {str(folder)!r})\n"
    )
    # -B: a bytecode cache written under the limit would be cut short and break later imports.
    result = subprocess.run([sys.executable, "-B", "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "File too large" in result.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")} == before
    load_tokenizer(folder)  # still a complete, loadable export
