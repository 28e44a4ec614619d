"""Image sources for the metrics and the ADM .npz format."""

import numpy as np
import pytest
import torch
from PIL import Image

from vtp_gen.interop.adm_npz import (
    adm_npz_image_count,
    iter_adm_npz_images,
    load_adm_npz,
    save_adm_npz,
)
from vtp_gen.metrics.images import count_images, float_to_uint8, iter_image_batches


@pytest.fixture
def images_nhwc():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(11, 12, 10, 3), dtype=np.uint8)


def test_adm_npz_round_trip(tmp_path, images_nhwc):
    mu = np.arange(4.0)
    sigma = np.eye(4)
    path = save_adm_npz(tmp_path / "ref.npz", images_nhwc, mu=mu, sigma=sigma, labels=np.arange(11))
    batch = load_adm_npz(path)
    np.testing.assert_array_equal(batch.images, images_nhwc)
    np.testing.assert_array_equal(batch.mu, mu)
    np.testing.assert_array_equal(batch.sigma, sigma)
    np.testing.assert_array_equal(batch.extra["labels"], np.arange(11))
    assert load_adm_npz(path, load_images=False).images is None
    # What the ADM evaluator does: np.load(path)["arr_0"].
    with np.load(path) as data:
        np.testing.assert_array_equal(data["arr_0"], images_nhwc)
    assert adm_npz_image_count(path) == 11


def test_adm_npz_streams_in_batches(tmp_path, images_nhwc):
    path = save_adm_npz(tmp_path / "samples.npz", images_nhwc)
    batches = list(iter_adm_npz_images(path, 4))
    assert [len(b) for b in batches] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate(batches), images_nhwc)


def test_adm_npz_rejects_bad_input(tmp_path, images_nhwc):
    with pytest.raises(ValueError, match="uint8"):
        save_adm_npz(tmp_path / "f.npz", images_nhwc.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        save_adm_npz(tmp_path / "f.npz", images_nhwc[..., :1])
    with pytest.raises(ValueError, match="both"):
        save_adm_npz(tmp_path / "f.npz", images_nhwc, mu=np.zeros(3))
    # Object arrays need pickle: reading them must fail instead of unpickling.
    evil = tmp_path / "evil.npz"
    np.savez(evil, arr_0=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        load_adm_npz(evil)


def _write_folder(folder, images_nhwc):
    folder.mkdir()
    for i, image in enumerate(images_nhwc):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return folder


def test_every_source_gives_the_same_batches(tmp_path, images_nhwc):
    expected = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)
    npz = save_adm_npz(tmp_path / "s.npz", images_nhwc)
    folder = _write_folder(tmp_path / "pngs", images_nhwc)
    sources = {
        "tensor": expected.clone(),
        "numpy": images_nhwc,
        "npz": npz,
        "folder": folder,
        "iterable": (expected[i : i + 5] for i in range(0, 11, 5)),
    }
    for name, source in sources.items():
        batches = list(iter_image_batches(source, batch_size=4))
        assert all(b.dtype == torch.uint8 and b.shape[1] == 3 and len(b) <= 4 for b in batches), name
        assert torch.equal(torch.cat(batches), expected), name
    assert count_images(folder) == 11 and count_images(npz) == 11 and count_images(images_nhwc) == 11


def test_folder_with_mixed_sizes_and_broken_files(tmp_path, images_nhwc):
    folder = _write_folder(tmp_path / "mixed", images_nhwc[:3])
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "100.png")
    Image.fromarray(np.zeros((12, 10), np.uint8)).convert("L").save(folder / "101.png")  # greyscale -> RGB
    shapes = [tuple(b.shape) for b in iter_image_batches(folder, batch_size=8)]
    assert shapes == [(3, 3, 12, 10), (1, 3, 20, 20), (1, 3, 12, 10)]
    (folder / "102.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="102.png"):
        list(iter_image_batches(folder, batch_size=8))


def test_float_images_need_an_explicit_conversion():
    images = torch.tensor([-1.0, -0.999, 0.0, 0.5, 1.0, 1.5]).view(1, 1, 2, 3).expand(1, 3, 2, 3)
    with pytest.raises(ValueError, match="float_to_uint8"):
        list(iter_image_batches(images))
    as_uint8 = float_to_uint8(images)
    assert as_uint8[0, 0].flatten().tolist() == [0, 0, 128, 191, 255, 255]
    assert float_to_uint8(torch.tensor([0.0, 0.5, 1.0]), value_range=(0, 1)).tolist() == [0, 128, 255]
