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


# ----------------------------------------------------------------------------- fault injection
# `make test-faults` runs every test that injects a fault (marker `faults`, slow ones included) and
# prints how many of each kind passed. Whole files that are about faults are marked here; single
# tests elsewhere carry @pytest.mark.faults themselves.
FAULT_FILES = {
    "test_stage1_resume.py": "kill and rerun",
    "test_stage2_resume.py": "kill and rerun",
    "test_latents_resume.py": "kill and rerun",
    "test_stage1_resume_webdataset.py": "kill and rerun",
    "test_data.py": "bad input",
    "test_stage1_data.py": "bad input",
    "test_pretrained_safe_unpickle.py": "untrusted files",
    "test_untrusted_payloads.py": "untrusted files",
    "test_nonfinite_guard.py": "numerical faults",
    "test_stage1_salted_corpus.py": "bad input",
    "test_data_accounting.py": "bad input",
    "test_webdataset_resume.py": "resume data position",
    "test_checkpoint_fallback.py": "damaged checkpoints",
    "test_disk_faults.py": "disk faults",
    "test_cache_integrity.py": "foreign and corrupt files",
    "test_divergence_recovery.py": "numerical faults",
    "test_resume_settings.py": "config and environment",
    "test_user_errors.py": "config and environment",
    "test_salted_accounting.py": "bad input",
    "test_run_guard.py": "locks and stop signals",
}
FAULT_KIND_BY_TEST = {
    "test_pickled_checkpoints_are_refused_without_unpickling": "untrusted files",
    "test_out_of_range_values_are_one_line_errors": "config and environment",
    "test_a_full_disk_during_export_leaves_the_previous_export_whole": "disk faults",
}
_fault_passes: dict[str, int] = {}
_kill_points: dict[str, int] = {}


@pytest.fixture
def kill_points():
    """Kill tests call ``kill_points("stage 1")`` once per SIGKILL their run survived (then matched an uncut run)."""

    def survived(step: str, count: int = 1) -> None:
        _kill_points[step] = _kill_points.get(step, 0) + count

    return survived


def _fault_kind(item) -> str | None:
    name = item.originalname if hasattr(item, "originalname") else item.name
    return FAULT_KIND_BY_TEST.get(name) or FAULT_FILES.get(Path(str(item.fspath)).name)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _fault_kind(item) is not None:
            item.add_marker(pytest.mark.faults)


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed and "faults" in report.keywords:
        kind = FAULT_KIND_BY_TEST.get(report.head_line.split("[")[0].split(".")[-1]) or FAULT_FILES.get(
            Path(report.fspath).name, "other"
        )
        _fault_passes[kind] = _fault_passes.get(kind, 0) + 1


def pytest_terminal_summary(terminalreporter):
    if _fault_passes:
        terminalreporter.section("fault injection: passed tests by kind")
        for kind, count in sorted(_fault_passes.items()):
            terminalreporter.write_line(f"{kind:26s} {count}")
    if _kill_points:
        by_step = ", ".join(f"{step} {n}" for step, n in sorted(_kill_points.items()))
        terminalreporter.write_line(f"kill points survived: {sum(_kill_points.values())} ({by_step})")
