import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


def reference_fixtures_dir() -> Path:
    return Path(os.environ.get("VTP_GEN_REFERENCE_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures" / "reference"))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    d = reference_fixtures_dir()
    if not d.is_dir():
        pytest.skip(f"reference fixtures not found at {d} (set VTP_GEN_REFERENCE_FIXTURES)")
    return d
