"""A pickle that would run code, offered to every loader that reads a file a user may have downloaded.

The payload's ``__reduce__`` calls ``os.system("touch <marker>")``: each loader must refuse the file
and the marker must never appear.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from vtp_gen.interop.adm_npz import load_adm_npz
from vtp_gen.interop.generators import load_generator
from vtp_gen.latents.dataset import STATS_FILE, LatentStats
from vtp_gen.pretrained.safe_unpickle import RefusedPickleError
from vtp_gen.systems.trainer import AtomicCheckpointIO, find_resume_checkpoint

pytestmark = pytest.mark.faults("untrusted files")


def assert_no_unsafe_advice(error: Exception) -> None:
    """One line naming what was refused, never PyTorch's advice to load with weights_only=False."""
    message = str(error)
    assert "weights_only" not in message and "\n" not in message, message
    assert "unsupported GLOBAL posix.system" in message  # what the file asked for


class RunsShell:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def payload(tmp_path):
    marker = tmp_path / "payload_ran"

    def write(path, wrap=lambda obj: obj):
        torch.save(wrap(RunsShell(marker)), path)
        return path

    yield write
    assert not marker.exists(), "a pickle payload was executed"


def test_resume_skips_a_poisoned_last_checkpoint_for_the_previous_good_one(tmp_path, payload):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    good = folder / "step00000004.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 4, "state_dict": {"w": torch.ones(2)}}, good)
    payload(folder / "last.ckpt", wrap=lambda obj: {"global_step": 8, "state_dict": obj})
    os.utime(good, (0, 0))  # older than last.ckpt, as in a real run
    with pytest.warns(UserWarning, match="last.ckpt is truncated or corrupt"):
        assert find_resume_checkpoint(folder) == good
    with pytest.raises(RefusedPickleError, match="last.ckpt: refused to load") as refused:
        AtomicCheckpointIO().load_checkpoint(folder / "last.ckpt")
    assert_no_unsafe_advice(refused.value)


def test_generator_pt_file_is_refused(tmp_path, payload):
    path = payload(tmp_path / "generator.pt", wrap=lambda obj: {"model": obj})
    with pytest.raises(RefusedPickleError, match="generator.pt: refused to load") as refused:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_generator(path)
    assert_no_unsafe_advice(refused.value)


def test_latent_statistics_file_is_refused(tmp_path, payload):
    payload(tmp_path / STATS_FILE, wrap=lambda obj: {"mean": obj, "std": obj})
    with pytest.raises(RefusedPickleError, match=f"{STATS_FILE}: refused to load") as refused:
        LatentStats.load(tmp_path)
    assert_no_unsafe_advice(refused.value)


def test_npz_with_an_object_array_is_refused(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "samples.npz"
    np.savez(path, arr_0=np.array([RunsShell(marker)], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_adm_npz(path)
    assert not marker.exists()
