"""A bench record as one picture: every ratio against its baseline, and every MFU.

Left panel: each workload that has a baseline, as its ratio on a log axis,
drawn from parity (1.0, the dashed line): left of it slower than the baseline,
right of it faster; right panel: each workload with counted FLOPs, as its share
of the matmul peak measured in the same group. Baseline workloads are grey
there, ours blue. Where a target reads a row, a black tick marks the
threshold and the row's label says whether it is met. ``bench/run.py`` and
``bench/gpu_mfu.py`` write it beside their JSON (``<out>.png``);
``bench/run.py --plot RESULT.json`` draws an existing record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vtp_gen.utils.plots import headless_pyplot

ROW_HEIGHT_IN = 0.24
GROUP_GAP = 0.6  # extra space between groups, in rows
RATIO_TICKS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 1000.0)


@dataclass(frozen=True)
class ChartRow:
    label: str  # "stage1/tiny step_all"
    group: str
    value: float  # a ratio (x) or an MFU (0-1)
    is_baseline: bool = False  # others are compared with it, it with nothing
    target: float | None = None  # the threshold a target puts on this row
    target_met: bool | None = None


def _rows(record: dict, metric: str) -> list[ChartRow]:
    """The ``metric`` ("ratio_vs_baseline" or "mfu") of every measured workload, in record order."""
    targets = {(t["workload"], t["metric"]): t for t in record.get("targets", [])}
    rows = []
    for group in record["groups"]:
        if group["status"] != "ok":
            continue
        # A baseline is what ours is compared with and is not compared with anything itself.
        baselines = {w["baseline"] for w in group["workloads"] if w["baseline"]}
        baselines -= {w["name"] for w in group["workloads"] if w["baseline"]}
        for w in group["workloads"]:
            if w.get(metric) is None:
                continue
            target = targets.get((w["name"], metric))
            leaf = _leaf(w["name"], group["name"])
            compared_by = f" ({w['compare'].replace('_', ' ')})" if metric == "ratio_vs_baseline" else ""
            rows.append(
                ChartRow(
                    label=f"{group['name']} {leaf}{compared_by}",
                    group=group["name"],
                    value=w[metric],
                    is_baseline=w["name"] in baselines,
                    target=None if target is None else target["threshold"],
                    target_met=None if target is None else target["met"],
                )
            )
    return rows


def _leaf(workload: str, group: str) -> str:
    """The workload's name after the path parts it shares with its group's (gpu_mfu's groups end in /eager)."""
    parts, group_parts = workload.split("/"), group.split("/")
    shared = 0
    while shared < min(len(parts) - 1, len(group_parts)) and parts[shared] == group_parts[shared]:
        shared += 1
    return "/".join(parts[shared:])


def ratio_rows(record: dict) -> list[ChartRow]:
    return _rows(record, "ratio_vs_baseline")


def mfu_rows(record: dict) -> list[ChartRow]:
    return _rows(record, "mfu")


def _extent(rows: list[ChartRow]) -> float:
    """Height of a panel in rows, gaps included."""
    return _positions(rows)[-1] + 1.0 if rows else 0.0


def _positions(rows: list[ChartRow]) -> list[float]:
    """Top-to-bottom y positions, with a gap where the group changes."""
    positions, y = [], 0.0
    for i, row in enumerate(rows):
        if i and row.group != rows[i - 1].group:
            y += GROUP_GAP
        positions.append(y)
        y += 1.0
    return positions


def _panel(
    ax, rows: list[ChartRow], *, title: str, unit: str, reference: float | None, extent: float
) -> None:
    if not rows:
        ax.text(0.5, 0.5, "nothing measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    ys = _positions(rows)
    values = [r.value for r in rows]
    if unit == "x":
        # Ratios span 0.5x-100x (a collate against a step): log axis, bars from parity.
        colours = ["tab:green" if v >= 1.0 else "tab:orange" for v in values]
        ax.barh(ys, [v - 1.0 for v in values], left=1.0, height=0.75, color=colours)
        ax.set_xscale("log")
        low = min(*values, *(r.target or 1.0 for r in rows), 1.0) / 2.2
        high = max(*values, *(r.target or 1.0 for r in rows), 1.0) * 1.6
        ax.set_xlim(low, high)
        ax.set_xticks([t for t in RATIO_TICKS if low <= t <= high], minor=False)
        ax.set_xticks([], minor=True)
        ax.xaxis.set_major_formatter(lambda value, _: f"{value:g}x")
        for y, v in zip(ys, values):
            # The value sits at the bar's free end, away from the parity line.
            if v >= 1.0:
                ax.text(v * 1.03, y, f"{v:.2f}x", va="center", ha="left", fontsize=7)
            else:
                ax.text(v / 1.03, y, f"{v:.2f}x", va="center", ha="right", fontsize=7)
    else:
        colours = ["0.65" if r.is_baseline else "tab:blue" for r in rows]
        ax.barh(ys, values, height=0.75, color=colours)
        right = max(*values, *(r.target or 0.0 for r in rows))
        ax.set_xlim(0, right * 1.15)
        for y, v in zip(ys, values):
            ax.text(v + 0.01 * right, y, f"{100 * v:.0f}%", va="center", fontsize=7)
    for y, row in zip(ys, rows):
        if row.target is not None:
            ax.plot([row.target, row.target], [y - 0.45, y + 0.45], color="black", linewidth=2)
    labels = []
    for row in rows:
        state = "" if row.target is None else ("  [target met]" if row.target_met else "  [target not met]")
        labels.append(row.label + state)
    ax.set_yticks(ys, labels, fontsize=7)
    for tick, row in zip(ax.get_yticklabels(), rows):
        if row.target is not None:
            tick.set_fontweight("bold")
    if reference is not None:
        ax.axvline(reference, color="black", linestyle="--", linewidth=0.8)
    ax.set_ylim(extent - 0.2, -0.8)  # first row on top; both panels on one row scale
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(axis="x", labelsize=7)


def plot_record(record: dict, path: str | Path) -> Path:
    """Draw ``record`` (a bench JSON, loaded) to ``path`` (PNG); returns the path."""
    ratios, mfus = ratio_rows(record), mfu_rows(record)
    if not ratios and not mfus:
        raise ValueError("the record has no measured ratio or MFU to draw (every group skipped or failed?)")
    plt = headless_pyplot()
    extent = max(_extent(ratios), _extent(mfus))
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 1.6 + ROW_HEIGHT_IN * extent))
    _panel(
        left,
        ratios,
        title="ours / baseline, same run (log axis; black tick: target)",
        unit="x",
        reference=1.0,
        extent=extent,
    )
    _panel(
        right,
        mfus,
        title="MFU vs the group's matmul peak (grey: baselines)",
        unit="%",
        reference=None,
        extent=extent,
    )
    right.xaxis.set_major_formatter(lambda value, _: f"{100 * value:.0f}%")
    machine = record.get("machine", {})
    threads = machine.get("torch_threads")
    fig.suptitle(
        f"vtp_gen bench, suite {record.get('suite', '?')}, {record.get('created', '')[:16]}: "
        f"{machine.get('device', '?')} {machine.get('gpu') or machine.get('cpu') or ''}"
        + (f", {threads} threads" if threads and machine.get("device") == "cpu" else ""),
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def chart_beside(record: dict, json_path: str | Path) -> Path | None:
    """The record's chart at ``json_path`` with ``.png``; None when the run measured nothing to draw."""
    if not (ratio_rows(record) or mfu_rows(record)):
        return None
    return plot_record(record, Path(json_path).with_suffix(".png"))
