"""The import layering of pyproject.toml's import-linter contracts holds, and a violation is caught."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(source_root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(source_root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO_ROOT / "pyproject.toml"), "--no-cache"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_package_keeps_every_layering_contract():
    result = lint_imports(REPO_ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_a_library_module_importing_the_pipeline_breaks_the_contracts(tmp_path):
    shutil.copytree(REPO_ROOT / "src" / "vtp_gen", tmp_path / "vtp_gen", symlinks=True)
    registry = tmp_path / "vtp_gen" / "models" / "registry.py"
    registry.write_text(registry.read_text() + "\nfrom vtp_gen.pipeline import cli  # noqa: E402\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout
    assert "vtp_gen.models.registry -> vtp_gen.pipeline.cli" in result.stdout
