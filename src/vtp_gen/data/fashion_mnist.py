"""The embedded default dataset: Fashion-MNIST (70k real 28x28 images, 10 classes, MIT).

It is read from the four standard idx files, which the Debian package
``dataset-fashion-mnist`` installs under ``/usr/share/datasets/fashion-mnist``
(``make setup`` does this). Images are served as RGB and resized with the ADM
centre crop like every other source, so the whole pipeline runs on it unchanged.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from vtp_gen.data.captions import label_caption

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def find_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the idx files: the explicit root, else $VTP_GEN_FASHION_MNIST, else the Debian path.

    A folder that was asked for (``root``, or the environment variable) and does not hold the files
    is an error naming it, never a silent fall back to another copy: that would train on data nobody
    asked for.
    """
    for asked, name in (
        (root, "data.root"),
        (os.environ.get("VTP_GEN_FASHION_MNIST"), "VTP_GEN_FASHION_MNIST"),
    ):
        if asked:
            folder = Path(asked)
            missing = [n for n in _FILES["train"] + _FILES["test"] if not (folder / n).is_file()]
            if missing:
                state = "does not exist" if not folder.exists() else f"lacks {', '.join(missing)}"
                raise FileNotFoundError(
                    f"{name}={folder}: {state}. Point {name} at a folder holding the four Fashion-MNIST idx "
                    f"files, or leave it unset for the default location ({DEFAULT_ROOT}, `make setup`)"
                )
            return folder
    candidates = [DEFAULT_ROOT]
    for folder in candidates:
        if all((folder / name).is_file() for name in _FILES["train"] + _FILES["test"]):
            return folder
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"Fashion-MNIST idx files not found (looked in: {looked}). Run `make setup`, which installs the "
        "Debian package (`apt-get install -y dataset-fashion-mnist`, files land in "
        f"{DEFAULT_ROOT}), or put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in a folder and pass data.root=FOLDER "
        "(or set VTP_GEN_FASHION_MNIST=FOLDER)."
    )


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (big-endian header: magic with the rank in its low byte, then the dims)."""
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte payload
        raise ValueError(f"{path}: not an unsigned-byte idx file (magic {magic:#x})")
    rank = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank)
    if payload.size != int(np.prod(dims)):
        raise ValueError(
            f"{path}: expected {int(np.prod(dims))} values for dims {dims}, found {payload.size}"
        )
    return payload.reshape(dims)


class FashionMNIST(Dataset):
    """Fashion-MNIST as labelled RGB images, optionally with captions made from the labels.

    Each item is a dict: ``image`` (a PIL RGB image, or ``transform(image)``),
    ``label`` (int), ``key`` (str) and, with ``with_captions``, ``caption`` (str).
    """

    class_names = CLASS_NAMES

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        transform=None,
        with_captions: bool = False,
        max_samples: int = 0,
        caption_variants: float = 0.0,
    ):
        if split not in _FILES:
            raise ValueError(f"Fashion-MNIST split must be one of {sorted(_FILES)}, got {split!r}")
        folder = find_root(root)
        images_file, labels_file = _FILES[split]
        self.images = read_idx(folder / images_file)
        self.labels = read_idx(folder / labels_file).astype(np.int64)
        if len(self.images) != len(self.labels):
            raise ValueError(f"{folder}: {len(self.images)} images but {len(self.labels)} labels")
        if max_samples:
            self.images, self.labels = self.images[:max_samples], self.labels[:max_samples]
        self.split = split
        self.transform = transform
        self.with_captions = with_captions
        self.caption_variants = caption_variants

    def __len__(self) -> int:
        return len(self.images)

    def class_name(self, index: int) -> str:
        """The readable class name of item ``index``, without reading its image."""
        return CLASS_NAMES[int(self.labels[index])]

    def caption(self, index: int) -> str:
        """The caption of item ``index``, without decoding its image."""
        return label_caption(CLASS_NAMES[int(self.labels[index])], index, self.caption_variants)

    def __getitem__(self, index: int) -> dict:
        image = Image.fromarray(self.images[index]).convert("RGB")
        label = int(self.labels[index])
        sample = {
            "image": self.transform(image) if self.transform else image,
            "label": label,
            "key": f"{self.split}_{index:05d}",
        }
        if self.with_captions:
            sample["caption"] = self.caption(index)
        return sample
