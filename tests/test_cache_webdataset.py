"""Latent caching read straight from img2dataset webdataset shards (jpg/png + txt [+ json]).

The test writes three small tar shards with the webdataset library, caches
them with the official-layout tiny VTP fixture and checks the global index
(shard order x position in the shard), the captions.json written beside the
latents, the accounting of broken samples, and that a resume reads the same
mapping.
"""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from safetensors.torch import load_file

from vtp_gen.config import load_config
from vtp_gen.data.transforms import CenterCropNormalize
from vtp_gen.data.webdataset_index import INDEX_FILE, IndexedImageTextShards
from vtp_gen.interop.vtp import load_tokenizer
from vtp_gen.latents.manifest import CacheMismatchError
from vtp_gen.latents.verify import verify_cache
from vtp_gen.pipeline.cache.config import CacheConfig
from vtp_gen.pipeline.cache.run import run
from vtp_gen.t2i.captions import CacheCaptions

SHARD_SIZES = (5, 4, 3)  # tar shards of unequal length; cache shards of 4 straddle them


def png(rng: np.random.Generator, height: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, 48, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shards(folder: Path, seed: int = 0, height: int = 40) -> tuple[str, list[dict]]:
    """Tar shards 00000..00002; returns the pattern and every sample as written, in global order."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for shard, count in enumerate(SHARD_SIZES):
        with wds.TarWriter(str(folder / f"{shard:05d}.tar")) as sink:
            for position in range(count):
                key = f"{shard:05d}{position:04d}"
                sample = {
                    "__key__": key,
                    "png": png(rng, height + position),
                    "txt": f"picture {shard}-{position}",
                }
                if position == 1:  # caption in the json instead, with a label
                    del sample["txt"]
                    sample["json"] = json.dumps({"caption": f"json caption {shard}", "label": 3}).encode()
                if (shard, position) == (1, 2):
                    sample["png"] = b"not a png at all"
                if (shard, position) == (2, 0):
                    sample["txt"] = "   "  # no caption: not an image-text pair
                sink.write(sample)
                samples.append(sample)
    return str(folder / "{00000..00002}.tar"), samples


def cache_config(tokenizer: Path, out_dir: Path, shards: str, *overrides: str):
    return load_config(
        CacheConfig,
        None,
        [
            f"tokenizer={tokenizer}",
            f"out_dir={out_dir}",
            "data.source=webdataset",
            f"data.shards={shards}",
            "data.image_size=64",
            "data.batch_size=3",
            "shard_size=4",
            "stats_max_images=0",
            "accelerator=cpu",
            "devices=1",
            "progress_bar=false",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[str, list[dict]]:
    return write_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def cache(tokenizer_dir, written, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cache")
    run(cache_config(tokenizer_dir, folder, written[0]))
    return folder


def read_all(folder: Path) -> dict[str, torch.Tensor]:
    manifest = json.loads((folder / "manifest.json").read_text())
    parts = [load_file(str(folder / shard["file"])) for shard in manifest["shards"]]
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


def test_global_index_is_shard_order_by_position(written, tmp_path):
    shards, samples = written
    dataset = IndexedImageTextShards(shards, index_file=tmp_path / INDEX_FILE)
    assert len(dataset) == sum(SHARD_SIZES)
    assert [dataset.location(i)[1] for i in range(len(dataset))] == [s["__key__"] for s in samples]
    assert dataset.location(6)[0].endswith("00001.tar")
    record = json.loads((tmp_path / INDEX_FILE).read_text())
    assert [s["first_index"] for s in record["shards"]] == [0, 5, 9]
    assert dataset.caption(1) == "json caption 0" and dataset.caption(9) == ""
    item = dataset[1]
    assert item["caption"] == "json caption 0" and item["label"] == 3 and item["key"] == "000000001"
    assert dataset[0]["label"] == -1  # no label in the shard
    assert np.asarray(dataset[0]["image"]).shape == (40, 48, 3)
    assert dataset[7].kind == "not_an_image" and dataset[9].kind == "empty_caption"
    assert len(IndexedImageTextShards(shards, max_samples=7)) == 7


def test_webdataset_cache_holds_latents_and_captions_by_global_index(cache, tokenizer_dir, written):
    _, samples = written
    report = verify_cache(cache)
    assert report.ok, str(report)
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["counts"] == {
        "images": 10,
        "skipped": {"not_an_image": 1, "empty_caption": 1},
        "shards": 3,
    }
    stored = read_all(cache)
    kept = [i for i in range(len(samples)) if i not in (7, 9)]
    assert stored["indices"].tolist() == kept
    assert stored["labels"].tolist() == [
        3 if s.get("json") else -1 for i, s in enumerate(samples) if i in kept
    ]
    # The latents are the tokenizer's, of the images the global index names.
    crop = CenterCropNormalize(64)
    images = torch.stack([crop(Image.open(io.BytesIO(samples[i]["png"])).convert("RGB")) for i in kept])
    with torch.inference_mode():
        expected = load_tokenizer(tokenizer_dir).get_reconstruction_latents(images)
    torch.testing.assert_close(stored["latents"], expected, atol=1e-5, rtol=1e-5)
    # captions.json, in the text-to-image format, keyed by the same global index.
    captions = json.loads((cache / "captions.json").read_text())
    assert captions["dataset_fingerprint"] == manifest["dataset"]["fingerprint"]
    by_index = [[captions["captions"][c] for c in ids] for ids in captions["per_image"]]
    assert by_index[0] == ["picture 0-0"] and by_index[5 + 1] == ["json caption 1"] and by_index[9] == []
    table = CacheCaptions.load(cache, sorted(cache.glob("latents_*.safetensors")))
    assert [table.captions[int(row[0])] for row in table.choices] == [by_index[i][0] for i in kept]


def test_webdataset_cache_resumes_with_the_recorded_index(
    cache, tokenizer_dir, written, tmp_path, monkeypatch
):
    import vtp_gen.data.webdataset_index as index_module
    import vtp_gen.pipeline.cache.run as cache_run

    folder = tmp_path / "partial"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed before the manifest")

    with monkeypatch.context() as patch:  # a first run that dies after its shards, before finalising
        patch.setattr(cache_run, "finalize_cache", killed)
        with pytest.raises(KeyboardInterrupt):
            run(cache_config(tokenizer_dir, folder, written[0]))
    (folder / "latents_rank00_shard002.safetensors").unlink()  # the shard it was writing when killed

    def no_rescan(path):
        raise AssertionError(f"rescanned {path} although the recorded index still matches")

    monkeypatch.setattr(index_module, "scan_shard", no_rescan)
    result = run(cache_config(tokenizer_dir, folder, written[0]))
    assert result.images_encoded == 3  # the last cache shard only: indices 8, 10, 11 (9 has no caption)
    assert result.manifest["dataset"] == json.loads((cache / "manifest.json").read_text())["dataset"]
    for k in range(3):
        name = f"latents_rank00_shard{k:03d}.safetensors"
        assert (folder / name).read_bytes() == (cache / name).read_bytes()
    assert (folder / "captions.json").read_text() == (cache / "captions.json").read_text()


def test_changed_shards_are_refused_and_remote_shards_named(cache, tokenizer_dir, tmp_path):
    # Same keys, other images (the fingerprint hashes keys and member sizes, not every byte).
    other, _ = write_shards(tmp_path / "other", seed=1, height=44)
    with pytest.raises(CacheMismatchError, match="dataset.fingerprint"):
        run(cache_config(tokenizer_dir, cache, other))
    with pytest.raises(ValueError, match="must be local files"):
        IndexedImageTextShards("https://example.com/{00000..00001}.tar")
