"""Disk faults: a write that fails for lack of space stops cleanly and leaves nothing half-written.

The fault is real: the code runs in a subprocess under a file-size limit
(``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored), so the write past the limit
fails with ``EFBIG`` exactly as on a full disk (``ENOSPC`` takes the same
path). chmod-based read-only folders cannot be tested here: the tests run as
root. Each case checks that no file under a real name is partial, that no
temporary file is left, that the CLI says so in one line with exit status 1,
and that the same command, with space again, resumes and completes.

Every subprocess pays ~6 s of CPU to import torch and Lightning, so each
scenario chains its faults in as few processes as it can.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_latents_resume import overrides as cache_overrides
from test_stage2_helpers import assert_identical, final_state, tiny_overrides

import vtp_gen
from vtp_gen.data.images import load_png
from vtp_gen.latents.verify import verify_cache

pytestmark = pytest.mark.faults("disk faults")

# Runs `vtp-gen <args>` with a file-size limit: from the start, or (LIMIT_AT=module:attribute[#N]) from the
# moment that function or method is entered (for the N-th time), so a fault can be put at one exact write.
LIMITED_CLI = """
import importlib, os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
def apply_limit():
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
where = os.environ.get("LIMIT_AT")
if where:
    target, _, nth = where.partition("#")
    module_name, attribute = target.split(":")
    owner = importlib.import_module(module_name)
    *parents, name = attribute.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original = getattr(owner, name)
    calls = [0]
    def limited(*args, **kwargs):
        calls[0] += 1
        if calls[0] == int(nth or 1):
            apply_limit()
        return original(*args, **kwargs)
    setattr(owner, name, limited)
else:
    apply_limit()
from vtp_gen.pipeline.cli import main
sys.exit(main(sys.argv[2:]))
"""


# The child imports the vtp_gen this process tests (this checkout's src), whatever the environment installed.
VTP_GEN_SOURCE = str(Path(vtp_gen.__file__).resolve().parents[1])


def limited_cli(limit: int, args: list[str], limit_at: str | None = None) -> subprocess.CompletedProcess:
    # No bytecode caches: a .pyc written under the limit would be cut short and break later imports.
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": VTP_GEN_SOURCE,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if limit_at:
        env["LIMIT_AT"] = limit_at
    command = [sys.executable, "-c", LIMITED_CLI, str(limit), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


NO_LIMIT = 1 << 40


def assert_one_line_write_error(result: subprocess.CompletedProcess, file_name: str) -> None:
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert last.startswith("vtp-gen ") and "error: could not write" in last and "File too large" in last
    assert file_name in last, last


def temporary_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".tmp" in p.name]


# ----------------------------------------------------------------------------- single writers
WRITERS = """
import json, resource, signal, sys, numpy as np, torch
from pathlib import Path
from vtp_gen.systems.trainer import AtomicCheckpointIO
from vtp_gen.systems.sampling import write_adm_npz
from vtp_gen.utils.atomic import write_bytes_atomic, write_text_atomic
from vtp_gen.data.images import save_png
from vtp_gen.utils.atomic import write_json_atomic
from vtp_gen.latents.finalize import save_stats
folder = Path(sys.argv[1])
pixels = np.random.default_rng(0).integers(0, 255, (3, 96, 96, 3), np.uint8)
for index, image in enumerate(pixels):  # 27 KB PNGs, made before the limit; the .npz of them is 83 KB
    save_png(image, folder / "png" / f"{index:06d}.png")
