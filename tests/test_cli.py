import subprocess
import sys

import pytest

from vtp_gen.cli import REPO_ROOT, STEPS, main


def test_unknown_key_in_override_is_a_one_line_error(capsys):
    built = [name for name, step in STEPS.items() if __import__("vtp_gen.cli").cli._step_available(step)]
    if not built:
        # No step built yet: the CLI must say so clearly and exit non-zero.
        assert main(["stage1"]) == 2
        assert "not built yet" in capsys.readouterr().err
        return
    assert main([built[0], "trainer.max_step=3"]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_make_target_of_unbuilt_or_built_step_runs_through_cli():
    # The thin entry scripts must exist for every step the Makefile names.
    for script in (
        "stage1/train.py",
        "stage2/cache.py",
        "stage2/train.py",
        "stage2/sample.py",
        "eval/evaluate.py",
    ):
        assert (REPO_ROOT / script).is_file(), script
    out = subprocess.run([sys.executable, "-m", "vtp_gen.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "stage1" in out.stdout


def test_data_recipe_with_empty_and_braced_values_merges_into_the_step():
    from vtp_gen.cli import build_config

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
