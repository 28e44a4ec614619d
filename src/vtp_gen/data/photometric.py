"""DINOv2's colour augmentation on a whole batch of crops, each crop with its own random draw.

Per crop this is torchvision's v2 pipeline

    RandomApply([ColorJitter(brightness, contrast, saturation, hue)], p=jitter_p)
    RandomGrayscale(p=grayscale_p)
    RandomApply([GaussianBlur(kernel, sigma range)], p=blur_p)
    RandomSolarize(threshold, p=solarize_p)
    ToDtype(float32, scale=True), Normalize(mean, std)

with the same parameter distributions (factors uniform in their ranges, the four
jitter operations in a random order per crop, sigma uniform) and the same
arithmetic on uint8 pixels: given the same draw, every crop equals torchvision's
output bit for bit (tests/test_photometric.py).

Why not torchvision's transforms themselves: they draw one set of parameters
per call, so a batch would share one colour draw, and calling them crop by
crop costs ~1.3 ms of Python and tiny-tensor overhead per crop. At the
embedded recipe's 48 crops per step that was ~30 % of a stage-1 training step
on two CPU cores (py-spy); here the work is a few batched operations per kind
of crop. Geometry (random resized crops, flips) stays per image in
:mod:`vtp_gen.data.multicrop`: the crop boxes differ in size before resizing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


@dataclass(frozen=True)
class PhotometricDraw:
    """The random choices for N crops (all tensors have N rows)."""

    jitter: Tensor  # (N,) bool: colour jitter applied
    order: Tensor  # (N, 4) long: the jitter operations in the order applied
    factors: Tensor  # (N, 4) float32: brightness, contrast, saturation, hue factors
    grayscale: Tensor  # (N,) bool
    blur: Tensor  # (N,) bool
    sigma: Tensor  # (N,) float32
    solarize: Tensor  # (N,) bool


class BatchedPhotometric:
    """``aug(crops)``: uint8 (N, 3, H, W) -> normalised float32 (N, 3, H, W), one draw per crop."""

    def __init__(
        self,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        jitter_p: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.2,
        hue: float = 0.1,
        grayscale_p: float = 0.2,
        blur_p: float = 0.0,
        blur_kernel_size: int = 9,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        solarize_p: float = 0.0,
        solarize_threshold: float = 128.0,
    ) -> None:
        if blur_kernel_size % 2 == 0:
            raise ValueError(f"blur kernel size must be odd, got {blur_kernel_size}")
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"hue jitter must be in [0, 0.5], got {hue}")
        self.mean, self.std = list(mean), list(std)
        self.jitter_p = jitter_p
        self.grayscale_p = grayscale_p
        self.blur_p = blur_p
        self.solarize_p = solarize_p
        # The factor ranges exactly as ColorJitter builds them.
        self.ranges = (
            (max(0.0, 1 - brightness), 1 + brightness),
            (max(0.0, 1 - contrast), 1 + contrast),
            (max(0.0, 1 - saturation), 1 + saturation),
            (-hue, hue),
        )
        self.blur_kernel_size = blur_kernel_size
        self.blur_sigma = tuple(blur_sigma)
        self.solarize_threshold = solarize_threshold

    def sample(self, n: int, generator: torch.Generator | None = None) -> PhotometricDraw:
        def coin(p: float) -> Tensor:
            return torch.rand(n, generator=generator) < p

        def uniform(low: float, high: float) -> Tensor:
            return torch.empty(n).uniform_(low, high, generator=generator)

        return PhotometricDraw(
            jitter=coin(self.jitter_p),
            order=torch.rand(n, 4, generator=generator).argsort(dim=1),
            factors=torch.stack([uniform(low, high) for low, high in self.ranges], dim=1),
            grayscale=coin(self.grayscale_p),
            blur=coin(self.blur_p),
            sigma=uniform(*self.blur_sigma),
            solarize=coin(self.solarize_p),
        )

    def __call__(self, crops: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.apply(crops, self.sample(crops.shape[0], generator))

    def apply(self, crops: Tensor, draw: PhotometricDraw) -> Tensor:
        pixels = self.augment_pixels(crops, draw)
        return TF.normalize(TF.to_dtype(pixels, torch.float32, scale=True), self.mean, self.std)

    def augment_pixels(self, crops: Tensor, draw: PhotometricDraw) -> Tensor:
        """The colour operations alone: uint8 in, uint8 out (what the tests compare with torchvision)."""
        if crops.dtype != torch.uint8 or crops.ndim != 4 or crops.shape[1] != 3:
            raise ValueError(f"expected uint8 crops (N, 3, H, W), got {crops.dtype} {tuple(crops.shape)}")
        pixels = crops.clone()
        for position in range(4):
            for operation in range(4):
                rows = _rows(draw.jitter & (draw.order[:, position] == operation))
                if rows is not None:
                    factor = draw.factors[rows, operation]
                    pixels[rows] = JITTER_OPERATIONS[operation](pixels[rows], factor)
        if (rows := _rows(draw.grayscale)) is not None:
            pixels[rows] = TF.rgb_to_grayscale(pixels[rows], num_output_channels=3)
        if (rows := _rows(draw.blur)) is not None:
            pixels[rows] = gaussian_blur(pixels[rows], self.blur_kernel_size, draw.sigma[rows])
        if (rows := _rows(draw.solarize)) is not None:
            pixels[rows] = TF.solarize(pixels[rows], self.solarize_threshold)
        return pixels


def _rows(mask: Tensor) -> Tensor | None:
    rows = mask.nonzero().flatten()
    return rows if rows.numel() else None


def _per_crop(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


def _blend(pixels: Tensor, other: Tensor, ratio: Tensor) -> Tensor:
    """torchvision's ``_blend`` for uint8 pixels with one ratio per crop (truncates like it)."""
    ratio = _per_crop(ratio)
    # addcmul, not a separate product and sum: it rounds like torchvision's add_(other, alpha=1 - ratio).
    return torch.addcmul(pixels * ratio, other, 1.0 - ratio).clamp_(0, 255).to(torch.uint8)


