"""Linear probing of tokenizer features: extract once, cache, then train linear classifiers.

Two protocols (docs/vtp-method.md, section 5):

(a) the paper's scaling plots: the 64-d bottleneck features of the last layer
    (:func:`bottleneck_features`: the bottleneck applied to the final-norm CLS
    token, and the mean of the latent map), probed by L2-regularised logistic
    regression fitted to convergence on standardised features
    (:func:`fit_logistic_probes`; the paper does not publish this protocol);
(b) Table 2, DINOv2 style: pre-bottleneck features of the last blocks
    (:func:`intermediate_features`), probed as CLS of the last 1 or 4 blocks
    concatenated with the mean patch token of the last block
    (:func:`dinov2_feature_sets`), one classifier per (feature set, learning
    rate) over 13 learning rates, SGD momentum 0.9, no weight decay, cosine
    schedule to 0, learning rate scaled by batch / 256; report the best.

Differences from the live-image protocol of DINOv2 / VTP, stated plainly:
features are computed once on fixed (centre-cropped) images, so the training
set sees no random-resized-crop / flip augmentation, and accuracy is read once
after the last epoch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from vtp_gen.utils.atomic import atomic_output

DINOV2_LEARNING_RATES = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)
# L2 strengths of the logistic probe (on the mean cross-entropy), one chosen per feature set on held-out
# train images: CLIP's linear-probe protocol, with a fixed grid instead of its search.
LOGISTIC_L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
LABELS_KEY = "labels"
FeatureFn = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]


# --- feature extraction ---------------------------------------------------------------


def bottleneck_features(model) -> FeatureFn:
    """Protocol (a) for a VTP model: 64-d bottleneck features of the last layer.

    ``bottleneck_cls``: the bottleneck applied to the final-norm CLS token
    (``get_last_layer_feature(use_bottleneck=True)``, the official API);
    ``bottleneck_mean``: the latent map the DiT models, averaged over positions.
    """

    def features(images: torch.Tensor) -> dict[str, torch.Tensor]:
        last = model.get_last_layer_feature(images, use_bottleneck=True)
        return {"bottleneck_cls": last["cls_token"], "bottleneck_mean": last["patch_tokens"].mean(dim=1)}

    return features


def intermediate_features(model, n_last_blocks: int = 4) -> FeatureFn:
    """Protocol (b) for a VTP model: per block ``cls_{i}`` (i = -n..-1) and the last block's ``patch_mean``."""

    def features(images: torch.Tensor) -> dict[str, torch.Tensor]:
        layers = model.get_intermediate_layers_feature(images, n=n_last_blocks, return_class_token=True)
        out = {f"cls_{i - len(layers)}": cls for i, (_, cls) in enumerate(layers)}
        out["patch_mean"] = layers[-1][0].mean(dim=1)
        return out

    return features


def _images_and_labels(batch) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, Mapping):
        return batch["image"], torch.as_tensor(batch["label"])
    images, labels = batch[0], batch[1]
    return images, torch.as_tensor(labels)


@torch.no_grad()
def extract_probe_features(
    loader: Iterable,
    feature_fn: FeatureFn,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "probe features",
) -> dict[str, torch.Tensor]:
    """Run ``feature_fn`` over a labelled loader -> {name: (N, D) float32, "labels": (N,) int64}.

    Batches are (images, labels) tuples or dicts with ``image`` and ``label``
    (the vtp_gen data layer's format).
    """
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        images, labels = _images_and_labels(batch)
        if len(labels) == 0:
            continue
        for name, value in feature_fn(images.to(device)).items():
            parts.setdefault(name, []).append(value.detach().float().cpu())
        parts.setdefault(LABELS_KEY, []).append(labels.long().cpu())
    if not parts:
        raise ValueError("the loader produced no images")
    return {name: torch.cat(values) for name, values in parts.items()}


def save_probe_features(path: str | os.PathLike, features: Mapping[str, torch.Tensor]) -> Path:
    with atomic_output(path) as tmp:
        save_file({k: v.contiguous() for k, v in features.items()}, str(tmp))
    return Path(path)