cases = {
    "checkpoint.ckpt": lambda p: AtomicCheckpointIO().save_checkpoint({"w": torch.randn(50_000)}, p),
    "shard.safetensors": lambda p: write_bytes_atomic(p, b"x" * 300_000, fsync=True),
    "sample.png": lambda p: save_png(np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8), p),
    "samples.npz": lambda p: write_adm_npz(p, folder / "png", 3, torch.arange(3)),
    "manifest.json": lambda p: write_json_atomic(p, {"shards": list(range(50_000))}),
    "report.md": lambda p: write_text_atomic(p, "| metric | value |" * 5_000),
    "latents_stats.pt": lambda p: save_stats(p.parent, torch.zeros(30_000), torch.ones(30_000)),
}
for name, write in cases.items():  # a complete old version of each file first
    (folder / name).write_bytes(b"previous complete version")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
outcome = {}
for name, write in cases.items():
    try:
        write(folder / name)
        outcome[name] = "written"
    except OSError as e:
        outcome[name] = [e.errno, e.filename]
print(json.dumps(outcome))
"""


def test_every_atomic_writer_turns_a_full_disk_into_a_clean_oserror(tmp_path):
    done = subprocess.run(
        [sys.executable, "-B", "-c", WRITERS, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(outcome) == 7
    for name, result in outcome.items():
        # torch.save, safetensors and zipfile report the failure as their own errors: it arrives as EFBIG.
        assert result == [27, str(tmp_path / name)], (name, result)
        assert (tmp_path / name).read_bytes() == b"previous complete version", name
    assert not temporary_files(tmp_path)


# ----------------------------------------------------------------------------- stage 2 checkpoints
def test_a_full_disk_at_a_stage2_checkpoint_keeps_the_last_good_one(stage2_cache, uninterrupted, tmp_path):
    args = ["stage2", *tiny_overrides(tmp_path, "full", stage2_cache)]
    checkpoints = tmp_path / "full" / "stage2" / "checkpoints"
    # Lightning saves step00000004.ckpt, last.ckpt, step00000008.ckpt (and deletes the step-4 file: one
    # step checkpoint is kept), last.ckpt, ... The disk fills at the fourth save: the step-8 last.ckpt.
    limit = 64 * 1024
    result = limited_cli(limit, args, limit_at="vtp_gen.systems.trainer:AtomicCheckpointIO.save_checkpoint#4")
    assert_one_line_write_error(result, "last.ckpt")
    step8 = checkpoints / "step00000008.ckpt"
    assert torch.load(step8, weights_only=True)["global_step"] == 8
    assert step8.stat().st_size > limit  # the limit really cut the checkpoint short
    # last.ckpt was not replaced: still the whole, readable step-4 checkpoint.
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 4
    assert not temporary_files(tmp_path)
    # With space again, the same command resumes from the newest complete checkpoint (step 8, not the
    # older last.ckpt) and ends bit-identical to an uninterrupted run.
    rerun = limited_cli(NO_LIMIT, args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {step8}" in rerun.stdout
    assert_identical(final_state(tmp_path / "full"), uninterrupted)
    assert not temporary_files(tmp_path)


# ----------------------------------------------------------------------------- latent cache
def shard_files(folder: Path) -> dict[str, tuple[int, int]]:
    """Shard name -> (inode, mtime): unchanged when a rerun keeps the file."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.glob("*.safetensors"))}


