"""A Fashion-MNIST domain metric: a small CNN trained here, its features and its labels.

Inception pool3 features were made for ImageNet photographs; on 28x28 greyscale garments
they are a poor ruler, and the FID they give at a few hundred samples is dominated by
sampling noise (the real-vs-real floor). The usual practice on MNIST-like data is a small
classifier trained on the dataset's own train split: its penultimate layer is a feature
space that knows garments, cheap enough to use all 10k test images as the reference.

The same classifier ("the garment judge") serves two measures:

* the Frechet distance between its penultimate features of samples and of the test split
  (:func:`judge_features` + :func:`vtp_gen.metrics.generation.frechet_distance`);
* label agreement: the share of samples it classifies as their conditioning label
  (:func:`agreement`), meaningful only beside its own test accuracy, which
  :func:`train_judge` measures on the whole test split and stores with the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from vtp_gen.data.fashion_mnist import CLASS_NAMES, FashionMNIST
from vtp_gen.utils.atomic import atomic_output

JUDGE_SIZE = 28  # the judge reads Fashion-MNIST's own resolution; samples are resized to it
JUDGE_FEATURES = "fashion-mnist-judge/penultimate-64"  # the extractor name in protocols and caches


class GarmentJudge(nn.Module):
    """A small CNN on 28x28 greyscale images in [0, 1]: 10 Fashion-MNIST logits.

    ``features`` is its penultimate layer (64-d, after the ReLU), the space of the
    domain Frechet distance.
    """

    feature_dim = 64

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 7 * 7, self.feature_dim), nn.ReLU(), nn.Linear(self.feature_dim, 10)
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head[:-1](self.trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head[-1](self.features(x))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # Judges stored before the trunk was named `trunk` called it `features` (same layers).
        renamed = {
            ("trunk." + k[len("features.") :] if k.startswith("features.") else k): v
            for k, v in state_dict.items()
        }
        return super().load_state_dict(renamed, strict=strict, assign=assign)


def judge_inputs(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) or (N, H, W) images -> (N, 1, 28, 28) greyscale in [0, 1]."""
    x = torch.tensor(np.asarray(pixels), dtype=torch.float32) / 255.0
    if x.dim() == 4:
        x = x.mean(dim=-1)
    x = x.unsqueeze(1)
    if x.shape[-1] != JUDGE_SIZE:
        x = F.interpolate(
            x, size=(JUDGE_SIZE, JUDGE_SIZE), mode="bilinear", antialias=True, align_corners=False
        )
    return x


@torch.no_grad()
def judge_outputs(
    judge: GarmentJudge, pixels: np.ndarray, batch: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, 64) float64, predicted class (N,)) of uint8 images, in batches."""
    judge.eval()
    features, predicted = [], []
    for i in range(0, len(pixels), batch):
        f = judge.features(judge_inputs(pixels[i : i + batch]))
        features.append(f.double().numpy())
        predicted.append(judge.head[-1](f).argmax(1).numpy())
    return np.concatenate(features), np.concatenate(predicted)


def judge_features(judge: GarmentJudge, pixels: np.ndarray, batch: int = 1000) -> np.ndarray:
    return judge_outputs(judge, pixels, batch)[0]


@torch.no_grad()
def judge_accuracy(
    judge: GarmentJudge, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000
) -> float:
    judge.eval()
    correct = sum(
        int((judge(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum())
        for i in range(0, len(images), batch)
    )
    return correct / len(images)


def train_judge(
    root: str | None = None, epochs: int = 2, seed: int = 0, max_images: int = 0
) -> tuple[GarmentJudge, float]:
    """Train the judge on the train split (its first ``max_images``, 0 = all); returns it and its
    accuracy on the whole test split."""
    torch.manual_seed(seed)
    train, test = FashionMNIST(root, "train", max_samples=max_images), FashionMNIST(root, "test")
    images, labels = judge_inputs(train.images), torch.as_tensor(train.labels)
    judge = GarmentJudge()
    generator = torch.Generator().manual_seed(seed)
    with torch.enable_grad():  # callers may hold no_grad (make eval evaluates under it)
        _fit(judge, images, labels, epochs, generator)
    accuracy = judge_accuracy(judge, judge_inputs(test.images), torch.as_tensor(test.labels))
    return judge.eval(), accuracy


def _fit(judge: GarmentJudge, images, labels, epochs: int, generator: torch.Generator) -> None:
    optimizer = torch.optim.Adam(judge.parameters(), lr=2e-3)
    for _ in range(epochs):
        judge.train()
        for rows in torch.randperm(len(images), generator=generator).split(128):
            # Small shifts make the judge less sensitive to how a generator centres the garment.
            x = torch.roll(
                images[rows],
                shifts=tuple(torch.randint(-2, 3, (2,), generator=generator).tolist()),
                dims=(2, 3),
            )
            loss = F.cross_entropy(judge(x), labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def load_or_train_judge(
    path: Path, root: str | None = None, epochs: int = 2, max_images: int = 0
) -> tuple[GarmentJudge, float]:
    """The judge stored at ``path`` (with its test accuracy), trained and stored first when missing."""
    path = Path(path)
    if path.is_file():
        state = load_file(path)
        accuracy = float(state.pop("test_accuracy"))
        judge = GarmentJudge()
        judge.load_state_dict(state)
        return judge.eval(), accuracy
    judge, accuracy = train_judge(root, epochs, max_images=max_images)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:  # two evals sharing a cache never read half a file
        save_file({**judge.state_dict(), "test_accuracy": torch.tensor(accuracy)}, str(tmp))
    return judge, accuracy


def agreement_hits(predicted: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """Per sample, 1.0 when the judge's class is the sample's conditioning label (bootstrap-ready)."""
    return (np.asarray(predicted) == np.asarray(list(targets))).astype(np.float64)


@torch.no_grad()
def agreement(judge: GarmentJudge, pixels: np.ndarray, targets: Sequence[int]) -> dict:
    """Share of samples the judge classifies as their target class, overall and per class."""
    _, predicted = judge_outputs(judge, pixels)
    targets = np.asarray(list(targets))
    hits = agreement_hits(predicted, targets)
    per_class = {
        CLASS_NAMES[k]: round(float(hits[targets == k].mean()), 4) for k in np.unique(targets).tolist()
    }
    return {"agreement": round(float(hits.mean()), 4), "per_class": per_class}
