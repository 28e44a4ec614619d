"""Write a labelled image set as image-text webdataset shards (img2dataset layout).

Lets tests and the embedded default exercise exactly the image-text path that
DataComp-scale runs use:

    python -m vtp_gen.data.write_shards --source fashion_mnist --split train --out data/fmnist_wds
"""

from __future__ import annotations

import argparse
import io
import json
from collections import Counter
from pathlib import Path

import webdataset as wds
from tqdm import tqdm

from vtp_gen.data.decode import Skipped
from vtp_gen.data.fashion_mnist import FashionMNIST
from vtp_gen.data.image_folder import LabelledImageFolder
from vtp_gen.data.transforms import center_crop_arr
from vtp_gen.utils.atomic import write_json_atomic


def write_shards(dataset, out_dir: str | Path, shard_size: int = 10_000, image_size: int = 0) -> list[Path]:
    """Write ``dataset`` items (dicts with a PIL ``image``, ``label``, ``caption``) as PNG + txt + json.

    ``image_size`` > 0 applies the ADM centre crop first. Returns the shard paths.
    Shards are written under a temporary name and renamed when complete.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    skipped: Counter[str] = Counter()
    n_shards = (len(dataset) + shard_size - 1) // shard_size
    with tqdm(total=len(dataset), desc=f"writing {n_shards} shards to {out}", unit="img") as bar:
        for shard in range(n_shards):
            final = out / f"shard-{shard:06d}.tar"
            tmp = final.with_suffix(".tar.tmp")
            count = 0
            with wds.TarWriter(str(tmp)) as sink:
                for index in range(shard * shard_size, min((shard + 1) * shard_size, len(dataset))):
                    sample = dataset[index]
                    if isinstance(sample, Skipped):
                        skipped[sample.kind] += 1
                        continue
                    image = sample["image"]
                    if image_size:
                        image = center_crop_arr(image, image_size)
                    buffer = io.BytesIO()
                    image.save(buffer, format="PNG")
                    meta = {"label": int(sample["label"]), "caption": sample["caption"]}
                    sink.write(
                        {
                            "__key__": f"{index:09d}",
                            "png": buffer.getvalue(),
                            "txt": sample["caption"],
                            "json": json.dumps(meta),
                        }
                    )
                    count += 1
                    bar.update(1)
            tmp.replace(final)
            # The sample count beside the shard: a reader counts every sample a truncated copy lost.
            write_json_atomic(final.with_name(f"{final.stem}_stats.json"), {"count": count})
            written.append(final)
    if skipped:
        print(f"skipped unusable source images: {dict(skipped)}")
    return written


def shard_pattern(paths: list[Path]) -> str:
    """A brace pattern webdataset expands back to ``paths`` (consecutive shard numbers)."""
    if len(paths) == 1:
        return str(paths[0])
    return str(paths[0].parent / f"shard-{{{0:06d}..{len(paths) - 1:06d}}}.tar")


def main(argv: list[str] | None = None) -> None:

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", choices=["fashion_mnist", "image_folder"], default="fashion_mnist")
    parser.add_argument("--root", default="", help="dataset root (idx folder or class-folder root)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", required=True)
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--image-size", type=int, default=0, help="ADM centre crop to this size first")
    parser.add_argument("--max-samples", type=int, default=0)
    args = parser.parse_args(argv)
    if args.source == "fashion_mnist":
        dataset = FashionMNIST(
            args.root or None, args.split, with_captions=True, max_samples=args.max_samples
        )
    else:
        dataset = LabelledImageFolder(args.root, with_captions=True, max_samples=args.max_samples)
    paths = write_shards(dataset, args.out, args.shard_size, args.image_size)
    print(f"wrote {len(dataset)} samples in {len(paths)} shards: data.shards='{shard_pattern(paths)}'")


if __name__ == "__main__":
    main()