@pytest.mark.usefixtures("fashion_mnist")
def test_a_full_disk_while_caching_leaves_only_complete_shards_and_no_manifest(reference_dir, tmp_path):
    folder = tmp_path / "cache"
    args = ["cache", *cache_overrides(reference_dir / "vtp_tiny_default", folder)]
    # 1. The disk fills at the sixth of 15 shards (20 latents + flips, ~41 KB each).
    result = limited_cli(16 * 1024, args, limit_at="vtp_gen.latents.writer:write_bytes_atomic#6")
    assert_one_line_write_error(result, "latents_rank00_shard005.safetensors")
    assert not temporary_files(folder)
    assert not (folder / "manifest.json").exists() and not (folder / "latents_stats.pt").exists()
    kept = shard_files(folder)
    assert sorted(kept) == [f"latents_rank00_shard{k:03d}.safetensors" for k in range(5)]
    for shard, name in enumerate(kept):  # every file under a shard name is whole and is what was recorded
        record = json.loads((folder / "progress" / f"shard{shard:06d}.json").read_text())
        data = (folder / name).read_bytes()
        assert record["file"] == name and record["bytes"] == len(data)
        assert record["sha256"] == hashlib.sha256(data).hexdigest()
        assert load_file(folder / name)["latents"].shape[0] == 20
    assert sorted(p.name for p in (folder / "progress").glob("shard*.json")) == [
        f"shard{k:06d}.json" for k in range(5)
    ]
    # 2. The rerun writes the other 10 shards and the statistics; the disk fills at the manifest.
    result = limited_cli(1024, args, limit_at="vtp_gen.latents.finalize:write_json_atomic")
    assert_one_line_write_error(result, "manifest.json")
    assert "(10 to write)" in result.stdout
    assert torch.load(folder / "latents_stats.pt", weights_only=True)["mean"].shape[1] == 16
    assert not (folder / "manifest.json").exists() and not temporary_files(folder)
    assert not verify_cache(folder).ok  # no manifest: the cache does not claim to be complete
    shards = shard_files(folder)
    assert len(shards) == 15 and all(shards[name] == kept[name] for name in kept)
    # 3. With space, the rerun only finalises, keeps every shard, and the cache verifies.
    rerun = limited_cli(NO_LIMIT, args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "(0 to write)" in rerun.stdout
    assert verify_cache(folder).ok
    assert shard_files(folder) == shards


# ----------------------------------------------------------------------------- sample PNGs and .npz
# Slow (three `vtp-gen sample` processes, ~25 s): the PNG and .npz writers themselves are covered in CI by
# the single-writer test above; this one checks the sample command around them.
@pytest.mark.slow
def test_a_full_disk_while_sampling_leaves_whole_pngs_and_no_npz(generator_folder, reference_dir, tmp_path):
    out = tmp_path / "samples"
    args = [
        "sample",
        f"generator={generator_folder}",
        f"tokenizer={reference_dir / 'vtp_tiny_default'}",
        f"out_dir={out}",
        "num_samples=10",
        "batch_size=4",
        "sampling.steps=4",
        "grid_images=4",
        "progress_bar=false",
    ]
    images = out / "images"
    # 1. The disk fills at the seventh PNG (in the second batch of four).
    result = limited_cli(256, args, limit_at="vtp_gen.systems.sampling:save_png#7")
    assert_one_line_write_error(result, "000006.png")
    kept = {p.name: p.stat().st_mtime_ns for p in sorted(images.glob("*.png"))}
    assert sorted(kept) == [f"{i:06d}.png" for i in range(6)]
    assert all(load_png(images / name).shape == (64, 64, 3) for name in kept)  # each decodes in full
    assert not (out / "samples.npz").exists() and not (out / "grid.png").exists()
    assert not temporary_files(out)
    # 2. The rerun makes the 4 missing PNGs (each < 13 KB); the 123 KB .npz does not fit.
    result = limited_cli(32 * 1024, args)
    assert_one_line_write_error(result, "samples.npz")
    assert "(4 to make)" in result.stdout
    assert not (out / "samples.npz").exists() and not temporary_files(out)
    pngs = {p.name: p.stat().st_mtime_ns for p in sorted(images.glob("*.png"))}
    assert len(pngs) == 10 and all(pngs[name] == kept[name] for name in kept)
    # 3. With space, only the .npz (and grid) is left to write; it holds exactly the PNGs.
    rerun = limited_cli(NO_LIMIT, args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "(0 to make)" in rerun.stdout
    assert {p.name: p.stat().st_mtime_ns for p in sorted(images.glob("*.png"))} == pngs
    with np.load(out / "samples.npz") as archive:
        np.testing.assert_array_equal(archive["arr_0"], np.stack([load_png(images / n) for n in pngs]))
