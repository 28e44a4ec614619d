"""Loss curves from Lightning's CSV logs, as a PNG (matplotlib, no display needed).

Lightning's CSVLogger writes one ``metrics.csv`` per run folder with a ``step``
column and one column per logged key (empty where a key was not logged at that
row). A resumed run may leave its history in several files (see
:func:`read_metrics`); rows are merged by step, later files winning.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path


def read_metrics(paths: str | Path | Iterable[str | Path]) -> dict[str, list[tuple[int, float]]]:
    """``{key: [(step, value), ...]}`` sorted by step, from one or more CSV files (missing files are skipped).

    When several files hold a value for the same key and step (a resumed run
    re-logging steps after its last checkpoint), the last file's value is kept.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    merged: dict[str, dict[int, float]] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                step_text = row.get("step", "")
                if not step_text:
                    continue
                step = int(float(step_text))
                for key, text in row.items():
                    if key in ("step", "epoch") or text in ("", None):
                        continue
                    try:
                        value = float(text)
                    except ValueError:
                        continue
                    merged.setdefault(key, {})[step] = value
    return {key: sorted(values.items()) for key, values in merged.items()}


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` points (the raw curves of small batches are noisy)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def headless_pyplot():
    """``matplotlib.pyplot`` on the Agg backend: PNGs on machines without a display (CI, clusters)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curves(
    metrics: dict[str, list[tuple[int, float]]],
    keys: Sequence[str],
    path: str | Path,
    title: str = "",
    smoothing: int | None = None,
    log_scale: bool = False,
) -> Path:
    """One panel per key present in ``metrics`` (raw values faint, moving average on top); returns ``path``.

    ``smoothing`` is the moving-average window in logged points (default: a fifteenth of the curve).
    """
    plt = headless_pyplot()
    present = [k for k in keys if metrics.get(k)]
    if not present:
        raise ValueError(f"none of {list(keys)} were logged (have: {sorted(metrics)})")
    columns = min(3, len(present))
    rows = math.ceil(len(present) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for ax, key in zip(axes.flat, present):
        steps, values = zip(*metrics[key])
        window = smoothing or max(1, len(values) // 15)
        ax.plot(steps, values, color="tab:blue", alpha=0.3, linewidth=0.8)
        ax.plot(steps, smooth(values, window), color="tab:blue", linewidth=1.5)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if log_scale and min(values) > 0:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(present) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    # Leave the top strip to the title.
    fig.tight_layout(rect=(0, 0, 1, 0.97 if title else 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
