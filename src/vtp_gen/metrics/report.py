"""Evaluation results as data: metric records with their protocols, ``metrics.json`` and ``report.md``.

A number without its protocol is a trap: FID-500 on Fashion-MNIST and FID-50k
on ImageNet are both "FID". Every value we write or print therefore travels
with a :class:`Protocol` (what was measured, on how many images, against what,
with which sampler and guidance), and two values are comparable only when
their metric and every protocol field are equal (:meth:`MetricRecord.comparison_key`).
``make tables`` relies on this to keep unlike numbers out of the same column.

``metrics.json`` layout (``format`` 1)::

    {"format": 1, "run": {...what was evaluated, timings...},
     "metrics": [{"metric": "gfid", "label": "FID-500", "value": 41.2, "protocol": {...}}, ...]}
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vtp_gen.utils.atomic import write_json_atomic, write_text_atomic

METRICS_FORMAT = 1
# Feature networks named in protocols (vtp_gen.metrics.generation.INCEPTION_EXTRACTOR is the same string).
INCEPTION_FEATURES = "inception-v3-compat/pool3"
RECONSTRUCTION_REFERENCE = "the original images"


@dataclass(frozen=True)
class MetricInfo:
    title: str  # column title
    higher_is_better: bool
    percent: bool = False  # stored as a fraction, shown as a percentage
    digits: int = 2
    # How the sample count enters the label: "dash" -> "FID-500", "paren" -> "PSNR (N=500)".
    count_style: str = "paren"


METRICS: dict[str, MetricInfo] = {
    "gfid": MetricInfo("FID", False, count_style="dash"),
    "kid": MetricInfo("KID", False, digits=4, count_style="dash"),
    "inception_score": MetricInfo("IS", True, digits=1, count_style="dash"),
    "precision": MetricInfo("precision", True),
    "recall": MetricInfo("recall", True),
    "rfid": MetricInfo("rFID", False, count_style="dash"),
    "psnr": MetricInfo("PSNR (dB)", True),
    "ssim": MetricInfo("SSIM", True, digits=3),
    "lpips": MetricInfo("LPIPS", False, digits=3),
    "linear_probe": MetricInfo("linear probe top-1 (%)", True, percent=True, digits=1),
    "linear_probe_bottleneck": MetricInfo("linear probe, bottleneck top-1 (%)", True, percent=True, digits=1),
    "zero_shot_top1": MetricInfo("zero-shot top-1 (%)", True, percent=True, digits=1),
    "zero_shot_top5": MetricInfo("zero-shot top-5 (%)", True, percent=True, digits=1),
    # Fashion-MNIST's own ruler (vtp_gen.metrics.domain): Frechet distance in the garment judge's features,
    # and the share of samples the judge puts in their conditioning class.
    "domain_fd": MetricInfo("FD-judge", False, count_style="dash"),
    "label_agreement": MetricInfo("label agreement (%)", True, percent=True, digits=1),
}


def count_text(n: int | None) -> str:
    """50000 -> '50k', 10000 -> '10k', 500 -> '500' (the field's way of writing FID-N)."""
    if n is None:
        return "?"
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


@dataclass(frozen=True)
class Protocol:
    """How a number was measured. Every field takes part in deciding what is comparable.

    ``dataset``: the images the metric is computed on (generation: the domain of
    the generator, e.g. "ImageNet-1k"); ``num_samples``: the N of FID-N (generated
    samples, reconstructed or classified images); ``reference`` and
    ``num_reference``: what samples are compared with (FID reference set, the
    probe's training split); ``method``: the variant (sampler, probe features,
    zero-shot prompts); ``guidance`` and ``generator``: generation only; ``features``: the
    feature network of FID-type metrics.
    """

    dataset: str
    image_size: int
    num_samples: int | None
    reference: str = ""
    num_reference: int | None = None
    method: str = ""
    guidance: str = ""
    generator: str = ""
    # The network whose features the metric compares (FID family), e.g. the Inception's pool3.
    features: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Protocol:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def describe(self) -> str:
        """One line for footnotes: every field that is set."""
        count = f"N={self.num_samples}" if self.num_samples is not None else "N not stated"
        parts = [f"{self.dataset} at {self.image_size} px", count]
        if self.reference:
            ref = self.reference + (f" ({self.num_reference} images)" if self.num_reference else "")
            parts.append(f"vs {ref}")
        for name in ("method", "generator", "features"):
            if getattr(self, name):
                parts.append(getattr(self, name))
        if self.guidance:
            parts.append(f"guidance: {self.guidance}")
        return "; ".join(parts)


# The protocol vocabulary. eval_run and paper_numbers build their strings with these same
# functions, so an ImageNet run made with the paper's settings lands in the paper's columns.


def sampler_label(method: str, steps: int, shift: float, labels: str = "uniform") -> str:
    """'euler, 250 steps, shift 0.075, uniform labels' (steps = grid points, as in the LightningDiT / VTP
    configs; labels: how class labels are drawn, "uniform" at random (ADM protocol) or "balanced")."""
    shift_text = f"shift {shift:g}" if shift and shift > 0 else "no shift"
    return f"{method}, {steps} steps, {shift_text}, {labels} labels"


def guidance_label(cfg_scale: float, interval_start: float = 0.0, mode: str = "all_channels") -> str:
    """'none', or 'CFG 1.5 for t >= 0.1 (first 3 channels)'."""
    if cfg_scale == 1.0:
        return "none"
    text = f"CFG {cfg_scale:g}"
    if interval_start > 0:
        text += f" for t >= {interval_start:g}"
    if mode == "reference":
        text += " (first 3 channels)"
    return text


def generator_label(name: str, epochs: float | None = None, steps: int | None = None) -> str:
    """'LightningDiT-XL/1, 80 ep' (epochs rounded to whole numbers above 1), else '..., 1500 steps'."""
    if epochs is not None and epochs > 0:
        return f"{name}, {round(epochs) if epochs >= 1 else f'{epochs:.2g}'} ep"
    if steps is not None:
        return f"{name}, {steps} steps"
    return name


TRANSFORM_TEXT = {
    "center_crop": "ADM centre crop",
    "resize": "resized to a square",
    "resize_center_crop": "short side resized (x256/224), centre square",
}


def zero_shot_method(prompts: str, transform: str) -> str:
    """'80 OpenAI templates, OpenCLIP class names, logits = 100 * cosine; images resized to a square'."""
    return f"{prompts}, logits = 100 * cosine; images {TRANSFORM_TEXT.get(transform, transform)}"


def dinov2_probe_method(
    n_last_blocks: Sequence[int], num_learning_rates: int, epochs: int, cached_features: bool = False
) -> str:
    """The DINOv2-style linear probe. ``cached_features``: trained on features computed once, without
    DINOv2's random-resized-crop augmentation (our implementation), which is a different protocol."""
    blocks = " or ".join(str(n) for n in n_last_blocks)
    text = (
        f"DINOv2 linear eval on pre-bottleneck features: CLS of the last {blocks} blocks (+ mean patch token), "
        f"{num_learning_rates} learning rates, SGD momentum 0.9, cosine, {epochs} epochs; best of the sweep"
    )
    return text + ("; cached features (no train-time augmentation)" if cached_features else "")


@dataclass
class MetricRecord:
    """One measured (or published) number. ``value`` is None when the metric could not be computed;
    ``unavailable`` then says why (e.g. Inception Score without the Inception classifier weights)."""

    metric: str
    value: float | None
    protocol: Protocol
    std: float | None = None
    unavailable: str = ""
    extra: dict = field(default_factory=dict)
    # (low, high) at 95 % (vtp_gen.metrics.intervals); how it was made sits in extra["interval"].
    interval: tuple[float, float] | None = None
    # What real images get under the same protocol: {"value", "low", "high", "method", ...}.
    floor: dict | None = None

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; known: {', '.join(METRICS)}")

    @property
    def info(self) -> MetricInfo:
        return METRICS[self.metric]

    @property
    def label(self) -> str:
        """The metric's name with its sample count: 'FID-500', 'rFID-50k', 'PSNR (N=500)'."""
        info, n = self.info, self.protocol.num_samples
        if info.count_style == "dash":
            return f"{info.title}-{count_text(n)}"
        title = info.title.replace(" (%)", "").replace(" (dB)", "")
        return f"{title} (N={count_text(n)})"

    def comparison_key(self) -> tuple:
        """Equal keys <=> the numbers were measured the same way and may share a column."""
        return (self.metric, *dataclasses.astuple(self.protocol))

    def formatted(self) -> str:
        text = format_value(self.metric, self.value, None if self.interval else self.std, self.interval)
        if self.floor is not None and self.value is not None:
            low_high = (self.floor["low"], self.floor["high"])
            text += f" (real data: {format_value(self.metric, self.floor['value'], interval=low_high)})"
        return text

    def to_dict(self) -> dict:
        out = {
            "metric": self.metric,
            "label": self.label,
            "value": self.value,
            "protocol": self.protocol.to_dict(),
        }
        if self.std is not None:
            out["std"] = self.std
        if self.unavailable:
            out["unavailable"] = self.unavailable
        if self.extra:
            out["extra"] = self.extra
        if self.interval is not None:
            out["interval"] = list(self.interval)
        if self.floor is not None:
            out["floor"] = self.floor
        return out

    @classmethod
    def from_dict(cls, values: dict) -> MetricRecord:
        return cls(
            metric=values["metric"],
            value=values.get("value"),
            protocol=Protocol.from_dict(values["protocol"]),
            std=values.get("std"),
            unavailable=values.get("unavailable", ""),
            extra=values.get("extra", {}),
            interval=tuple(values["interval"]) if values.get("interval") else None,
            floor=values.get("floor"),
        )


def format_value(
    metric: str,
    value: float | None,
    std: float | None = None,
    interval: tuple[float, float] | None = None,
) -> str:
    """'41.20', '41.20 ± 0.31' (a std) or '41.20 [39.85, 42.71]' (a 95 % interval)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    info = METRICS[metric]
    scale = 100.0 if info.percent else 1.0
    text = f"{value * scale:.{info.digits}f}"
    if std is not None:
        text += f" ± {std * scale:.{info.digits}f}"
    if interval is not None:
        low, high = interval
        text += f" [{low * scale:.{info.digits}f}, {high * scale:.{info.digits}f}]"
    return text


# ------------------------------------------------------------------ metrics.json


def write_metrics_json(path: str | Path, records: Sequence[MetricRecord], run_info: dict) -> Path:
    payload = {"format": METRICS_FORMAT, "run": run_info, "metrics": [r.to_dict() for r in records]}
    return write_json_atomic(path, payload)


def read_metrics_json(path: str | Path) -> tuple[dict, list[MetricRecord]]:
    """(run info, records) of an eval ``metrics.json``; other files (e.g. stage 1's) are refused."""
    payload = json.loads(Path(path).read_text())
    if not isinstance(payload, dict) or payload.get("format") != METRICS_FORMAT or "metrics" not in payload:
        raise ValueError(f"{path} is not an eval metrics.json (format {METRICS_FORMAT})")
    return payload.get("run", {}), [MetricRecord.from_dict(r) for r in payload["metrics"]]


# ------------------------------------------------------------------ Markdown


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[str]], align: Sequence[str] | None = None
) -> str:
    align = align or ["---"] * len(header)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def metrics_table(records: Sequence[MetricRecord]) -> str:
    """One row per metric: label, value, direction, protocol."""
    rows = []
    for r in records:
        value = r.formatted() if r.value is not None else f"n/a ({r.unavailable})" if r.unavailable else "n/a"
        arrow = "↑" if r.info.higher_is_better else "↓"
        rows.append([r.label, value, arrow, r.protocol.describe()])
    return markdown_table(["metric", "value", "", "protocol"], rows, ["---", "--:", ":-:", "---"])


