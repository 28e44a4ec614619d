import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vtp_gen.pipeline.cli import STEPS, build_config, main
from vtp_gen.pipeline.recipes import RECIPE_DIR, resolve_recipe

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_unknown_key_in_override_is_a_one_line_error(capsys):
    assert main(["stage1", "trainer.max_step=3"]) == 2
    assert "did you mean" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(STEPS))
def test_every_step_names_an_existing_schema_runner_and_default_recipe(name):
    step = STEPS[name]
    for target in (step.schema, step.runner):
        module_name, attr = target.split(":")
        assert callable(getattr(importlib.import_module(module_name), attr)), target
    assert resolve_recipe(step.default_recipe).is_file()


def test_recipes_resolve_from_any_folder_through_the_shipped_copy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the package's recipes answer
    assert resolve_recipe("configs/stage1/tiny.yaml") == RECIPE_DIR / "stage1" / "tiny.yaml"
    cfg = build_config("stage2", ["configs/stage2/tiny.yaml"], "configs/data/fashion_mnist.yaml", [])
    assert cfg.model.name
    (tmp_path / "configs" / "stage1").mkdir(parents=True)
    (tmp_path / "configs" / "stage1" / "tiny.yaml").write_text("trainer:\n  max_steps: 3\n")
    assert resolve_recipe("configs/stage1/tiny.yaml") == Path(
        "configs/stage1/tiny.yaml"
    )  # the user's own first
    with pytest.raises(Exception, match="recipe not found: configs/stage1/nope.yaml"):
        resolve_recipe("configs/stage1/nope.yaml")


@pytest.mark.slow
def test_an_installed_wheel_carries_the_recipes(tmp_path):
    """Built as a wheel and unpacked away from the checkout, the package still finds every recipe."""
    import zipfile

    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            tmp_path,
            REPO_ROOT,
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("vtp_gen-*.whl")
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    script = (
        "from vtp_gen.pipeline.recipes import shipped_recipes; from vtp_gen.pipeline.cli import build_config;"
        "print(len(shipped_recipes())); print(build_config('stage1', None, None, []).run.name)"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    count, _ = out.stdout.split()
    assert int(count) == len(list((REPO_ROOT / "configs").glob("*/*.yaml")))
    assert (
        str(tmp_path / "site")
        in subprocess.run(
            [sys.executable, "-c", "import vtp_gen; print(vtp_gen.__file__)"],
            env=env,
            capture_output=True,
            text=True,
        ).stdout
    )


def test_make_target_of_every_step_runs_through_cli():
    # The thin entry scripts must exist for every step the Makefile names.
    for script in (
        "stage1/train.py",
        "stage2/cache.py",
        "stage2/train.py",
        "stage2/sample.py",
        "eval/evaluate.py",
    ):
        assert (REPO_ROOT / script).is_file(), script
    out = subprocess.run(
        [sys.executable, "-m", "vtp_gen.pipeline.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "stage1" in out.stdout


def test_data_recipe_with_empty_and_braced_values_merges_into_the_step():
    cfg = build_config("stage1", None, str(REPO_ROOT / "configs/data/datacomp.yaml"), ["data.batch_size=8"])
    assert cfg.data.source == "webdataset" and cfg.data.root == ""
    assert cfg.data.shards == "/data/datacomp/shards/{00000000..00027999}.tar"
    assert cfg.data.resampled is True and cfg.data.batch_size == 8  # command-line overrides still win


@pytest.mark.faults("config and environment")
@pytest.mark.parametrize(
    "step, override, message",
    [
        ("stage1", "optim.lr=-1", "out-of-range value for 'optim.lr': -1.0 (must be > 0)"),
        ("stage1", "data.batch_size=0", "out-of-range value for 'data.batch_size': 0 (must be > 0)"),
        ("stage1", "objectives.ssl_fraction=1.5", "'objectives.ssl_fraction': 1.5 (must be > 0 and <= 1)"),
        ("stage2", "latents.flip_prob=2", "'latents.flip_prob': 2.0 (must be >= 0 and <= 1)"),
        ("stage2", "trainer.max_nonfinite_steps=0", "'trainer.max_nonfinite_steps': 0 (must be >= 1)"),
    ],
)
def test_out_of_range_values_are_one_line_errors(capsys, step, override, message):
    assert main([step, "--print-config", override]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
