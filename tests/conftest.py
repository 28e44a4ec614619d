import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
# Golden checkpoints and outputs of the reference implementations, kept with the tests (see its README).
REFERENCE_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "reference"
# Every file a test reads, by folder: all of them must be there, or the tests that use them fail.
_CHECKPOINT_AND_GOLDEN = ["config.json", "model.safetensors", "golden_outputs.safetensors"]
REFERENCE_FILES = {
    "vtp_tiny_default": [*_CHECKPOINT_AND_GOLDEN, "golden_texts.json"],
    "vtp_tiny_ls_qknorm": [*_CHECKPOINT_AND_GOLDEN, "golden_texts.json"],
    "lightningdit_tiny": [*_CHECKPOINT_AND_GOLDEN, "golden_sampler.safetensors", "sampler_settings.json"],
    "lightningdit_tiny_qknorm_p2": _CHECKPOINT_AND_GOLDEN,
    "dit_tiny": _CHECKPOINT_AND_GOLDEN,
}


def reference_fixtures_dir() -> Path:
    """tests/fixtures/reference, or the folder named by $VTP_GEN_REFERENCE_FIXTURES."""
    return Path(os.environ.get("VTP_GEN_REFERENCE_FIXTURES") or REFERENCE_FIXTURES)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The reference fixtures folder; a missing file is a failure of every test that asks for it, never a skip."""
    d = reference_fixtures_dir()
    missing = [
        f"{name}/{file}"
        for name, files in REFERENCE_FILES.items()
        for file in files
        if not (d / name / file).is_file()
    ]
    if missing:
        pytest.fail(f"reference fixtures missing in {d}: {', '.join(missing)}", pytrace=False)
    return d


# ----------------------------------------------------------------------------- fixtures shared by several files
@pytest.fixture(scope="session")
def tokenizer_dir(reference_dir) -> Path:
    """The vtp-tiny tokenizer written by the official VTP code: what the latent-cache tests encode with."""
    return reference_dir / "vtp_tiny_default"


@pytest.fixture(scope="session")
def fashion_mnist() -> Path:
    """The Fashion-MNIST folder; a test that trains on it skips where `make setup` did not install it."""
    from vtp_gen.data.fashion_mnist import find_root

    try:
        return find_root()
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not installed: run `make setup`")


@pytest.fixture
def single_thread():
    """One intra-op thread for the test: tiny models gain nothing from more, and on a busy 2-core machine
    OpenMP threads fighting for the cores make every step much slower (measured: 32 s with 2 threads
    against 1 s with 1 for the linear-probe sweep)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def stage2_cache(tmp_path_factory) -> Path:
    """The synthetic stage-2 latent cache of test_stage2_helpers (256 items, 4 classes, 16x4x4)."""
    from test_stage2_helpers import make_latent_cache

    return make_latent_cache(tmp_path_factory.mktemp("latents"))


@pytest.fixture(scope="module")
def uninterrupted(stage2_cache, tmp_path_factory) -> dict:
    """The final state of a tiny stage-2 run that nothing interrupted, to compare a killed or faulted run with."""
    from test_stage2_helpers import final_state, run_stage2_subprocess, tiny_overrides

    out = tmp_path_factory.mktemp("runs")
    result = run_stage2_subprocess(tiny_overrides(out, "straight", stage2_cache))
    assert result.returncode == 0, result.stderr[-3000:]
    return final_state(out / "straight")


@pytest.fixture(scope="module")
def generator_folder(tmp_path_factory) -> Path:
    """A tiny exported class-conditional generator (LightningDiT-T/1, 2 blocks, width 32) on 16x4x4 latents."""
    import torch
    from test_stage2_helpers import make_latent_cache

    from vtp_gen import create_model
    from vtp_gen.interop.generators import save_generator

    folder = tmp_path_factory.mktemp("generator")
    torch.manual_seed(0)
    model = create_model(
        "LightningDiT-T/1", input_size=4, in_channels=16, num_classes=4, depth=2, hidden_size=32
    )
    with torch.no_grad():  # adaLN-Zero starts at zero output: give the samples some structure
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_generator(model, folder)
    cache = make_latent_cache(tmp_path_factory.mktemp("cache"), num_items=32)
    (folder / "latents_stats.pt").write_bytes((cache / "latents_stats.pt").read_bytes())
    return folder


# ----------------------------------------------------------------------------- fault injection
# `make test-faults` runs every test that injects a fault (marker `faults`, slow ones included) and
# prints how many of each kind passed. The marker names the kind: `pytestmark = pytest.mark.faults("disk
# faults")` for a file about faults, `@pytest.mark.faults("untrusted files")` on a single test elsewhere; a
# test-level `faults` without a kind takes its file's.
_fault_passes: dict[str, int] = {}
_kill_points: dict[str, int] = {}


def fault_kind(item) -> str | None:
    """The kind of fault a test injects (the closest `faults` marker that names one), None if it injects none."""
    marks = list(item.iter_markers("faults"))
    if not marks:
        return None
    return next((m.args[0] for m in marks if m.args), "other")


@pytest.fixture
def kill_points():
    """Kill tests call ``kill_points("stage 1")`` once per SIGKILL their run survived (then matched an uncut run)."""

    def survived(step: str, count: int = 1) -> None:
        _kill_points[step] = _kill_points.get(step, 0) + count

    return survived


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.passed and (kind := fault_kind(item)) is not None:
        _fault_passes[kind] = _fault_passes.get(kind, 0) + 1


def pytest_terminal_summary(terminalreporter):
    if _fault_passes:
        terminalreporter.section("fault injection: passed tests by kind")
        for kind, count in sorted(_fault_passes.items()):
            terminalreporter.write_line(f"{kind:26s} {count}")
    if _kill_points:
        by_step = ", ".join(f"{step} {n}" for step, n in sorted(_kill_points.items()))
        terminalreporter.write_line(f"kill points survived: {sum(_kill_points.values())} ({by_step})")
