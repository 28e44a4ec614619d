"""The one step logger: ``[step] message`` on stdout, rank zero only for progress, every rank for warnings."""

from __future__ import annotations

import pytest

from vtp_gen.utils.log import step_logger


def test_a_step_line_carries_its_step_name(capsys):
    step_logger("stage2").info("latents: runs/x/cache")
    assert capsys.readouterr().out == "[stage2] latents: runs/x/cache\n"


@pytest.mark.parametrize("variable", ["RANK", "LOCAL_RANK", "NODE_RANK"])
def test_other_ranks_keep_progress_quiet_but_report_warnings(capsys, monkeypatch, variable):
    monkeypatch.setenv(variable, "1")
    log = step_logger("cache")
    log.info("encoding 8 shards")
    log.warning("step 3: NaN/Inf gradients, step skipped")
    assert capsys.readouterr().out == "[cache] step 3: NaN/Inf gradients, step skipped\n"


def test_users_silence_progress_with_standard_logging(capsys):
    import logging

    root = logging.getLogger("vtp_gen")
    level = root.level
    root.setLevel(logging.WARNING)
    try:
        step_logger("eval").info("FID ...")
    finally:
        root.setLevel(level)
    assert capsys.readouterr().out == ""
