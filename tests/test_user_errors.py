"""Every user error the reliability issue lists is one line naming the file or key and the remedy.

Each case is the real command (`vtp_gen.pipeline.cli.main`) or the real loader on a real
bad input: a configured path that does not exist (never a silent fall back to
the default data), broken YAML in a data recipe, an unknown model name, a
tokenizer config.json with a wrong-typed field or invalid JSON, a read-only
file system, and a zero-step run.
"""

import errno
import json
import os
import shutil

import pytest
import torch

from vtp_gen.config import DataConfig
from vtp_gen.data.build import build_dataset
from vtp_gen.data.fashion_mnist import find_root
from vtp_gen.interop.vtp import load_tokenizer
from vtp_gen.pipeline.cli import main as cli_main
from vtp_gen.pipeline.cli import write_fault_message

pytestmark = pytest.mark.faults("config and environment")


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_configured_data_root_that_does_not_exist_is_an_error_not_the_default(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("VTP_GEN_FASHION_MNIST", raising=False)
    status = cli_main(["cache", "data.root=/nonexistent/fmnist", f"out_dir={tmp_path / 'cache'}"])
    assert status == 1
    assert "data.root=/nonexistent/fmnist: does not exist" in one_line(capsys)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").glob("*.safetensors"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"data.root=.*empty: lacks train-images-idx3-ubyte.gz"):
        build_dataset(DataConfig(source="fashion_mnist", root=str(tmp_path / "empty")))
    monkeypatch.setenv("VTP_GEN_FASHION_MNIST", "/nonexistent/env")
    with pytest.raises(FileNotFoundError, match="VTP_GEN_FASHION_MNIST=/nonexistent/env: does not exist"):
        find_root()


def test_webdataset_shards_that_do_not_exist_are_named(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"data.shards: 3 of 3 shards do not exist \(first: .*/s000.tar\)"
    ):
        build_dataset(DataConfig(source="webdataset", shards=str(tmp_path / "s{000..002}.tar")))


def test_broken_yaml_in_a_data_recipe_names_the_file_and_line(tmp_path, capsys):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("source: image_folder\nroot: [unclosed\n")
    assert cli_main(["stage2", "--data", str(recipe), "--print-config"]) == 2
    err = one_line(capsys)
    assert f"config error: {recipe}: not valid YAML at line" in err


def test_unknown_model_name_lists_the_valid_ones(tmp_path, capsys):
    status = cli_main(["stage2", "model.name=LightningDiT-Q/1", f"run.out_dir={tmp_path}"])
    assert status == 1
    err = one_line(capsys)
    assert "model.name: unknown model 'LightningDiT-Q/1'; did you mean 'LightningDiT-T/1'" in err
    assert "known: DiT-B/2" in err
    assert not (tmp_path / "default").exists()  # refused before caching or making the run folder


def test_tokenizer_config_json_errors_name_the_file_and_key(reference_dir, tmp_path, capsys):
    folder = shutil.copytree(reference_dir / "vtp_tiny_default", tmp_path / "tokenizer")
    config = folder / "config.json"
    values = json.loads(config.read_text())
    values["decoder_embed_dim"] = str(values["decoder_embed_dim"])
    config.write_text(json.dumps(values))
    with pytest.raises(ValueError, match=rf"{config}: 'decoder_embed_dim' must be int, got '\d+'"):
        load_tokenizer(folder)
    config.write_text('{"decoder_embed_dim": 64,')
    with pytest.raises(ValueError, match=rf"{config}: not valid JSON \("):
        load_tokenizer(folder)
    images = tmp_path / "images" / "a"
    images.mkdir(parents=True)
    status = cli_main(
        [
            "cache",
            f"tokenizer={folder}",
            f"out_dir={tmp_path / 'cache'}",
            "data.max_samples=8",
            "accelerator=cpu",
            "progress_bar=false",
        ]
    )
    assert status == 1 and f"{config}: not valid JSON" in one_line(capsys)


def test_a_read_only_file_system_is_not_told_to_free_space():
    message = write_fault_message(OSError(errno.EROFS, "Read-only file system", "/ro/runs/x/last.ckpt"))
    assert "free some space" not in message and "read-only: remount it writable" in message
    assert "free some space" in write_fault_message(OSError(errno.ENOSPC, "No space left on device", "f"))


def test_zero_steps_are_refused(capsys):
    assert cli_main(["stage2", "trainer.max_steps=0", "--print-config"]) == 2
    assert "'trainer.max_steps': 0 (must be >= 1)" in one_line(capsys)
    assert cli_main(["stage1", "trainer.max_steps=0", "--print-config"]) == 2


def test_a_checkpoint_of_another_model_size_is_passed_over_then_refused(tmp_path):
    from vtp_gen.config import ConfigError
    from vtp_gen.systems.resume import state_dict_mismatch
    from vtp_gen.systems.trainer import AtomicCheckpointIO, find_resume_checkpoint

    model = torch.nn.Linear(4, 2)
    folder = tmp_path / "checkpoints"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 4, "state_dict": model.state_dict()}, folder / "step00000004.ckpt")
    os.utime(folder / "step00000004.ckpt", (0, 0))
    wider = torch.nn.Linear(4, 8).state_dict()
    io.save_checkpoint({"global_step": 8, "state_dict": wider}, folder / "last.ckpt")
    with pytest.warns(
        UserWarning, match=r"last.ckpt does not fit this model \(weight is \(8, 4\) there, \(2, 4\)"
    ):
        assert (
            find_resume_checkpoint(folder, state_dict_mismatch(model.state_dict()))
            == folder / "step00000004.ckpt"
        )
    (folder / "step00000004.ckpt").unlink()
    with pytest.raises(ConfigError, match="no checkpoint in .* fits this model .*cannot change on a resume"):
        find_resume_checkpoint(folder, state_dict_mismatch(model.state_dict()))
