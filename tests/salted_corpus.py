"""A corpus salted with every kind of broken input, shared by the data-layer and end-to-end tests.

``salted_files()`` maps a file name to (bytes, what must happen): "ok", a
repair kind (the sample is used after a fix) or a skip kind (it is left out
and counted). Images are 48x40 except the 300x300 one that trips the
decompression-bomb guard at ``MAX_PIXELS``.
"""

import io
import json
import tarfile
from collections import Counter

import numpy as np
from PIL import Image

MAX_PIXELS = 50_000  # 300x300 trips the bomb guard; the 48x40 images pass


def png_bytes(image: Image.Image, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kw)
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def photo(size=(48, 40), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def salted_files() -> dict[str, tuple[bytes, str]]:
    good = photo()
    sixteen = Image.fromarray(np.arange(48 * 40, dtype=np.uint16).reshape(40, 48) * 30)
    return {
        "good.jpg": (jpeg_bytes(good), "ok"),
        "truncated.jpg": (jpeg_bytes(good)[:300], "truncated_image"),
        "zero.jpg": (b"", "empty_file"),
        "notimage.jpg": (b"this is a text file, not a jpeg" * 10, "not_an_image"),
        "gray.png": (png_bytes(good.convert("L")), "converted_l"),
        "cmyk.jpg": (jpeg_bytes(good.convert("CMYK")), "converted_cmyk"),
        "sixteen.png": (png_bytes(sixteen), "converted_16bit"),
        "palette.png": (png_bytes(good.convert("P")), "converted_p"),
        "huge.png": (png_bytes(Image.new("RGB", (300, 300))), "too_large_image"),
    }


def tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_salted_shard(path, n_good=4, metadata_faults: bool = False) -> None:
    """Good pairs, every salted image with a caption, an empty caption and a caption that is not UTF-8.

    ``metadata_faults`` adds a sample whose json label is ``"abc"`` and one whose json is not JSON.
    """
    with tarfile.open(path, "w") as tar:
        for i in range(n_good):
            tar_member(tar, f"{i:04d}.jpg", jpeg_bytes(photo(seed=i)))
            tar_member(tar, f"{i:04d}.txt", f"a photo number {i}".encode())
            tar_member(tar, f"{i:04d}.json", json.dumps({"label": i % 2}).encode())
        for j, (name, (data, _)) in enumerate(salted_files().items()):
            key = f"bad{j:02d}"
            tar_member(tar, f"{key}.{name.rsplit('.', 1)[1]}", data)
            tar_member(tar, f"{key}.txt", b"a caption")
        tar_member(tar, "empty_caption.jpg", jpeg_bytes(photo()))
        tar_member(tar, "empty_caption.txt", b"")
        tar_member(tar, "latin1.jpg", jpeg_bytes(photo()))
        tar_member(tar, "latin1.txt", b"caf\xe9")
        if metadata_faults:
            for key, meta in (("badlabel", b'{"label": "abc"}'), ("badjson", b'{"label": 1,')):
                tar_member(tar, f"{key}.jpg", jpeg_bytes(photo()))
                tar_member(tar, f"{key}.txt", b"a caption")
                tar_member(tar, f"{key}.json", meta)


def planted_in_shard(n_good=4, metadata_faults: bool = False) -> Counter:
    """What :func:`write_salted_shard` plants, by kind ("ok" = used as it is), captions required."""
    planted = Counter({"ok": n_good, "empty_caption": 1, "caption_not_utf8": 1})
    planted.update(kind for _, kind in salted_files().values())
    if metadata_faults:
        planted.update(["bad_label", "bad_json"])
    return planted


def damage_member_header(path, member: str) -> None:
    """Overwrite the tar header of ``member`` so its checksum no longer matches."""
    raw = bytearray(path.read_bytes())
    offset = raw.find(member.encode())
    raw[offset : offset + 100] = b"\xff" * 100
    path.write_bytes(bytes(raw))