def console_table(records: Sequence[MetricRecord]) -> str:
    """Plain-text summary for the terminal: each metric labelled with its sample count."""
    width = max((len(r.label) for r in records), default=10)
    lines = []
    for r in records:
        value = r.formatted() if r.value is not None else f"n/a: {r.unavailable}" if r.unavailable else "n/a"
        lines.append(f"  {r.label:<{width}}  {value}")
    return "\n".join(lines)


@dataclass
class ReportImage:
    title: str
    source: Path  # copied into the report's images/ folder
    caption: str = ""
    name: str = ""  # file name in images/ ("" = the source's); stage 1 and 2 both write loss_curves.png

    @property
    def file_name(self) -> str:
        return self.name or Path(self.source).name


def write_report(
    folder: str | Path,
    records: Sequence[MetricRecord],
    run_info: dict,
    images: Sequence[ReportImage] = (),
    title: str = "Evaluation report",
    notes: Sequence[str] = (),
) -> Path:
    """``report.md`` + ``metrics.json`` + copies of the images (so the folder stands alone).

    Images are copied, not linked: a report folder moved or shared elsewhere still shows them.
    """
    folder = Path(folder)
    image_dir = folder / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    write_metrics_json(folder / "metrics.json", records, run_info)
    lines = [f"# {title}", ""]
    for key in ("run", "tokenizer", "generator", "samples"):
        if run_info.get(key):
            lines.append(f"- **{key}**: `{run_info[key]}`")
    if run_info.get("seconds"):
        total = run_info["seconds"].get("total")
        if total is not None:
            lines.append(f"- **evaluation time**: {total:.0f} s")
    lines += ["", "## Metrics", "", metrics_table(records), ""]
    lines.append(
        "Each number is labelled with its sample count (FID-N, rFID-N, ...); numbers with different "
        "protocols are not comparable. `make tables` puts them beside the paper's."
    )
    if any(r.interval is not None for r in records):
        lines += [
            "",
            "[low, high]: 95 % interval (bootstrap over the samples; see docs/eval.md). "
            "(real data: ...): the same metric on as many real images, the floor this N allows.",
        ]
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    for image in images:
        if not Path(image.source).is_file():
            continue
        target = image_dir / image.file_name
        if Path(image.source).resolve() != target.resolve():
            shutil.copy2(image.source, target)
        lines += ["", f"## {image.title}", "", f"![{image.title}](images/{target.name})"]
        if image.caption:
            lines += ["", image.caption]
    return write_text_atomic(folder / "report.md", "\n".join(lines) + "\n")