def load_probe_features(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def cached_probe_features(path: str | os.PathLike, compute: Callable[[], dict[str, torch.Tensor]]) -> dict:
    """Features from ``path`` if it exists, else ``compute()`` them and store them there."""
    if Path(path).is_file():
        return load_probe_features(path)
    features = compute()
    save_probe_features(path, features)
    return features


def dinov2_feature_sets(
    features: Mapping[str, torch.Tensor], n_last_blocks_list=(1, 4)
) -> dict[str, torch.Tensor]:
    """CLS of the last n blocks (oldest first) + mean patch token of the last block, for each n."""
    sets = {}
    for n in n_last_blocks_list:
        cls = [features[f"cls_{i}"] for i in range(-n, 0)]
        sets[f"blocks{n}_avgpool"] = torch.cat([*cls, features["patch_mean"]], dim=1)
    return sets


# --- training ---------------------------------------------------------------------------


@dataclass
class ProbeResult:
    """Top-1 accuracies (percent): every classifier's on the split that selects (val for the SGD sweep,
    the train holdout for the logistic probe), each feature set's chosen one on val, the headline."""

    accuracies: dict[str, float]
    best_accuracy: float
    best_classifier: str
    best_per_feature_set: dict[str, float] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


def _check_feature_sets(train_sets, train_labels, val_sets, val_labels) -> None:
    if set(train_sets) != set(val_sets):
        raise ValueError(f"train and val feature sets differ: {sorted(train_sets)} vs {sorted(val_sets)}")
    for name in train_sets:
        train, val = train_sets[name], val_sets[name]
        if train.ndim != 2 or val.ndim != 2 or train.shape[1] != val.shape[1]:
            raise ValueError(
                f"feature set {name}: train {tuple(train.shape)} and val {tuple(val.shape)} do not match"
            )
        if train.shape[0] != len(train_labels) or val.shape[0] != len(val_labels):
            raise ValueError(f"feature set {name}: feature and label counts differ")


def _classifier_name(feature_set: str, lr: float) -> str:
    return f"{feature_set}_lr{lr:g}"


def train_linear_probes(
    train_sets: Mapping[str, torch.Tensor],
    train_labels: torch.Tensor,
    val_sets: Mapping[str, torch.Tensor],
    val_labels: torch.Tensor,
    num_classes: int | None = None,
    learning_rates: Iterable[float] = DINOV2_LEARNING_RATES,
    epochs: int = 10,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> ProbeResult:
    """Train one linear classifier per (feature set, learning rate) on cached features, all at once.

    Every classifier sees the same batches (one pass over the data per step, as
    DINOv2 trains its grid). Weights start at N(0, 0.01), biases at 0.
    """
    device = torch.device(device)
    learning_rates = tuple(learning_rates)
    train_labels = torch.as_tensor(train_labels).long()
    val_labels = torch.as_tensor(val_labels).long()
    num_classes = num_classes or int(max(train_labels.max(), val_labels.max())) + 1
    _check_feature_sets(train_sets, train_labels, val_sets, val_labels)

    generator = torch.Generator().manual_seed(seed)
    # A plain dict: the names carry learning rates like 1e-05, and ModuleDict refuses dots.
    classifiers: dict[str, nn.Linear] = {}
    groups = []
    for name, features in train_sets.items():
        for lr in learning_rates:
            linear = nn.Linear(features.shape[1], num_classes)
            with torch.no_grad():
                linear.weight.normal_(0.0, 0.01, generator=generator)
                linear.bias.zero_()
            key = _classifier_name(name, lr)
            classifiers[key] = linear.to(device)
            groups.append({"params": linear.parameters(), "lr": lr * batch_size / 256.0})
    optimizer = torch.optim.SGD(groups, momentum=0.9, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(train_labels) / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch, eta_min=0.0)
    train_on_device = {name: f.float().to(device) for name, f in train_sets.items()}
    labels_on_device = train_labels.to(device)

    for _epoch in tqdm(range(epochs), desc="linear probes", disable=not progress, leave=False):
        order = torch.randperm(len(train_labels), generator=generator).to(device)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            target = labels_on_device[index]
            loss = 0.0
            for name, features in train_on_device.items():
                batch = features[index]
                for lr in learning_rates:
                    loss = loss + F.cross_entropy(classifiers[_classifier_name(name, lr)](batch), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()

    accuracies = {}
    with torch.no_grad():
        for name, features in val_sets.items():
            features = features.float().to(device)
            for lr in learning_rates:
                key = _classifier_name(name, lr)
                predicted = classifiers[key](features).argmax(dim=1).cpu()
                accuracies[key] = 100.0 * (predicted == val_labels).double().mean().item()
    best = max(accuracies, key=accuracies.get)
    per_set = {
        name: max(accuracies[_classifier_name(name, lr)] for lr in learning_rates) for name in train_sets
    }
    settings = {
        "learning_rates": list(learning_rates),
        "epochs": epochs,
        "batch_size": batch_size,
        "optimizer": "SGD momentum 0.9, weight decay 0, lr x batch/256, cosine to 0",
        "num_train": int(len(train_labels)),
        "num_val": int(len(val_labels)),
        "num_classes": num_classes,
    }
    return ProbeResult(accuracies, accuracies[best], best, per_set, settings)


# --- the bottleneck protocol: logistic regression fitted to convergence -----------------


def _standardiser(train: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> (x - mean) / std with the train split's per-dimension statistics (MAE's probe BatchNorm)."""
    mean, std = train.mean(dim=0), train.std(dim=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return lambda x: (x - mean) / std


def _l2_name(feature_set: str, l2: float) -> str:
    return f"{feature_set}_l2{l2:g}"


def _fit_logistic(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float, max_iter: int):
    """Multinomial logistic regression, full batch, L-BFGS with strong-Wolfe line search; (W, b)."""
    weight = torch.zeros(features.shape[1], num_classes, dtype=features.dtype, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=features.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-6, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight + bias, labels) + l2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def _accuracy(model, features: torch.Tensor, labels: torch.Tensor) -> float:
    weight, bias = model
    return 100.0 * ((features @ weight + bias).argmax(dim=1) == labels).double().mean().item()


def fit_logistic_probes(
    train_sets: Mapping[str, torch.Tensor],
    train_labels: torch.Tensor,
    val_sets: Mapping[str, torch.Tensor],
    val_labels: torch.Tensor,
    num_classes: int | None = None,
    l2_grid: Iterable[float] = LOGISTIC_L2_GRID,
    holdout_fraction: float = 0.2,
    max_iter: int = 1000,
    seed: int = 0,
) -> ProbeResult:
    """A linear classifier per feature set, fitted to convergence; the feature set and L2 chosen on train.

    Why not the SGD sweep: a few hundred SGD steps do not converge on features whose scale is far
    from 1, and bottleneck features differ in scale by ~100x between tokenizers (the CLS bottleneck of
    an AE-only tokenizer, which no loss trains, had a per-dimension std of 0.003; a CLIP one 0.2), so
    the sweep measured their scale as much as their content. Here each dimension is standardised
    with the train split's statistics, and a full-batch L-BFGS fit makes the result independent of
    scale and step count. For each feature set, the L2 strength with the best accuracy on
    ``holdout_fraction`` of the train features (a seeded split) is refitted on all of them; the
    headline is the val accuracy of the set that did best on that holdout (val never selects).
    """
    train_labels = torch.as_tensor(train_labels).long()
    val_labels = torch.as_tensor(val_labels).long()
    num_classes = num_classes or int(max(train_labels.max(), val_labels.max())) + 1
    l2_grid = tuple(l2_grid)
    _check_feature_sets(train_sets, train_labels, val_sets, val_labels)
    order = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(seed))
    held = max(1, int(round(holdout_fraction * len(order))))
    fit_index, held_index = order[held:], order[:held]

    accuracies, held_best, per_set = {}, {}, {}
    for name, train in train_sets.items():
        train = train.detach().double().cpu()
        standardise = _standardiser(train[fit_index])
        fit, check = standardise(train[fit_index]), standardise(train[held_index])
        for l2 in l2_grid:
            model = _fit_logistic(fit, train_labels[fit_index], num_classes, l2, max_iter)
            accuracies[_l2_name(name, l2)] = _accuracy(model, check, train_labels[held_index])
        chosen = max(l2_grid, key=lambda l2: accuracies[_l2_name(name, l2)])
        held_best[name] = (accuracies[_l2_name(name, chosen)], chosen)
        standardise = _standardiser(train)
        model = _fit_logistic(standardise(train), train_labels, num_classes, chosen, max_iter)
        per_set[name] = _accuracy(model, standardise(val_sets[name].detach().double().cpu()), val_labels)
    best = max(held_best, key=lambda name: held_best[name][0])
    settings = {
        "l2_grid": list(l2_grid),
        "chosen_l2": {name: l2 for name, (_, l2) in held_best.items()},
        "holdout_fraction": holdout_fraction,
        "optimizer": "full-batch L-BFGS (strong Wolfe), standardised features",
        "num_train": int(len(train_labels)),
        "num_val": int(len(val_labels)),
        "num_classes": num_classes,
    }
    return ProbeResult(accuracies, per_set[best], _l2_name(best, held_best[best][1]), per_set, settings)
