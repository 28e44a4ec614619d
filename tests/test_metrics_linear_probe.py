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
    fit_logistic_probes,
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


def _overlapping(n_per_class, seed, dim=16, num_classes=10):
    """Class clusters that overlap (a linear classifier gets part of them right), like real features."""
    return _separable(n_per_class, num_classes=num_classes, dim=dim, seed=seed, noise=3.0)


def test_logistic_probe_does_not_depend_on_the_feature_scale():
    """The bottleneck protocol's reason to exist: the SGD sweep measures scale, the fitted probe does not."""
    train, train_labels = _overlapping(60, seed=0)
    val, val_labels = _overlapping(40, seed=1)
    logistic = {
        scale: fit_logistic_probes({"f": train * scale}, train_labels, {"f": val * scale}, val_labels)
        for scale in (1.0, 3e-3)
    }
    sgd = {
        scale: train_linear_probes(
            {"f": train * scale}, train_labels, {"f": val * scale}, val_labels, progress=False
        )
        for scale in (1.0, 3e-3)
    }
    print(
        "accuracy at feature scale 1 / 0.003: logistic "
        f"{logistic[1.0].best_accuracy:.1f} / {logistic[3e-3].best_accuracy:.1f}, "
        f"SGD sweep {sgd[1.0].best_accuracy:.1f} / {sgd[3e-3].best_accuracy:.1f}"
    )
    assert 30.0 < logistic[1.0].best_accuracy < 99.0  # overlapping clusters: neither trivial nor chance
    assert logistic[3e-3].best_accuracy == pytest.approx(logistic[1.0].best_accuracy, abs=0.5)
    assert logistic[1.0].best_accuracy >= sgd[1.0].best_accuracy - 1.0
    # The 240-step sweep does not converge on small features: it loses most of the signal.
    assert sgd[3e-3].best_accuracy < logistic[3e-3].best_accuracy - 15.0


def test_logistic_probe_selects_on_train_holdout_never_on_val():
    train, train_labels = _separable(30)
    val, val_labels = _separable(10, seed=1)
    sets = {"signal": (train, val), "noise": (torch.randn_like(train), torch.randn_like(val))}
    result = fit_logistic_probes(
        {k: t for k, (t, _) in sets.items()}, train_labels, {k: v for k, (_, v) in sets.items()}, val_labels
    )
    assert result.best_classifier.startswith("signal_l2")
    assert result.best_accuracy == result.best_per_feature_set["signal"] >= 99.0
    assert result.best_per_feature_set["noise"] < 30.0
    assert len(result.accuracies) == 2 * len(result.settings["l2_grid"])
    # Shuffled val labels change the reported accuracy, not what was chosen.
    shuffled = val_labels[torch.randperm(len(val_labels), generator=torch.Generator().manual_seed(0))]
    again = fit_logistic_probes(
        {k: t for k, (t, _) in sets.items()}, train_labels, {k: v for k, (_, v) in sets.items()}, shuffled
    )
    assert again.best_classifier == result.best_classifier
    assert again.settings["chosen_l2"] == result.settings["chosen_l2"]
    assert again.best_accuracy < 30.0
    with pytest.raises(ValueError, match="differ"):
        fit_logistic_probes({"a": train}, train_labels, {"b": val}, val_labels)


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
