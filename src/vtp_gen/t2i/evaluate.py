"""Evaluating a text-to-image generator on the embedded Fashion-MNIST default.

Three measures, each saying something different:

- **Prompt agreement** (the headline): an independent judge, a small CNN
  trained here on the Fashion-MNIST train split (its test accuracy is
  reported beside it), classifies the samples of each held-out prompt; the
  agreement is the share classified as the prompt's garment. The held-out
  prompts (``HELD_OUT_PROMPTS``) use wordings that never occur in the
  training captions, so the number measures whether the model reads the text,
  not whether it memorised caption strings. The class-conditional generator's
  agreement (samples of each class label, same sampler and guidance) is the
  yardstick beside it.
- **CLIP score** with the tokenizer's own towers: 100 x max(cos(image, text), 0).
  This is the conditioning model judging itself (the generator reads the same
  text tower), so it is reported, not trusted on its own.
- **FID** of the samples against real test images (Inception features).
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
from vtp_gen.data.text_tokenizer import CLIPTextTokenizer
from vtp_gen.data.transforms import normalize

JUDGE_SIZE = 28  # the judge reads Fashion-MNIST's own resolution; samples are resized to it


class GarmentJudge(nn.Module):
    """A small CNN on 28x28 greyscale images in [0, 1]: 10 Fashion-MNIST logits."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


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
    optimizer = torch.optim.Adam(judge.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
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
    accuracy = judge_accuracy(judge, judge_inputs(test.images), torch.as_tensor(test.labels))
    return judge.eval(), accuracy


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
    save_file({**judge.state_dict(), "test_accuracy": torch.tensor(accuracy)}, path)
    return judge, accuracy


@torch.no_grad()
def agreement(judge: GarmentJudge, pixels: np.ndarray, targets: Sequence[int]) -> dict:
    """Share of samples the judge classifies as their target class, overall and per class."""
    predicted = judge.eval()(judge_inputs(pixels)).argmax(1)
    targets = torch.as_tensor(list(targets))
    hits = predicted == targets
    per_class = {
        CLASS_NAMES[k]: round(float(hits[targets == k].float().mean()), 4) for k in targets.unique().tolist()
    }
    return {"agreement": round(float(hits.float().mean()), 4), "per_class": per_class}


@torch.no_grad()
def clip_score(tokenizer: nn.Module, pixels: np.ndarray, prompts: Sequence[str], batch: int = 250) -> float:
    """Mean 100 x max(cos, 0) between the tokenizer's CLIP image and text embeddings."""

    bpe = CLIPTextTokenizer.from_config(tokenizer.config)
    device = next(tokenizer.parameters()).device
    size = tokenizer.config.image_size
    scores = []
    for i in range(0, len(prompts), batch):
        x = torch.as_tensor(np.asarray(pixels[i : i + batch])).permute(0, 3, 1, 2).float().div(255.0)
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        image = tokenizer.get_clip_image_feature(normalize(x).to(device), normalize=True)
        text = tokenizer.get_clip_text_feature(bpe(list(prompts[i : i + batch])).to(device), normalize=True)
        scores.append(100.0 * (image * text).sum(-1).clamp(min=0))
    return round(float(torch.cat(scores).mean()), 3)
