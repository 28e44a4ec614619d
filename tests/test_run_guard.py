"""Run-folder locks and stop signals (docs/reliability.md, "One command per folder" and "SIGTERM and SIGINT").

Real processes throughout: a second command on a held folder, a lock left by a
SIGKILLed holder, SIGTERM sent to a real ``vtp-gen stage2`` while it trains and
while it draws its end-of-run preview.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from test_stage2_helpers import TINY_RECIPE, make_latent_cache, tiny_overrides

from vtp_gen.config import load_config
from vtp_gen.pipeline.cli import main as cli_main
from vtp_gen.pipeline.stage2.config import Stage2Config
from vtp_gen.pipeline.stage2.run import preview_size
from vtp_gen.utils.run_lock import LOCK_FILE, FolderInUseError, hold_folder

pytestmark = pytest.mark.faults("locks and stop signals")

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
}
HOLD_SCRIPT = """
import sys, time
from vtp_gen.utils.run_lock import hold_folder
with hold_folder(sys.argv[1], "stage2"):
    print("held", flush=True)
    time.sleep(600)
"""


def start_holder(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder`` (as a running step would), once it prints ``held``."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_SCRIPT, str(folder)], env=ENV, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def one_line_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# ----------------------------------------------------------------------------- locks


@pytest.mark.parametrize("step", ["stage1", "cache", "sample", "eval"])
def test_a_second_command_on_a_held_folder_refuses_at_once_in_one_line(tmp_path, capsys, step):
    if step == "stage1":
        folder, args = tmp_path / "x" / "stage1", [f"run.out_dir={tmp_path}", "run.name=x"]
    else:
        folder, args = tmp_path / step, [f"out_dir={tmp_path / step}"]
    holder = start_holder(folder)
    try:
        started = time.monotonic()
        status = cli_main([step, *args])
        line = one_line_error(capsys)
        assert status == 1 and time.monotonic() - started < 5
        assert line.startswith(f"vtp-gen {step}: error: {folder} is in use: pid {holder.pid} on ")
        assert "wait for it to end or stop it (kill" in line and "since" in line and "-c" in line
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_holder_is_taken_over_with_a_warning(tmp_path):
    folder = tmp_path / "run"
    holder = start_holder(folder)
    holder.send_signal(signal.SIGKILL)  # dies holding it: the kernel frees the lock, the record stays
    holder.wait()
    assert json.loads((folder / LOCK_FILE).read_text())["pid"] == holder.pid
    with pytest.warns(
        UserWarning, match=f"taking over the lock left by pid {holder.pid} on .* ended without releasing it"
    ):
        with hold_folder(folder, "stage2"):
            assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert (folder / LOCK_FILE).read_text() == ""  # a clean exit leaves no record
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing stale now
        with hold_folder(folder, "stage2"):
            pass


def test_only_the_launching_process_locks_and_a_process_may_nest(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    with hold_folder(folder, "stage2"), hold_folder(folder, "cache"):  # stage 2 running the cache step
        pass
    holder = start_holder(folder)
    try:
        with pytest.raises(FolderInUseError):
            with hold_folder(folder, "stage2"):
                pass
        for variable in ("LOCAL_RANK", "RANK", "NODE_RANK", "SLURM_PROCID"):
            with monkeypatch.context() as env:
                env.setenv(
                    variable, "1"
                )  # a rank torchrun, SLURM or Lightning started: works under rank 0's lock
                with hold_folder(folder, "stage2"):
                    pass
    finally:
        holder.kill()
        holder.wait()


# ----------------------------------------------------------------------------- checks before the first step


def test_stage2_checks_the_preview_tokenizer_before_training(tmp_path, capsys):
    """The official-extraction case: a cache without manifest, verify_tokenizer=false, no tokenizer folder."""
    cache = make_latent_cache(tmp_path / "cache")
    overrides = tiny_overrides(tmp_path, "foreign", cache, "preview.enabled=true")
    status = cli_main(["stage2", "--config", str(TINY_RECIPE), *overrides])
    line = one_line_error(capsys)
    assert status == 1
    assert f"tokenizer folder {tmp_path / 'foreign' / 'stage1' / 'tokenizer'} does not exist" in line
    assert "latents.tokenizer=PATH" in line and "preview.enabled=false" in line
    assert not (tmp_path / "foreign" / "stage2" / "checkpoints").exists()  # refused before training


def test_the_preview_is_capped_on_a_cpu_but_not_for_the_tiny_recipe():
    paper = load_config(Stage2Config, REPO_ROOT / "configs" / "stage2" / "lightningdit_b1.yaml")
    paper.trainer.accelerator = "cpu"
    assert preview_size(paper) == (2, 4, 10)
    paper.preview.cpu_steps = None
    assert preview_size(paper) == (2, 4, 250)
    if torch.cuda.is_available():
        paper.trainer.accelerator = "gpu"
        assert preview_size(paper) == (8, 8, 250)  # the recipe's values on a GPU
    tiny = load_config(Stage2Config, TINY_RECIPE)
    assert preview_size(tiny) == (10, 10, 50)


# ----------------------------------------------------------------------------- the latent statistics of `make sample`


def test_sample_refuses_a_code_running_latent_statistics_file_in_one_line(tmp_path, capsys):
    from vtp_gen.interop.generators import save_generator
    from vtp_gen.models.registry import create_model

    generator = tmp_path / "generator"
    model = create_model("LightningDiT-T/1", input_size=4, in_channels=16, num_classes=4, depth=1)
    save_generator(model, generator)
    marker = tmp_path / "payload_ran"

    class RunsShell:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    stats = tmp_path / "latents_stats.pt"
    torch.save({"mean": RunsShell(), "std": RunsShell()}, stats)
    status = cli_main(
        ["sample", f"generator={generator}", f"latent_stats={stats}", f"out_dir={tmp_path / 's'}"]
    )
    line = one_line_error(capsys)
    assert status == 1 and not marker.exists()
    assert line.startswith(f"vtp-gen sample: error: {stats}: refused to load (")
    assert "which could run code when loaded" in line


# ----------------------------------------------------------------------------- SIGTERM


def start_stage2(overrides: list[str], stdout=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vtp_gen.pipeline.cli", "stage2", "--config", str(TINY_RECIPE), *overrides],
        env=ENV,
        cwd=REPO_ROOT,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, for signals to the group as a scheduler sends them
    )


def wait_for(condition, timeout: float = 240, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process is None or process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def assert_saved(run: Path, step: int) -> None:
    """last.ckpt at ``step`` and the generator exported from its EMA weights."""
    from vtp_gen.interop.generators import load_generator

    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == step
    generator = load_generator(run / "generator")
    for name, value in generator.state_dict().items():
        assert torch.equal(value, checkpoint["state_dict"][f"ema.module.{name}"]), name
    assert json.loads((run / "generator" / "stage2.json").read_text())["step"] == step
    assert json.loads((run / "train_summary.json").read_text())["step"] == step


def test_sigterm_in_training_saves_checkpoint_and_generator_and_a_second_command_is_refused(tmp_path, capsys):
    cache = make_latent_cache(tmp_path / "cache")
    # A loader worker, and SIGTERM to the whole process group: what a scheduler does at a time limit.
    overrides = tiny_overrides(tmp_path, "term", cache, "trainer.max_steps=100000", "train.num_workers=1")
    run = tmp_path / "term" / "stage2"
    first = start_stage2(overrides)
    try:
        wait_for(lambda: any((run / "checkpoints").glob("step*.ckpt")), process=first)  # it is training
        started = time.monotonic()
        second = cli_main(["stage2", "--config", str(TINY_RECIPE), *overrides])  # the same command again
        line = one_line_error(capsys)
        assert time.monotonic() - started < 5
        assert second == 1 and line.startswith(f"vtp-gen stage2: error: {run} is in use: pid {first.pid}")
        os.killpg(first.pid, signal.SIGTERM)
        _, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("vtp-gen stage2: stopped: SIGTERM received: stopped after step "), last
    step = int(last.split("stopped after step ")[1].split(";")[0])
    assert 4 <= step < 100000 and f"generator (EMA weights) exported to {run / 'generator'}" in last
    assert_saved(run, step)
    assert (run / LOCK_FILE).read_text() == ""
    # The same command with a reachable step count resumes from there and finishes.
    rerun = start_stage2([*overrides, f"trainer.max_steps={step + 2}"], stdout=subprocess.PIPE)
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr[-3000:]
    assert f"resuming from {run / 'checkpoints' / 'last.ckpt'}" in stdout
    assert_saved(run, step + 2)


def test_sigterm_during_the_end_of_run_preview_loses_nothing(tmp_path, reference_dir):
    cache = make_latent_cache(tmp_path / "cache")
    overrides = tiny_overrides(
        tmp_path,
        "preview",
        cache,
        f"latents.tokenizer={reference_dir / 'vtp_tiny_default'}",
        "trainer.max_steps=6",
        "preview.enabled=true",
        "preview.steps=1000000",  # hours: it must be stopped, not finished
        "preview.cpu_steps=null",
    )
    run = tmp_path / "preview" / "stage2"
    process = start_stage2(overrides, stdout=subprocess.PIPE)
    try:
        for line in process.stdout:
            if "end-of-run preview" in line:
                break
        # Before the preview starts, the checkpoint and the export are complete.
        assert_saved(run, 6)
        time.sleep(1.0)  # well into the sampler
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("vtp-gen stage2: stopped: SIGTERM received during the end-of-run preview grid")
    assert "the checkpoint and the generator" in last
    assert_saved(run, 6)
    assert not list((run / "images").glob("*.png"))


@pytest.mark.slow
def test_sigterm_while_sampling_keeps_the_finished_pngs(tmp_path, reference_dir):
    from vtp_gen.data.images import load_png
    from vtp_gen.interop.generators import save_generator
    from vtp_gen.models.registry import create_model

    generator = tmp_path / "generator"
    torch.manual_seed(0)
    save_generator(
        create_model("LightningDiT-T/1", input_size=4, in_channels=16, num_classes=4, depth=1), generator
    )
    make_latent_cache(tmp_path / "cache")
    out = tmp_path / "samples"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vtp_gen.pipeline.cli",
            "sample",
            f"generator={generator}",
            f"tokenizer={reference_dir / 'vtp_tiny_default'}",
            f"latent_stats={tmp_path / 'cache'}",
            f"out_dir={out}",
            "num_samples=100000",  # far more than it makes before the signal
            "batch_size=8",
            "progress_bar=false",
        ],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: len(list((out / "images").glob("*.png"))) >= 16, process=process)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last == (
        "vtp-gen sample: stopped: SIGTERM received during sample: finished PNGs are kept; "
        "rerun the same command to make the rest"
    )
    pngs = sorted((out / "images").glob("*.png"))
    assert 16 <= len(pngs) < 100000 and not list((out / "images").glob(".*"))  # no half-written file
    for png in pngs:
        assert load_png(png).shape == (64, 64, 3)


@pytest.mark.slow
def test_sigterm_during_a_training_preview_abandons_the_grid_and_saves(tmp_path, reference_dir):
    cache = make_latent_cache(tmp_path / "cache")
    overrides = tiny_overrides(
        tmp_path,
        "grid",
        cache,
        f"latents.tokenizer={reference_dir / 'vtp_tiny_default'}",
        "trainer.max_steps=100",
        "preview.enabled=true",
        "preview.every_n_steps=3",
        "preview.steps=1000000",
        "preview.cpu_steps=null",
    )
    run = tmp_path / "grid" / "stage2"
    process = start_stage2(overrides, stdout=subprocess.PIPE)
    try:
        for line in process.stdout:
            if line.startswith("[preview] grid of step 3"):
                break
        time.sleep(1.0)  # well into the sampler
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "[preview] grid of step 3 abandoned: stop requested" in stdout
    assert "stopped after step 3;" in stderr.strip().splitlines()[-1]
    assert_saved(run, 3)
    assert not list((run / "images").glob("*.png"))  # neither that grid nor an end-of-run one


def test_a_forked_child_does_not_keep_the_folder_locked(tmp_path, monkeypatch):
    # DataLoader workers are forked: if they kept the lock descriptor, a killed run's folder would stay
    # locked until its orphaned workers exited, and the rerun the message advises would be refused.
    import fcntl
    import os
    import time

    from vtp_gen.utils.run_lock import LOCK_FILE, hold_folder

    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.yaml").write_text("{}\n")  # a folder with work in it keeps its lock file
    ready_read, ready_write = os.pipe()
    with hold_folder(folder, "stage2"):
        child = os.fork()
        if child == 0:  # the worker: its fork hooks have run once it can write; it outlives the hold
            os.write(ready_write, b"1")
            time.sleep(3)
            os._exit(0)
        os.read(ready_read, 1)
    try:
        probe = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if the child held it
        finally:
            os.close(probe)
    finally:
        os.waitpid(child, 0)
