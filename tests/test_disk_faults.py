"""Disk faults: a write that fails for lack of space stops cleanly and leaves nothing half-written.

The fault is real: the code runs in a subprocess under a file-size limit
(``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored), so the write past the limit
fails with ``EFBIG`` exactly as on a full disk (``ENOSPC`` takes the same
path). chmod-based read-only folders cannot be tested here: the tests run as
root. Each case checks that no file under a real name is partial, that no
temporary file is left, that the CLI says so in one line with exit status 1,
and, for the training and caching runs, that a rerun without the limit
resumes and completes.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_latents_resume import _fashion_available
from test_latents_resume import overrides as cache_overrides
from test_stage2_helpers import make_latent_cache, tiny_overrides
from test_stage2_resume import assert_identical, final_state, uninterrupted  # noqa: F401 (fixture)

from vtp_gen.latents.verify import verify_cache

# Runs `vtp-gen <args>` with a file-size limit, from the start or (LIMIT_AT=module:function) from
# the moment that function is entered, so a fault can be put exactly at one write.
LIMITED_CLI = """
import importlib, os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
def apply_limit():
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
where = os.environ.get("LIMIT_AT")
if where:
    module_name, function_name = where.split(":")
    module = importlib.import_module(module_name)
    original = getattr(module, function_name)
    def limited(*args, **kwargs):
        apply_limit()
        return original(*args, **kwargs)
    setattr(module, function_name, limited)
else:
    apply_limit()
from vtp_gen.cli import main
sys.exit(main(sys.argv[2:]))
"""


def limited_cli(limit: int, args: list[str], limit_at: str | None = None) -> subprocess.CompletedProcess:
    # No bytecode caches: a .pyc written under the limit would be cut short and break later imports.
    env = {
        "PATH": "/usr/bin:/bin",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if limit_at:
        env["LIMIT_AT"] = limit_at
    command = [sys.executable, "-c", LIMITED_CLI, str(limit), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


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
from vtp_gen.utils.atomic import write_bytes_atomic
from vtp_gen.utils.images import save_png
from vtp_gen.utils.run_dir import write_json_atomic
from vtp_gen.latents.finalize import save_stats
folder = Path(sys.argv[1])
cases = {
    "checkpoint.ckpt": lambda p: AtomicCheckpointIO().save_checkpoint({"w": torch.randn(50_000)}, p),
    "shard.safetensors": lambda p: write_bytes_atomic(p, b"x" * 300_000, fsync=True),
    "sample.png": lambda p: save_png(np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8), p),
    "manifest.json": lambda p: write_json_atomic(p, {"shards": list(range(50_000))}),
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
    for name, result in outcome.items():
        # torch.save and safetensors report the failure as their own errors: it arrives as EFBIG anyway.
        assert result == [27, str(tmp_path / name)], (name, result)
        assert (tmp_path / name).read_bytes() == b"previous complete version", name
    assert not temporary_files(tmp_path)


# ----------------------------------------------------------------------------- stage 2 checkpoints
@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_latent_cache(tmp_path_factory.mktemp("latents"))


def test_a_full_disk_at_a_stage2_checkpoint_keeps_the_last_good_one(cache, uninterrupted, tmp_path):  # noqa: F811
    args = ["stage2", *tiny_overrides(tmp_path, "full", cache)]
    checkpoints = tmp_path / "full" / "stage2" / "checkpoints"
    first = limited_cli(1 << 40, [*args, "trainer.max_steps=4"])  # no real limit: steps 1-4
    assert first.returncode == 0, first.stderr[-3000:]
    good = (checkpoints / "last.ckpt").read_bytes()
    # Room for logs and configs, not for a checkpoint: the run fails at its step-8 checkpoint.
    result = limited_cli(len(good) // 2, args)
    assert_one_line_write_error(result, "step00000008.ckpt")
    assert (checkpoints / "last.ckpt").read_bytes() == good
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 4
    assert not (checkpoints / "step00000008.ckpt").exists() and not temporary_files(tmp_path)
    # With space again, the same command resumes from step 4 and ends as an uninterrupted run.
    rerun = limited_cli(1 << 40, args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_identical(final_state(tmp_path / "full"), uninterrupted)


# ----------------------------------------------------------------------------- latent cache
needs_fashion = pytest.mark.skipif(
    not _fashion_available(), reason="Fashion-MNIST not installed: run `make setup`"
)


@needs_fashion
def test_a_full_disk_while_caching_leaves_only_complete_shards(reference_dir, tmp_path):
    folder = tmp_path / "cache"
    args = ["cache", *cache_overrides(reference_dir / "vtp_tiny_default", folder)]
    result = limited_cli(16 * 1024, args)  # a shard of 20 latents + flips is ~41 KB
    assert_one_line_write_error(result, "latents_rank00_shard000.safetensors")
    assert not list(folder.glob("*.safetensors")) and not temporary_files(folder)
    assert not (folder / "manifest.json").exists()
    rerun = limited_cli(1 << 40, args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert verify_cache(folder).ok


@needs_fashion
def test_a_full_disk_while_finalising_leaves_no_manifest_and_the_rerun_completes(reference_dir, tmp_path):
    folder = tmp_path / "cache"
    args = ["cache", *cache_overrides(reference_dir / "vtp_tiny_default", folder)]
    # Every shard is written; then the limit applies from the moment the cache is finalised.
    result = limited_cli(256, args, limit_at="vtp_gen.latents.run:finalize_cache")
    assert_one_line_write_error(result, "latents_stats.pt")
    shards = sorted(folder.glob("*.safetensors"))
    assert len(shards) == 15 and not (folder / "manifest.json").exists() and not temporary_files(folder)
    assert not verify_cache(folder).ok  # no manifest: the cache does not claim to be complete
    rerun = limited_cli(1 << 40, args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resum" in rerun.stdout + rerun.stderr or verify_cache(folder).ok
    assert verify_cache(folder).ok
    assert sorted(folder.glob("*.safetensors")) == shards  # finished shards were kept, not redone
