"""Data layer: embedded dataset, image folders, webdataset shards, corrupt input counted."""

import numpy as np
import pytest
import torch
from PIL import Image
from salted_corpus import MAX_PIXELS, damage_member_header, photo, png_bytes, salted_files, write_salted_shard

from vtp_gen.config import DataConfig
from vtp_gen.data.build import build_dataloader, build_dataset
from vtp_gen.data.decode import Skipped, collate_samples, decode_caption, decode_image
from vtp_gen.data.fashion_mnist import CLASS_NAMES, FashionMNIST
from vtp_gen.data.image_folder import LabelledImageFolder
from vtp_gen.data.transforms import CenterCropNormalize, center_crop_arr, denormalize, to_uint8
from vtp_gen.data.webdataset import ImageTextShards
from vtp_gen.data.write_shards import shard_pattern, write_shards

pytestmark = pytest.mark.faults("bad input")


def test_center_crop_arr_matches_adm_semantics():
    image = Image.fromarray(np.zeros((300, 500, 3), np.uint8))
    out = center_crop_arr(image, 64)
    assert out.size == (64, 64)
    small = center_crop_arr(Image.fromarray(np.zeros((28, 28, 3), np.uint8)), 32)
    assert small.size == (32, 32)


def test_normalise_round_trip_and_uint8():
    transform = CenterCropNormalize(32)
    tensor = transform(photo())
    assert tensor.shape == (3, 32, 32)
    restored = to_uint8(tensor[None])[0]
    direct = torch.from_numpy(np.array(center_crop_arr(photo(), 32)))
    assert (restored.int() - direct.int()).abs().max() <= 1
    assert denormalize(tensor).min() >= -1e-6


@pytest.mark.parametrize("name", list(salted_files()))
def test_decode_image_classifies_each_kind(name):
    data, expected = salted_files()[name]
    result = decode_image(data, name, max_pixels=MAX_PIXELS)
    if expected.startswith("converted") or expected == "ok":
        image, repair = result
        assert image.mode == "RGB"
        assert repair == (None if expected == "ok" else expected)
    else:
        assert isinstance(result, Skipped) and result.kind == expected


def test_sixteen_bit_png_is_scaled_not_clipped():
    arr = np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)
    image, _ = decode_image(png_bytes(Image.fromarray(arr)))
    pixels = np.asarray(image)[..., 0]
    assert pixels.min() == 0 and pixels.max() == 255 and len(np.unique(pixels)) > 200


def test_captions_empty_and_not_utf8():
    assert decode_caption(b"a photo") == ("a photo", None)
    text, repair = decode_caption(b"caf\xe9 au lait")
    assert repair == "caption_not_utf8" and "caf" in text
    assert decode_caption(b"   ") == ("", None)


