"""Linear probing: feature extraction from the VTP API, caching, and the DINOv2-style classifier sweep."""

import pytest
import torch
from safetensors.torch import load_file

from vtp_gen.metrics.linear_probe import (
    DINOV2_LEARNING_RATES,
    LABELS_KEY,
    bottleneck_features,
    cached_probe_features,
    dinov2_feature_sets,
    extract_probe_features,
    intermediate_features,
    train_linear_probes,
)

# Thousands of tiny matmuls: on a busy 2-core machine, intra-op threading only adds sync cost.
pytestmark = pytest.mark.usefixtures("single_thread")


def _separable(n_per_class, num_classes=10, dim=24, seed=0, noise=0.3):
    """Gaussian clusters around well-separated class centres: linearly separable with margin."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    features = centres[labels] + noise * torch.randn(len(labels), dim, generator=generator)
    return features, labels


def test_dinov2_learning_rate_grid():
    assert len(DINOV2_LEARNING_RATES) == 13
    assert DINOV2_LEARNING_RATES[0] == 1e-5 and DINOV2_LEARNING_RATES[-1] == 0.1


def test_probe_reaches_full_accuracy_on_separable_features():
    train, train_labels = _separable(40)
    val, val_labels = _separable(20, seed=1)
    result = train_linear_probes(
        {"features": train},
        train_labels,
        {"features": val},
        val_labels,
        epochs=10,
        batch_size=64,
        progress=False,
    )
    print(f"separable: best {result.best_accuracy:.1f}% ({result.best_classifier})")
    assert result.best_accuracy >= 99.0
    assert len(result.accuracies) == 13
    # The smallest learning rates barely move from the N(0, 0.01) start: the sweep matters.
    assert result.accuracies["features_lr1e-05"] < result.best_accuracy
    assert result.settings["batch_size"] == 64 and result.settings["num_classes"] == 10


def test_probe_is_at_chance_on_random_labels():
    train, _ = _separable(40)
    val, _ = _separable(20, seed=1)
    generator = torch.Generator().manual_seed(5)
    random_train = torch.randint(0, 10, (len(train),), generator=generator)
    random_val = torch.randint(0, 10, (len(val),), generator=generator)
    result = train_linear_probes(
        {"f": train},
        random_train,
        {"f": val},
        random_val,
        learning_rates=(1e-3, 1e-2, 1e-1),
        epochs=5,
        progress=False,
    )
    assert result.best_accuracy < 30.0


def test_several_feature_sets_are_probed_side_by_side():
    train, train_labels = _separable(30)
    val, val_labels = _separable(10, seed=1)
    noise_train = torch.randn_like(train)
    noise_val = torch.randn_like(val)
    result = train_linear_probes(
        {"signal": train, "noise": noise_train},
        train_labels,
        {"signal": val, "noise": noise_val},
        val_labels,
        learning_rates=(1e-2, 1e-1),
        epochs=5,
        progress=False,
    )
    assert result.best_classifier.startswith("signal")
    assert result.best_per_feature_set["signal"] >= 99.0 > result.best_per_feature_set["noise"]
    with pytest.raises(ValueError, match="differ"):
        train_linear_probes({"a": train}, train_labels, {"b": val}, val_labels, progress=False)


@pytest.fixture(scope="module")
def tiny_vtp(reference_dir):
    from vtp_gen.interop.vtp import load_tokenizer

    folder = reference_dir / "vtp_tiny_default"
    return load_tokenizer(folder), load_file(str(folder / "golden_outputs.safetensors"))


def test_features_from_the_vtp_api_match_the_reference_outputs(tiny_vtp, tmp_path):
    model, golden = tiny_vtp
    images = golden["input.images"]
    loader = [(images, torch.tensor([3, 7])), {"image": images[:1], "label": torch.tensor([1])}]
    features = extract_probe_features(loader, intermediate_features(model, n_last_blocks=2), progress=False)
    assert features[LABELS_KEY].tolist() == [3, 7, 1]
    both = lambda a: torch.cat([a, a[:1]])  # noqa: E731 - the loader repeats image 0
    atol = 1e-4
    torch.testing.assert_close(
        features["cls_-2"], both(golden["out.intermediate.0.cls_token"]), atol=atol, rtol=0
    )
    torch.testing.assert_close(
        features["cls_-1"], both(golden["out.intermediate.1.cls_token"]), atol=atol, rtol=0
    )
    patch_mean = golden["out.intermediate.1.patch_tokens"].mean(dim=1)
    torch.testing.assert_close(features["patch_mean"], both(patch_mean), atol=atol, rtol=0)
    sets = dinov2_feature_sets(features, n_last_blocks_list=(1, 2))
    assert sets["blocks1_avgpool"].shape == (3, 2 * 64) and sets["blocks2_avgpool"].shape == (3, 3 * 64)
    torch.testing.assert_close(sets["blocks2_avgpool"][:, :64], features["cls_-2"])

    bottleneck = extract_probe_features(
        [(images, torch.tensor([0, 1]))], bottleneck_features(model), progress=False
    )
    assert bottleneck["bottleneck_cls"].shape == (2, 16)  # the fixture's bottleneck width
    latents = golden["out.reconstruction_latents"]  # (2, 16, 4, 4)
    torch.testing.assert_close(bottleneck["bottleneck_mean"], latents.mean(dim=(2, 3)), atol=atol, rtol=0)

    path = tmp_path / "probe" / "train.safetensors"
    first = cached_probe_features(path, lambda: features)
    again = cached_probe_features(path, lambda: pytest.fail("cached features were recomputed"))
    assert sorted(again) == sorted(first) and all(torch.equal(again[k], first[k]) for k in first)
