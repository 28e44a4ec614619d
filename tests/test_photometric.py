"""The batched colour augmentation against torchvision's transforms, crop by crop, on the same draw."""

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from vtp_gen.data.photometric import BRIGHTNESS, CONTRAST, HUE, SATURATION, BatchedPhotometric
from vtp_gen.data.transforms import IMAGENET_MEAN, IMAGENET_STD

TORCHVISION_JITTER = {
    BRIGHTNESS: TF.adjust_brightness,
    CONTRAST: TF.adjust_contrast,
    SATURATION: TF.adjust_saturation,
    HUE: TF.adjust_hue,
}


def _torchvision_pixels(crop, draw, i, kernel_size=9):
    """What torchvision's v2 pipeline does to crop ``i`` given the draw's parameters for it."""
    if draw.jitter[i]:
        for operation in draw.order[i].tolist():
            crop = TORCHVISION_JITTER[operation](crop, float(draw.factors[i, operation]))
    if draw.grayscale[i]:
        crop = TF.rgb_to_grayscale(crop, num_output_channels=3)
    if draw.blur[i]:
        sigma = float(draw.sigma[i])
        crop = TF.gaussian_blur(crop, [kernel_size, kernel_size], [sigma, sigma])
    if draw.solarize[i]:
        crop = TF.solarize(crop, 128)
    return crop


def _crops(n, size, seed=0):
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, 256, (n // 2, 3, size, size), dtype=torch.uint8, generator=generator)
    coarse = torch.randint(0, 256, (n - n // 2, 3, 4, 4), generator=generator).float()
    smooth = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear").round().to(torch.uint8)
    return torch.cat([noise, smooth])


@pytest.mark.parametrize("size", [32, 16])
def test_every_crop_equals_torchvision_on_its_own_draw(size):
    colour = BatchedPhotometric(IMAGENET_MEAN, IMAGENET_STD, blur_p=0.5, solarize_p=0.3)
    crops = _crops(160, size)
    torch.manual_seed(1)
    draw = colour.sample(len(crops))
    ours = colour.augment_pixels(crops, draw)
    reference = torch.stack([_torchvision_pixels(crops[i], draw, i) for i in range(len(crops))])
    assert torch.equal(ours, reference)
    # Every path was exercised: jitter in several orders, grayscale, blur, solarize, and untouched crops.
    assert draw.jitter.any() and (~draw.jitter).any() and len({tuple(o) for o in draw.order.tolist()}) > 10
    assert draw.grayscale.any() and draw.blur.any() and draw.solarize.any()
    assert not torch.equal(ours, crops)
    normalised = colour.apply(crops, draw)
    torch.testing.assert_close(
        normalised,
        TF.normalize(TF.to_dtype(reference, torch.float32, scale=True), IMAGENET_MEAN, IMAGENET_STD),
    )


def test_draws_follow_the_recipe_distributions():
    colour = BatchedPhotometric(IMAGENET_MEAN, IMAGENET_STD, blur_p=0.1, solarize_p=0.2)
    draw = colour.sample(20000, torch.Generator().manual_seed(0))
    for flags, p in ((draw.jitter, 0.8), (draw.grayscale, 0.2), (draw.blur, 0.1), (draw.solarize, 0.2)):
        assert flags.float().mean().item() == pytest.approx(p, abs=0.015)
    for column, (low, high) in enumerate(((0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1))):
        values = draw.factors[:, column]
        assert low <= values.min() and values.max() <= high
        assert values.mean().item() == pytest.approx((low + high) / 2, abs=0.01)
    assert 0.1 <= draw.sigma.min() and draw.sigma.max() <= 2.0
    # Each row is an order of the four operations, each operation first a quarter of the time.
    assert torch.equal(draw.order.sort(dim=1).values, torch.arange(4).expand(20000, 4))
    firsts = torch.bincount(draw.order[:, 0], minlength=4).float() / 20000
    torch.testing.assert_close(firsts, torch.full((4,), 0.25), atol=0.015, rtol=0)


def test_same_seed_same_crops_and_inputs_are_checked():
    colour = BatchedPhotometric(IMAGENET_MEAN, IMAGENET_STD, blur_p=1.0)
    crops = _crops(8, 16)
    first = colour(crops, torch.Generator().manual_seed(3))
    assert torch.equal(first, colour(crops, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, colour(crops, torch.Generator().manual_seed(4)))
    assert first.dtype == torch.float32 and first.shape == crops.shape
    with pytest.raises(ValueError, match="uint8"):
        colour(crops.float())
    with pytest.raises(ValueError, match="odd"):
        BatchedPhotometric(IMAGENET_MEAN, IMAGENET_STD, blur_kernel_size=8)
