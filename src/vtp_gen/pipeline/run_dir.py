"""Run folders: one folder per run and step, holding everything the run made.

    runs/<name>/<step>/config.yaml      the resolved config
                      checkpoints/     Lightning checkpoints (last.ckpt = resume point)
                      logs/            CSV + TensorBoard
                      images/          grids
                      metrics.json

Re-running the same command finds ``checkpoints/last.ckpt`` and resumes.
"""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vtp_gen.config import save_config


def run_root(cfg: DictConfig) -> Path:
    return Path(cfg.run.out_dir) / cfg.run.name


def prepare_run_dir(cfg: DictConfig, step: str) -> Path:
    """Create ``runs/<name>/<step>/`` and record the resolved config there.

    When the folder already holds a config that differs, the differences are
    printed as a warning: resuming with changed settings is allowed (e.g. more
    steps) but should never be a surprise.
    """
    folder = run_root(cfg) / step
    for sub in ("checkpoints", "logs", "images"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    config_path = folder / "config.yaml"
    new_text = OmegaConf.to_yaml(cfg, resolve=True)
    if config_path.is_file():
        old_text = config_path.read_text()
        if old_text != new_text:
            diff = "".join(
                difflib.unified_diff(
                    old_text.splitlines(True), new_text.splitlines(True), "previous", "now", n=0
                )
            )
            warnings.warn(
                f"{config_path}: the config changed since this run folder was made:\n{diff}", stacklevel=2
            )
    save_config(cfg, config_path)
    return folder
