"""The study's figures, as PNGs (matplotlib, no display needed).

* ``gfid_vs_compute.png``: gFID against tokenizer training GFLOPs, one line per
  objective preset (the paper's Figs. 1c and 5);
* ``probe_vs_gfid.png``: linear probe (bottleneck) against gFID (Fig. 2);
* ``rfid_vs_gfid.png``: rFID against gFID (Fig. 4).

Each point is labelled with its stage-1 step count, and the two "vs gFID"
figures carry the Pearson correlation over all points (the paper's claim is
that understanding tracks generation and reconstruction does not).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from vtp_gen.utils.plots import headless_pyplot

PAPER_NAMES = {
    "AE": "AE only",
    "CLIP+AE": "CLIP + AE",
    "SSL+AE": "SSL + AE",
    "CLIP+SSL+AE": "CLIP + SSL + AE (VTP)",
}


def _usable(rows: Sequence[dict], *keys: str) -> list[dict]:
    return [r for r in rows if all(isinstance(r.get(k), (int, float)) and math.isfinite(r[k]) for k in keys)]


def _by_preset(rows: Sequence[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["preset"], []).append(row)
    return {name: sorted(group, key=lambda r: r["steps"]) for name, group in groups.items()}


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation; None for fewer than 3 points or a constant series."""
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / math.sqrt(sxx * syy)


def _label(row: dict, column: str, fallback: str) -> str:
    return row.get(f"{column}_label") or fallback


def _legend_name(group: list[dict]) -> str:
    objectives = group[0].get("objectives") or ""
    name = group[0]["preset"]
    return f"{name} ({PAPER_NAMES.get(objectives, objectives)})" if objectives else name


def _figure():
    plt = headless_pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    return plt, fig, ax


def _save(plt, fig, ax, path: Path) -> Path:
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_gfid_vs_compute(rows: Sequence[dict], path: Path) -> Path | None:
    rows = _usable(rows, "tokenizer_gflops", "gfid")
    if not rows:
        return None
    plt, fig, ax = _figure()
    for group in _by_preset(rows).values():
        xs, ys = [r["tokenizer_gflops"] for r in group], [r["gfid"] for r in group]
        ax.plot(xs, ys, marker="o", label=_legend_name(group))
        for r in group:
            ax.annotate(
                f"{r['steps']}",
                (r["tokenizer_gflops"], r["gfid"]),
                fontsize=7,
                textcoords="offset points",
                xytext=(3, 3),
            )
    ax.set_xscale("log")
    ax.set_xlabel("tokenizer training compute (GFLOPs, log scale)")
    ax.set_ylabel(_label(rows[0], "gfid", "gFID") + "  (lower is better)")
    ax.set_title("Generation vs tokenizer compute (cf. paper Figs. 1c, 5)", fontsize=10)
    return _save(plt, fig, ax, Path(path))


def _scatter_vs_gfid(rows, column: str, xlabel: str, title: str, path: Path) -> Path | None:
    rows = _usable(rows, column, "gfid")
    if not rows:
        return None
    plt, fig, ax = _figure()
    for group in _by_preset(rows).values():
        xs, ys = [r[column] for r in group], [r["gfid"] for r in group]
        ax.plot(xs, ys, marker="o", linestyle=":", label=_legend_name(group))
        for r in group:
            ax.annotate(
                f"{r['steps']}", (r[column], r["gfid"]), fontsize=7, textcoords="offset points", xytext=(3, 3)
            )
    r = pearson([row[column] for row in rows], [row["gfid"] for row in rows])
    correlation = f"; Pearson r = {r:+.2f} over {len(rows)} points" if r is not None else ""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(_label(rows[0], "gfid", "gFID") + "  (lower is better)")
    ax.set_title(f"{title}{correlation}", fontsize=10)
    return _save(plt, fig, ax, Path(path))


def plot_probe_vs_gfid(rows: Sequence[dict], path: Path) -> Path | None:
    label = next((r["linear_probe_label"] for r in rows if r.get("linear_probe_label")), "linear probe")
    return _scatter_vs_gfid(
        rows,
        "linear_probe",
        f"{label}, % (higher is better)",
        "Understanding vs generation (cf. Fig. 2)",
        path,
    )


def plot_rfid_vs_gfid(rows: Sequence[dict], path: Path) -> Path | None:
    label = next((r["rfid_label"] for r in rows if r.get("rfid_label")), "rFID")
    return _scatter_vs_gfid(
        rows, "rfid", f"{label} (lower is better)", "Reconstruction vs generation (cf. Fig. 4)", path
    )


def plot_all(rows: Sequence[dict], folder: Path) -> list[Path]:
    """The three figures into ``folder``; a figure without a usable point is not written."""
    folder = Path(folder)
    made = [
        plot_gfid_vs_compute(rows, folder / "gfid_vs_compute.png"),
        plot_probe_vs_gfid(rows, folder / "probe_vs_gfid.png"),
        plot_rfid_vs_gfid(rows, folder / "rfid_vs_gfid.png"),
    ]
    return [p for p in made if p is not None]