def test_image_folder_skips_and_counts_every_bad_file(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for name, (data, _) in salted_files().items():
            (tmp_path / cls / name).write_bytes(data)
    dataset = LabelledImageFolder(
        tmp_path, CenterCropNormalize(16), with_captions=True, max_pixels=MAX_PIXELS
    )
    assert len(dataset) == 2 * len(salted_files())
    batches = list(build_dataloader(dataset, DataConfig(batch_size=5)))
    issues: dict[str, int] = {}
    for batch in batches:
        for kind, n in batch["data_issues"].items():
            issues[kind] = issues.get(kind, 0) + n
    expected = {}
    for _, kind in salted_files().values():
        if kind != "ok":
            expected[kind] = expected.get(kind, 0) + 2
    assert issues == expected
    usable = sum(b["size"] for b in batches)
    assert usable == 2 * sum(1 for _, k in salted_files().values() if k == "ok" or k.startswith("converted"))
    batch = next(b for b in batches if b["size"])
    assert batch["image"].shape[1:] == (3, 16, 16) and batch["label"].dtype == torch.long
    assert all(isinstance(c, str) and c for c in batch["caption"])


def test_missing_image_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.root"):
        LabelledImageFolder(tmp_path / "nope")


def test_webdataset_counts_bad_members_and_captions(tmp_path):
    shard = tmp_path / "shard-000000.tar"
    write_salted_shard(shard)
    dataset = ImageTextShards(str(shard), CenterCropNormalize(16), max_pixels=MAX_PIXELS)
    batch = collate_samples(list(dataset))
    issues = batch["data_issues"]
    assert issues["empty_caption"] == 1 and issues["caption_not_utf8"] == 1
    assert issues["truncated_image"] == 1 and issues["empty_file"] == 1 and issues["not_an_image"] == 1
    assert issues["too_large_image"] == 1 and issues["converted_cmyk"] == 1
    assert batch["size"] == 4 + 5 + 1  # good + good/gray/cmyk/16bit/palette + latin-1 caption


def test_webdataset_survives_a_malformed_tar_member(tmp_path):
    shard = tmp_path / "shard-000000.tar"
    write_salted_shard(shard, n_good=6)
    damage_member_header(shard, "0003.jpg")  # a member in the middle
    second = tmp_path / "shard-000001.tar"
    write_salted_shard(second, n_good=3)
    dataset = ImageTextShards(
        f"{tmp_path}/shard-{{000000..000001}}.tar", CenterCropNormalize(16), max_pixels=MAX_PIXELS
    )
    batch = collate_samples(list(dataset))
    assert batch["data_issues"].get("bad_tar_member", 0) >= 1
    assert batch["size"] >= 3 + 3  # the second shard is read in full, the first up to the damage


@pytest.mark.usefixtures("fashion_mnist")
def test_fashion_mnist_yields_labelled_images_and_captions():
    train = FashionMNIST(split="train", transform=CenterCropNormalize(32), with_captions=True)
    test = FashionMNIST(split="test")
    assert len(train) == 60_000 and len(test) == 10_000
    item = train[0]
    assert item["image"].shape == (3, 32, 32) and 0 <= item["label"] < 10
    assert CLASS_NAMES[item["label"]] in item["caption"]
    captions = {train[i]["caption"].replace(CLASS_NAMES[train[i]["label"]], "X") for i in range(50)}
    assert len(captions) >= 5, "captions should vary across templates"
    counts = np.bincount(train.labels, minlength=10)
    assert (counts == 6000).all()


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    import vtp_gen.data.fashion_mnist as fm

    monkeypatch.setattr(fm, "DEFAULT_ROOT", tmp_path / "absent")
    monkeypatch.delenv("VTP_GEN_FASHION_MNIST", raising=False)
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        fm.FashionMNIST()
    # A folder that was asked for is never replaced by another copy: the error names it.
    with pytest.raises(FileNotFoundError, match=r"data.root=.*also-absent: does not exist"):
        fm.FashionMNIST(tmp_path / "also-absent")


@pytest.mark.usefixtures("fashion_mnist")
def test_embedded_set_through_folder_and_webdataset_paths(tmp_path):
    cfg = DataConfig(source="fashion_mnist", max_samples=64, batch_size=16, image_size=32)
    transform = CenterCropNormalize(cfg.image_size)
    labelled = next(iter(build_dataloader(build_dataset(cfg, transform), cfg)))
    assert labelled["image"].shape == (16, 3, 32, 32) and labelled["label"].shape == (16,)

    source = FashionMNIST(split="train", with_captions=True, max_samples=64)
    paths = write_shards(source, tmp_path / "wds", shard_size=20, image_size=32)
    assert len(paths) == 4
    wds_cfg = DataConfig(source="webdataset", shards=shard_pattern(paths), batch_size=16)
    pairs = list(build_dataloader(build_dataset(wds_cfg, transform, with_captions=True), wds_cfg))
    assert sum(b["size"] for b in pairs) == 64
    first = pairs[0]
    assert first["image"].shape == (16, 3, 32, 32) and len(first["caption"]) == 16
    # The webdataset path carries the same labels and pixels as the source.
    keys = [int(k) for b in pairs for k in b["key"]]
    labels = [int(v) for b in pairs for v in b["label"]]
    assert all(source[k]["label"] == lab for k, lab in zip(keys, labels))
    assert torch.allclose(first["image"][0], transform(source[keys[0]]["image"]), atol=1e-6)


@pytest.mark.usefixtures("fashion_mnist")
def test_resampled_stream_is_endless_and_split_per_worker(tmp_path):
    source = FashionMNIST(split="test", with_captions=True, max_samples=40)
    paths = write_shards(source, tmp_path, shard_size=10)
    cfg = DataConfig(
        source="webdataset", shards=shard_pattern(paths), resampled=True, batch_size=8, num_workers=2
    )
    loader = build_dataloader(build_dataset(cfg, CenterCropNormalize(16), with_captions=True), cfg)
    seen = 0
    for i, batch in enumerate(loader):
        seen += batch["size"]
        if i == 11:
            break
    assert seen == 12 * 8  # more than the 40 images: the stream does not end


@pytest.mark.usefixtures("fashion_mnist")
def test_caption_variants_name_garments_as_people_do():
    plain = build_dataset(DataConfig(max_samples=2000), with_captions=True)
    mixed = build_dataset(DataConfig(max_samples=2000, caption_variants=0.25), with_captions=True)
    changed = [i for i in range(len(plain)) if plain.caption(i) != mixed.caption(i)]
    # About a quarter of the captions change (the index hash picks them), the rest stay the label's.
    assert 0.2 < len(changed) / len(plain) < 0.3
    trouser_captions = {mixed.caption(i) for i in changed if mixed.class_name(i) == "trouser"}
    assert any("trousers" in c for c in trouser_captions) and any("pants" in c for c in trouser_captions)
    # Deterministic per index (resume-exact) and carried by the items too.
    again = FashionMNIST(split="train", with_captions=True, max_samples=2000, caption_variants=0.25)
    assert [again.caption(i) for i in changed[:50]] == [mixed.caption(i) for i in changed[:50]]
    assert mixed[changed[0]]["caption"] == mixed.caption(changed[0])
    assert build_dataset(DataConfig(max_samples=50, caption_variants=1.0), with_captions=True).caption(
        0
    ) != plain.caption(0)
