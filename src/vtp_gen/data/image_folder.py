"""Labelled image folders in the ImageNet layout: ``root/<class>/<image>``.

Files are decoded with :func:`vtp_gen.data.decode.decode_image`, so a broken
file becomes a counted :class:`~vtp_gen.data.decode.Skipped` record instead of a
crash (see :func:`~vtp_gen.data.decode.collate_samples`).
"""

from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import Dataset

from vtp_gen.data.captions import label_caption
from vtp_gen.data.decode import DEFAULT_MAX_PIXELS, UNREADABLE_FILE, Skipped, decode_image

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


class LabelledImageFolder(Dataset):
    """``root/<class>/<file>`` -> dict(image, label, key[, caption]) or :class:`Skipped`.

    Classes are the sorted sub-folder names (ImageNet's synset order when the
    folders are synsets). ``class_names`` can map folder names to readable names
    for captions and zero-shot prompts.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform=None,
        with_captions: bool = False,
        max_samples: int = 0,
        caption_variants: float = 0.0,
        class_names: dict[str, str] | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"image folder {self.root} does not exist: pass data.root=FOLDER with one sub-folder per "
                "class (the ImageNet train/val layout)"
            )
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        if not self.classes:
            raise FileNotFoundError(f"{self.root} has no class sub-folders (expected root/<class>/<image>)")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.class_names = [(class_names or {}).get(c, c.replace("_", " ")) for c in self.classes]
        self.files: list[tuple[Path, int]] = []
        for cls in self.classes:
            for path in sorted((self.root / cls).iterdir()):
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    self.files.append((path, self.class_to_idx[cls]))
        present = {label for _, label in self.files}
        empty = [c for c in self.classes if self.class_to_idx[c] not in present]
        if empty:
            # It would still take a class index (and a label no sample has): refuse instead.
            raise ValueError(
                f"image folder {self.root}: class folder(s) {', '.join(empty[:5])} hold no images "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove the folder(s)"
            )
        if max_samples:
            self.files = self.files[:max_samples]
        self.transform = transform
        self.with_captions = with_captions
        self.caption_variants = caption_variants
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.files)

    def class_name(self, index: int) -> str:
        """The readable class name of item ``index``, without reading its image."""
        return self.class_names[self.files[index][1]]

    def caption(self, index: int) -> str:
        """The caption of item ``index``, without reading its image."""
        return label_caption(self.class_names[self.files[index][1]], index, self.caption_variants)

    def __getitem__(self, index: int) -> dict | Skipped:
        path, label = self.files[index]
        key = f"{path.parent.name}/{path.stem}"
        try:
            data = path.read_bytes()
        except OSError as e:  # a symlink loop, a permission or I/O error: skipped and counted
            return Skipped(UNREADABLE_FILE, key, str(e))
        decoded = decode_image(data, key, self.max_pixels)
        if isinstance(decoded, Skipped):
            return decoded
        image, repair = decoded
        sample = {
            "image": self.transform(image) if self.transform else image,
            "label": label,
            "key": key,
            "issues": [repair] if repair else [],
        }
        if self.with_captions:
            sample["caption"] = self.caption(index)
        return sample