def _luma(pixels: Tensor) -> Tensor:
    """(N, 1, H, W) float32 ITU-R 601 luma, floored, in torchvision's operation order."""
    r, g, b = pixels.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3).floor_()


def adjust_brightness(pixels: Tensor, factor: Tensor) -> Tensor:
    return (pixels * _per_crop(factor)).clamp_(0, 255).to(torch.uint8)


def adjust_contrast(pixels: Tensor, factor: Tensor) -> Tensor:
    return _blend(pixels, _luma(pixels).mean(dim=(-3, -2, -1), keepdim=True), factor)


def adjust_saturation(pixels: Tensor, factor: Tensor) -> Tensor:
    return _blend(pixels, _luma(pixels), factor)


def adjust_hue(pixels: Tensor, factor: Tensor) -> Tensor:
    """Rotate the hue by ``factor`` turns: RGB -> HSV (Pillow's formulas, as torchvision), shift, back."""
    rgb = TF.to_dtype(pixels, torch.float32, scale=True)
    hue, saturation, value = _rgb_to_hsv(rgb)
    hue = hue.add_(factor.view(-1, 1, 1)).remainder_(1.0)
    return TF.to_dtype(_hsv_to_rgb(hue, saturation, value), torch.uint8, scale=True)


JITTER_OPERATIONS = {
    BRIGHTNESS: adjust_brightness,
    CONTRAST: adjust_contrast,
    SATURATION: adjust_saturation,
    HUE: adjust_hue,
}


def _rgb_to_hsv(rgb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r, g, b = rgb.unbind(dim=-3)
    low, high = torch.aminmax(rgb, dim=-3)
    grey = high == low  # hue and saturation are 0 there; keep the divisions finite
    spread = high - low
    saturation = spread / torch.where(grey, torch.ones_like(high), high)
    divisor = torch.where(grey, torch.ones_like(spread), spread)
    rc, gc, bc = ((high.unsqueeze(-3) - rgb) / divisor.unsqueeze(-3)).unbind(dim=-3)
    red_is_max = high == r
    green_is_max = (high == g) & ~red_is_max
    blue_is_max = ~red_is_max & ~green_is_max
    hue = (bc - gc) * red_is_max + (rc + 2.0 - bc) * green_is_max + (gc + 4.0 - rc) * blue_is_max
    hue = (hue * (1.0 / 6.0) + 1.0).fmod_(1.0)
    return hue, saturation, high


def _hsv_to_rgb(hue: Tensor, saturation: Tensor, value: Tensor) -> Tensor:
    sector_float = torch.floor(hue * 6.0)
    fraction = hue * 6.0 - sector_float
    sector = sector_float.to(torch.int64).remainder_(6)
    p = ((1.0 - saturation) * value).clamp_(0.0, 1.0)
    q = ((1.0 - saturation * fraction) * value).clamp_(0.0, 1.0)
    t = ((saturation * fraction + (1.0 - saturation)) * value).clamp_(0.0, 1.0)
    candidates = torch.stack((value, p, q, t), dim=-3)  # indexed 0..3 below
    # Per sector (0..5), which candidate is R, G and B.
    table = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], device=hue.device)
    select = table[:, sector].movedim(0, -3)
    return candidates.gather(-3, select)


def gaussian_blur(pixels: Tensor, kernel_size: int, sigma: Tensor) -> Tensor:
    """torchvision's Gaussian blur (reflect padding, 2-D kernel, rounded) with one sigma per crop."""
    n, channels, height, width = pixels.shape
    half = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    x = torch.linspace(-half, half, steps=kernel_size)
    kernel_1d = torch.softmax((x / sigma.view(-1, 1)).pow(2).neg(), dim=1)  # (N, K)
    kernel_2d = kernel_1d[:, :, None] * kernel_1d[:, None, :]  # (N, K, K)
    weights = kernel_2d.repeat_interleave(channels, dim=0).unsqueeze(1)  # (N * C, 1, K, K)
    pad = kernel_size // 2
    padded = torch.nn.functional.pad(pixels.float(), [pad] * 4, mode="reflect")
    # One grouped convolution: every (crop, channel) plane with its crop's kernel.
    out = torch.nn.functional.conv2d(
        padded.view(1, n * channels, *padded.shape[-2:]), weights, groups=n * channels
    )
    return out.view(n, channels, height, width).round_().to(torch.uint8)
