"""The one tokenizer evaluator (vtp_gen.metrics.tokenizer), shared by stage 1's end-of-run check and `make eval`."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vtp_gen import create_model
from vtp_gen.data.fashion_mnist import FashionMNIST
from vtp_gen.data.transforms import CenterCropNormalize
from vtp_gen.metrics.generation import FeatureStatistics, frechet_distance
from vtp_gen.metrics.reconstruction import psnr, ssim
from vtp_gen.metrics.templates import fashion_mnist_class_names, imagenet_class_names
from vtp_gen.metrics.tokenizer import (
    evaluate_reconstruction,
    evaluate_tokenizer_zero_shot,
    evaluation_subset,
    uint8_nchw,
    zero_shot_classes,
)


class Thumbnails(torch.nn.Module):
    """A small feature network: uint8 images -> their 4x4 grey thumbnails (16-d)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        grey = images.float().mean(dim=1, keepdim=True) / 255.0
        return torch.nn.functional.interpolate(grey, size=(4, 4), mode="area").flatten(1)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    data = FashionMNIST(split="test", max_samples=12, transform=CenterCropNormalize(28))
    return torch.stack([data[i]["image"] for i in range(12)])


@pytest.fixture(scope="module")
def tokenizer():
    torch.manual_seed(0)
    return create_model("vtp-tiny", image_size=28).eval()


def test_metrics_are_those_of_the_8_bit_images(tokenizer, images):
    report = evaluate_reconstruction(tokenizer, images.split(5), grid_images=3)
    with torch.no_grad():
        decoded = tokenizer.get_latents_decoded_images(tokenizer.get_reconstruction_latents(images))
    original, reconstruction = uint8_nchw(images), uint8_nchw(decoded)
    m = report.metrics
    assert m["num_images"] == 12
    assert m["psnr"] == pytest.approx(psnr(original, reconstruction).double().mean().item(), rel=1e-6)
    assert m["ssim"] == pytest.approx(ssim(original, reconstruction).double().mean().item(), rel=1e-6)
    l1 = (original.float() - reconstruction.float()).abs().div(255).mean().item()
    assert m["l1"] == pytest.approx(l1, rel=1e-5)
    assert "rfid" not in m and "lpips" not in m  # no networks given, none computed
    assert report.grid.dtype == torch.uint8 and report.grid.shape == (6, 3, 28, 28)
    assert torch.equal(report.grid[:3], original[:3]) and torch.equal(report.grid[3:], reconstruction[:3])


def test_rfid_from_reference_features_equals_rfid_from_the_originals(tokenizer, images):
    network = Thumbnails()
    computed = evaluate_reconstruction(tokenizer, images.split(5), feature_network=network).metrics
    reference = network(uint8_nchw(images)).numpy()
    extra = np.zeros((4, reference.shape[1]), dtype=reference.dtype)  # rows past the images are not read
    reused = evaluate_reconstruction(
        tokenizer,
        images.split(5),
        feature_network=network,
        reference_features=np.concatenate([reference, extra]),
    ).metrics
    assert reused["rfid"] == pytest.approx(computed["rfid"], rel=1e-9)
    with torch.no_grad():
        decoded = tokenizer.get_latents_decoded_images(tokenizer.get_reconstruction_latents(images))
    expected = frechet_distance(
        FeatureStatistics.from_features(reference),
        FeatureStatistics.from_features(network(uint8_nchw(decoded)).numpy()),
    )
    assert computed["rfid"] == pytest.approx(expected, rel=1e-9)


def test_evaluation_subset_is_fixed_nested_and_spread():
    a, b = evaluation_subset(1000, 100), evaluation_subset(1000, 40)
    assert a[:40] == b and len(set(a)) == 100 and max(a) > 500
    assert evaluation_subset(10, 0) == list(range(10)) == evaluation_subset(10, 50)


def test_zero_shot_classes_follow_one_rule():
    fashion = FashionMNIST(split="test", max_samples=4)
    names, templates = zero_shot_classes("fashion_mnist", fashion)
    assert tuple(names) == fashion_mnist_class_names() and templates
    assert tuple(zero_shot_classes("image_folder", fashion, "imagenet")[0]) == imagenet_class_names()
    few = SimpleNamespace(classes=["n01440764", "n01443537"])
    assert zero_shot_classes("image_folder", few) is None  # two synsets are not ImageNet's thousand
    thousand = SimpleNamespace(classes=[f"n{i:08d}" for i in range(1000)])
    assert tuple(zero_shot_classes("image_folder", thousand)[0]) == imagenet_class_names()
    named = SimpleNamespace(class_names=["cat", "dog"])
    assert list(zero_shot_classes("image_folder", named)[0]) == ["cat", "dog"]


def test_zero_shot_reports_chance_and_refuses_an_ae_only_tokenizer(tokenizer, images):
    labels = torch.arange(12) % 10
    names, templates = zero_shot_classes("fashion_mnist", None)
    result = evaluate_tokenizer_zero_shot(tokenizer, [(images, labels)], names, templates[:2])
    assert result["num_images"] == 12 and result["chance"] == pytest.approx(10.0)
    assert 0 <= result["top1"] <= result["top5"] <= 100
    ae_only = create_model("vtp-tiny", image_size=28, train_clip=False)
    with pytest.raises(ValueError, match="no text tower"):
        evaluate_tokenizer_zero_shot(ae_only, [(images, labels)], names, templates)
