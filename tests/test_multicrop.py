"""Multi-crop augmentation and the SSL collate step (CPU sizes: 32 px global, 16 px local, patch 4)."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from vtp_gen.data.decode import Skipped
from vtp_gen.data.multicrop import (
    DINOV2_EFFECTIVE_BLUR,
    MultiCropAugmentation,
    MultiCropCollate,
    to_uint8_image,
)
from vtp_gen.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize

G, L, N_LOCAL, PATCH = 32, 16, 3, 4


def _photo_like(seed: int, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    # Smooth random colour field, like a blurry photo (not white noise).
    small = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.BILINEAR)


def _samples(n: int) -> list[dict]:
    return [{"image": _photo_like(i), "caption": f"photo {i}", "label": i} for i in range(n)]


def _collate(**kwargs) -> MultiCropCollate:
    return MultiCropCollate(MultiCropAugmentation(G, L, N_LOCAL), patch_size=PATCH, **kwargs)


def test_batch_layout():
    torch.manual_seed(0)
    batch = _collate()(_samples(4))
    assert batch["global_crops"].shape == (8, 3, G, G) and batch["global_crops"].dtype == torch.float32
    assert batch["local_crops"].shape == (4 * N_LOCAL, 3, L, L)
    assert batch["image"].shape == (4, 3, G, G)
    assert batch["masks"].shape == (8, (G // PATCH) ** 2) and batch["masks"].dtype == torch.bool
    assert int((batch["masks"].sum(1) > 0).sum()) == 4  # half of the 8 global crops
    assert torch.equal(batch["mask_indices"], batch["masks"].flatten().nonzero().flatten())
    assert batch["mask_weights"].shape == batch["mask_indices"].shape
    assert batch["mask_weights"].sum().item() == pytest.approx(4.0)
    assert batch["caption"] == [f"photo {i}" for i in range(4)]
    assert batch["label"].tolist() == [0, 1, 2, 3]
    assert batch["ssl_indices"].tolist() == [0, 1, 2, 3]
    assert batch["size"] == 4 and batch["data_issues"] == {}


def test_plain_image_is_the_normalised_adm_centre_crop():
    from vtp_gen.data.transforms import center_crop_arr, pil_to_tensor

    image = _photo_like(7)
    batch = _collate()([{"image": image, "caption": "x"}])
    torch.testing.assert_close(batch["image"][0], normalize(pil_to_tensor(center_crop_arr(image, G))))


def test_same_seed_same_batch_other_seed_other_batch():
    collate = _collate()
    torch.manual_seed(3)
    a = collate(_samples(2))
    torch.manual_seed(3)
    b = collate(_samples(2))
    torch.manual_seed(4)
    c = collate(_samples(2))
    for key in ("global_crops", "local_crops", "masks"):
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["global_crops"], c["global_crops"])


class _Fill:
    """A deterministic stand-in for the random geometry: resize (uint8 stays uint8)."""

    def __init__(self, size):
        self.t = v2.Resize((size, size))

    def __call__(self, x):
        return self.t(x)


def _constant_images_collate(**kwargs):
    collate = _collate(**kwargs)
    aug = collate.augmentation
    aug.global_geometry, aug.local_geometry = _Fill(G), _Fill(L)
    aug.global_1 = aug.global_2 = aug.local = lambda x: x.float() / 255  # colour step: none
    return collate


def test_crops_are_crop_major():
    values = [0.2, 0.4, 0.6]
    samples = [{"image": torch.full((3, 20, 20), v), "caption": "c"} for v in values]
    batch = _constant_images_collate()(samples)
    firsts = batch["global_crops"][:, 0, 0, 0]
    torch.testing.assert_close(firsts, torch.tensor(values * 2), atol=1 / 255, rtol=0)
    locals_ = batch["local_crops"][:, 0, 0, 0]
    torch.testing.assert_close(locals_, torch.tensor(values * N_LOCAL), atol=1 / 255, rtol=0)


def test_ssl_subset_gets_the_crops_and_every_sample_the_plain_image():
    values = [0.1, 0.3, 0.5, 0.7]
    samples = [{"image": torch.full((3, 20, 20), v), "caption": "c"} for v in values]
    torch.manual_seed(0)
    batch = _constant_images_collate(ssl_fraction=0.5)(samples)
    chosen = batch["ssl_indices"].tolist()
    assert len(chosen) == 2 and chosen == sorted(chosen)
    expected = torch.tensor([values[i] for i in chosen] * 2)
    torch.testing.assert_close(batch["global_crops"][:, 0, 0, 0], expected, atol=1 / 255, rtol=0)
    assert batch["global_crops"].shape[0] == 4 and batch["masks"].shape[0] == 4
    assert batch["image"].shape[0] == 4


def test_ssl_subset_holds_two_images_for_koleo_even_when_the_fraction_rounds_to_one():
    samples = [{"image": torch.full((3, 20, 20), v), "caption": "c"} for v in (0.1, 0.3, 0.5, 0.7)]
    assert _constant_images_collate(ssl_fraction=0.1)(samples)["ssl_indices"].numel() == 2
    assert _constant_images_collate(ssl_fraction=0.1)(samples[:1])["ssl_indices"].numel() == 1


def test_skipped_samples_are_dropped_and_counted():
    samples = _samples(2) + [Skipped("truncated_image", "k1"), Skipped("truncated_image", "k2")]
    batch = _collate()(samples)
    assert batch["global_crops"].shape[0] == 4
    assert batch["data_issues"] == {"truncated_image": 2}
    empty = _collate()([Skipped("not_an_image")])
    assert empty["size"] == 0 and empty["global_crops"].shape == (0, 3, G, G)
    assert empty["masks"].shape == (0, (G // PATCH) ** 2)


def test_tensor_inputs_and_tokenizer():
    gray = torch.rand(20, 24)
    float_rgb = torch.rand(3, 30, 30)
    uint8_rgb = torch.randint(0, 256, (3, 30, 30), dtype=torch.uint8)
    samples = [{"image": im, "caption": f"c{i}"} for i, im in enumerate((gray, float_rgb, uint8_rgb))]
    batch = _collate(tokenizer=lambda texts: torch.tensor([[len(t)] for t in texts]))(samples)
    assert batch["global_crops"].shape == (6, 3, G, G)
    assert batch["text_tokens"].tolist() == [[2], [2], [2]]
    assert to_uint8_image(gray).shape == (3, 20, 24)
    with pytest.raises(ValueError, match="normalised"):
        to_uint8_image(normalize(float_rgb))


def test_crops_of_a_real_photo_are_normalised_and_varied():
    skdata = pytest.importorskip("skimage.data")
    photo = Image.fromarray(skdata.astronaut()).resize((128, 128))
    torch.manual_seed(0)
    aug = MultiCropAugmentation(G, L, N_LOCAL)
    views = [aug(photo) for _ in range(8)]
    crops = torch.stack([v["global_crops"][0] for v in views])
    low = (0 - 0.485) / 0.229
    high = (1 - 0.406) / 0.225
    assert crops.min() >= low - 1e-4 and crops.max() <= high + 1e-4
    assert crops.std(dim=0).mean() > 0.1  # random crops differ from one another
    torch.testing.assert_close(views[0]["image"], views[1]["image"])  # the plain image is not augmented


def test_recipe_probabilities_follow_dinov2():
    aug = MultiCropAugmentation(G, L, N_LOCAL)
    assert [c.blur_p for c in (aug.global_1, aug.global_2, aug.local)] == [1.0, 0.1, 0.5]
    assert [c.solarize_p for c in (aug.global_1, aug.global_2, aug.local)] == [0.0, 0.2, 0.0]
    for colour in (aug.global_1, aug.global_2, aug.local):
        assert colour.jitter_p == 0.8 and colour.grayscale_p == 0.2
        # ColorJitter(0.4, 0.4, 0.2, 0.1): brightness, contrast, saturation, hue ranges.
        assert colour.ranges == ((0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1))
        assert colour.blur_sigma == (0.1, 2.0) and colour.blur_kernel_size == 9
        assert colour.mean == list(IMAGENET_MEAN) and colour.std == list(IMAGENET_STD)
    reproduction = MultiCropAugmentation(G, L, N_LOCAL, blur_probabilities=DINOV2_EFFECTIVE_BLUR)
    assert [c.blur_p for c in (reproduction.global_1, reproduction.global_2, reproduction.local)] == [
        0.0,
        0.9,
        0.5,
    ]
    assert aug.global_geometry.transforms[0].scale == (0.32, 1.0)
    assert aug.local_geometry.transforms[0].scale == (0.05, 0.32)


def test_batch_crops_equal_the_single_image_views_in_crop_major_order():
    images = [_photo_like(i) for i in range(3)]
    aug = MultiCropAugmentation(G, L, N_LOCAL)
    torch.manual_seed(5)
    batched = aug.batch_crops(images)
    assert batched["global_crops"].shape == (6, 3, G, G) and batched["local_crops"].shape == (9, 3, L, L)
    # Without randomness in the colour step, view k of image i sits at row k * N + i.
    aug.global_1 = aug.global_2 = aug.local = lambda x: x.float()
    aug.global_geometry, aug.local_geometry = _Fill(G), _Fill(L)
    batched = aug.batch_crops(images)
    for i, image in enumerate(images):
        single = aug.crops(image)
        for k in range(2):
            torch.testing.assert_close(batched["global_crops"][k * 3 + i], single["global_crops"][k])
        for k in range(N_LOCAL):
            torch.testing.assert_close(batched["local_crops"][k * 3 + i], single["local_crops"][k])


def test_global_crop_must_fit_the_patch_grid():
    with pytest.raises(ValueError, match="multiple"):
        MultiCropCollate(MultiCropAugmentation(30, 16, 2), patch_size=4)
