"""Tokenizer reconstruction metrics over a dataset: rFID, PSNR (0-255), SSIM, LPIPS (VGG).

All metrics are computed from the 8-bit images, as if both sides had been
saved to PNG and read back (that is what rFID sees, and it keeps PSNR / SSIM /
LPIPS on exactly the same pixels). Per image:

* PSNR = 10 log10(255^2 / MSE) over all pixels and channels, then averaged
  over images (identical images give +inf, which is reported as such);
* SSIM: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03 on RGB
  (torchmetrics, as the VTP reconstruction script uses);
* L1: mean absolute error of the pixels scaled to [0, 1];
* LPIPS: VGG v0.1 with inputs mapped to [-1, 1];
* rFID: FID between the Inception pool3 features of originals and reconstructions.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from vtp_gen.metrics.features import extract_features, network_device
from vtp_gen.metrics.generation import fid_from_features
from vtp_gen.metrics.images import as_uint8_nchw


def psnr(original: torch.Tensor, reconstruction: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """Per-image PSNR in dB (N,) for images in [0, data_range] (uint8 or float)."""
    diff = original.double() - reconstruction.double()
    mse = diff.pow(2).flatten(1).mean(dim=1)
    return (10.0 * torch.log10(data_range**2 / mse)).float()


def ssim(original: torch.Tensor, reconstruction: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """Per-image SSIM (N,) for (N, C, H, W) images in [0, data_range]."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(
        reconstruction.double(), original.double(), data_range=data_range, reduction="none"
    ).float()


class ReconstructionMetrics:
    """Accumulates reconstruction metrics batch by batch; :meth:`compute` returns the dataset averages.

    ``lpips`` is a module taking two [-1, 1] image batches and returning
    per-image distances (:func:`vtp_gen.pretrained.lpips.build_lpips_vgg`);
    ``inception`` maps uint8 images to pool3 features
    (:func:`vtp_gen.pretrained.inception.build_fid_inception`). Either may be
    None to skip that metric (e.g. LPIPS only during training).

    ``reference_features``: the ``inception`` features of the originals, row i
    for the i-th image added, when the caller has them already (``make eval``
    reuses the FID reference of the same images); the originals then do not go
    through the network again and rFID compares with the first ``num_images`` rows.
    """

    def __init__(
        self,
        lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        inception: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: str | torch.device | None = None,
        reference_features: np.ndarray | None = None,
    ):
        self.lpips = lpips
        self.inception = inception
        self.device = torch.device(device) if device is not None else None
        self.reference_features = reference_features
        self.reset()

    def reset(self) -> None:
        self._psnr: list[torch.Tensor] = []
        self._ssim: list[torch.Tensor] = []
        self._l1: list[torch.Tensor] = []
        self._lpips: list[torch.Tensor] = []
        self._features_original: list[np.ndarray] = []
        self._features_reconstruction: list[np.ndarray] = []

    def _device_for(self, network) -> torch.device:
        return self.device if self.device is not None else network_device(network)

    def _features(self, images: torch.Tensor) -> np.ndarray:
        return extract_features(
            images, self.inception, device=self._device_for(self.inception), progress=False
        )

    @torch.no_grad()
    def update(self, originals, reconstructions) -> None:
        """uint8 (N, 3, H, W) tensors (or (N, H, W, 3) numpy arrays) of the same images and their reconstructions."""
        original = as_uint8_nchw(originals, "originals")
        reconstruction = as_uint8_nchw(reconstructions, "reconstructions")
        if original.shape != reconstruction.shape:
            raise ValueError(f"shapes differ: {tuple(original.shape)} vs {tuple(reconstruction.shape)}")
        self._psnr.append(psnr(original, reconstruction).cpu())
        self._ssim.append(ssim(original, reconstruction).cpu())
        self._l1.append((original.float() - reconstruction.float()).abs().div(255).mean(dim=(1, 2, 3)).cpu())
        if self.lpips is not None:
            device = self._device_for(self.lpips)
            to_unit = lambda x: x.to(device).float() / 127.5 - 1.0  # noqa: E731
            self._lpips.append(self.lpips(to_unit(original), to_unit(reconstruction)).flatten().float().cpu())
        if self.inception is not None:
            self._features_reconstruction.append(self._features(reconstruction))
            if self.reference_features is None:
                self._features_original.append(self._features(original))

    @property
    def num_images(self) -> int:
        return int(sum(len(x) for x in self._psnr))

    def per_image(self) -> dict[str, torch.Tensor]:
        """Per-image values so far (for distributions or for gathering across ranks)."""
        values = {"psnr": torch.cat(self._psnr), "ssim": torch.cat(self._ssim), "l1": torch.cat(self._l1)}
        if self._lpips:
            values["lpips"] = torch.cat(self._lpips)
        return values

    def compute(self) -> dict[str, float | int]:
        if not self._psnr:
            raise ValueError("no images were added")
        values = self.per_image()
        result: dict[str, float | int] = {"num_images": self.num_images}
        for name, tensor in values.items():
            result[name] = float(tensor.double().mean())
        if self.inception is not None:
            if self.num_images < 2:
                raise ValueError("rFID needs at least 2 images")
            if self.reference_features is not None:
                if len(self.reference_features) < self.num_images:
                    raise ValueError(
                        f"reference_features has {len(self.reference_features)} rows for {self.num_images} images"
                    )
                original = self.reference_features[: self.num_images]
            else:
                original = np.concatenate(self._features_original)
            result["rfid"] = fid_from_features(original, np.concatenate(self._features_reconstruction))
        return result
