"""The published numbers, as data with their protocols (ImageNet 256).

Sources: arXiv 2512.13687 (v1 Dec 2025, v2 Mar 2026) as summarised in
docs/vtp-method.md section 6, and the comparison table of the authors' README
(MiniMax-AI/VTP), which adds the peers' columns. Every number carries the
protocol it was measured under (:class:`~vtp_gen.metrics.report.Protocol`), so
``make tables`` can place a run's number beside a paper number only when the
two were measured the same way.

Protocol facts (docs/vtp-method.md section 5): gFID is FID-50k of Inception
pool3 features against the ADM reference batch ``VIRTUAL_imagenet256_labeled.npz``
(10k samples in the scaling studies); rFID reconstructs the 50k ImageNet val
images at 256 px; zero-shot uses the 80 OpenAI templates and OpenCLIP's class
names on ImageNet val; the headline linear probe is the DINOv2 sweep on
pre-bottleneck features. Headline generation: LightningDiT-XL/1, 80 epochs,
Euler 250 steps with timestep shift 0.075, no guidance.
"""

from __future__ import annotations

from dataclasses import dataclass

from vtp_gen.metrics.report import (
    INCEPTION_FEATURES,
    RECONSTRUCTION_REFERENCE,
    MetricRecord,
    Protocol,
    dinov2_probe_method,
    generator_label,
    guidance_label,
    sampler_label,
    zero_shot_method,
)

IMAGENET = "ImageNet-1k"
IMAGENET_VAL = "ImageNet-1k val"
IMAGENET_TRAIN = "ImageNet-1k train"
IMAGENET_VAL_SIZE = 50_000
IMAGENET_TRAIN_SIZE = 1_281_167
ADM_REFERENCE = "VIRTUAL_imagenet256_labeled.npz"

# The VTP / LightningDiT inference config (generation/configs/train_vtp_*_dit_xl.yaml).
VTP_SAMPLER = sampler_label("euler", 250, 0.075)
NO_GUIDANCE = guidance_label(1.0)
# The paper states CFG numbers without the scale / interval used.
UNSTATED_GUIDANCE = "CFG (scale and interval not stated)"

# Zero-shot and linear-probe method strings; eval_run writes the same strings when run with these settings.
ZERO_SHOT_IMAGENET = zero_shot_method("80 OpenAI templates, OpenCLIP class names", "resize")
LINEAR_PROBE_DINOV2_SWEEP = dinov2_probe_method((1, 4), 13, 10)


@dataclass(frozen=True)
class PaperNumber:
    table: str  # which table of `make tables` it belongs to (see TABLES)
    row: str  # tokenizer / method, as the paper names it
    record: MetricRecord
    source: str
    column: str = ""  # column heading when it is not the metric's label (scaling tables)
    note: str = ""


@dataclass(frozen=True)
class TableInfo:
    title: str
    description: str


TABLES: dict[str, TableInfo] = {
    "tokenizers": TableInfo(
        "Tokenizers on ImageNet 256: understanding, reconstruction, generation",
        "Paper Table 2 and the authors' README. gFID: LightningDiT-XL/1 trained 80 epochs on the "
        "tokenizer's latents, sampled without guidance.",
    ),
    "guided": TableInfo(
        "VTP-L with classifier-free guidance",
        "LightningDiT-XL/1 on VTP-L latents; guidance settings are not stated in the paper.",
    ),
    "peer_systems": TableInfo(
        "Other generation systems at 80 epochs without guidance",
        "Each method's own generator and training recipe: comparable with each other only loosely, "
        "and not with the LightningDiT-XL/1 column above.",
    ),
    "ae_architectures": TableInfo(
        "Plain auto-encoders, f16d64 (paper Table 1)",
        "Reconstruction-only tokenizers of three architectures; gFID in the paper's ablation setting.",
    ),
    "data_scaling": TableInfo(
        "Pre-training data scaling: AE vs VTP",
        "Tokenizers pre-trained on more images; gFID-10k of LightningDiT-B/1 on their latents.",
    ),
    "compute_scaling": TableInfo(
        "Pre-training compute scaling: end points of the paper's curves",
        "AE-only stays at gFID ~55-59 whatever the compute; CLIP+SSL+AE improves 65.8% over ~10x "
        "compute (the plotted range spans ~5e9 to 2e11 training GFLOPs).",
    ),
}


def _tokenizer_protocols() -> dict[str, Protocol]:
    return {
        "zero_shot_top1": Protocol(IMAGENET_VAL, 256, IMAGENET_VAL_SIZE, method=ZERO_SHOT_IMAGENET),
        "linear_probe": Protocol(
            IMAGENET_VAL,
            224,
            IMAGENET_VAL_SIZE,
            reference=IMAGENET_TRAIN,
            num_reference=IMAGENET_TRAIN_SIZE,
            method=LINEAR_PROBE_DINOV2_SWEEP,
        ),
        "rfid": Protocol(
            IMAGENET_VAL,
            256,
            IMAGENET_VAL_SIZE,
            reference=RECONSTRUCTION_REFERENCE,
            features=INCEPTION_FEATURES,
        ),
        "psnr": Protocol(IMAGENET_VAL, 256, IMAGENET_VAL_SIZE),
    }


def gfid_protocol(
    num_samples: int = 50_000,
    generator: str = generator_label("LightningDiT-XL/1", epochs=80),
    guidance: str = NO_GUIDANCE,
    method: str = VTP_SAMPLER,
) -> Protocol:
    return Protocol(
        IMAGENET,
        256,
        num_samples,
        reference=ADM_REFERENCE,
        method=method,
        guidance=guidance,
        generator=generator,
        features=INCEPTION_FEATURES,
    )


def _numbers() -> list[PaperNumber]:
    tok = _tokenizer_protocols()
    headline_gfid = gfid_protocol()
    paper, readme = "arXiv 2512.13687 Table 2", "MiniMax-AI/VTP README"
    out: list[PaperNumber] = []

    def add(table, row, metric, value, protocol, source, column="", note=""):
        out.append(PaperNumber(table, row, MetricRecord(metric, value, protocol), source, column, note))

    # --- VTP tokenizers: zero-shot (%), linear probe (%), rFID, gFID.
    for row, zs, lp, rfid, gfid in (
        ("VTP-S-f16d64", 66.7, 77.5, 0.98, 5.46),
        ("VTP-B-f16d64", 73.2, 81.0, 0.74, 3.88),
        ("VTP-L-f16d64", 78.2, 85.7, 0.36, 2.81),
    ):
        add("tokenizers", row, "zero_shot_top1", zs / 100, tok["zero_shot_top1"], paper)
        add("tokenizers", row, "linear_probe", lp / 100, tok["linear_probe"], paper)
        add("tokenizers", row, "rfid", rfid, tok["rfid"], paper)
        add("tokenizers", row, "gfid", gfid, headline_gfid, paper)
    v2 = "VTP-L-f16d64 (paper v2)"
    add("tokenizers", v2, "gfid", 2.62, headline_gfid, "arXiv 2512.13687v2")
    add("tokenizers", v2, "inception_score", 197.8, headline_gfid, "arXiv 2512.13687v2")
    add("tokenizers", v2, "precision", 0.79, headline_gfid, "arXiv 2512.13687v2")
    add("tokenizers", v2, "recall", 0.62, headline_gfid, "arXiv 2512.13687v2")

    # --- Peers as listed beside VTP in the README (same columns).
    for row, zs, lp, rfid, gfid in (
        ("OpenCLIP", 74.0, None, None, None),
        ("CLIP", 75.5, None, None, None),
        ("SigLIP", 80.5, None, None, None),
        ("MAE", None, 85.9, None, None),
        ("DINOv2", None, 86.7, None, None),
        ("UniTok", 70.8, None, 0.41, None),
        ("VILA-U", 73.3, None, 1.80, None),
        ("VA-VAE-f16d32", None, None, 0.28, 4.29),
        ("VA-VAE-f16d64", None, None, 0.15, None),
        ("RAE-f16d768", None, 84.5, 0.57, 4.28),
    ):
        if zs is not None:
            add("tokenizers", row, "zero_shot_top1", zs / 100, tok["zero_shot_top1"], readme)
        if lp is not None:
            add("tokenizers", row, "linear_probe", lp / 100, tok["linear_probe"], readme)
        if rfid is not None:
            add("tokenizers", row, "rfid", rfid, tok["rfid"], readme)
        if gfid is not None:
            add("tokenizers", row, "gfid", gfid, headline_gfid, readme)

    # --- Guidance.
    for epochs, value in ((80, 1.44), (600, 1.11)):
        protocol = gfid_protocol(
            generator=generator_label("LightningDiT-XL/1", epochs=epochs), guidance=UNSTATED_GUIDANCE
        )
        add(
            "guided",
            "VTP-L-f16d64",
            "gfid",
            value,
            protocol,
            "arXiv 2512.13687",
            column=f"gFID-50k, {epochs} ep",
        )
        if epochs == 600:
            add(
                "guided",
                "VTP-L-f16d64",
                "inception_score",
                279.5,
                protocol,
                "arXiv 2512.13687",
                f"IS, {epochs} ep",
            )

    # --- Other systems at 80 epochs without guidance (their own generators).
    own = gfid_protocol(generator="each method's own generator, 80 ep", method="each method's own sampler")
    for row, value in (("REPA-E", 3.46), ("REPA", 7.90), ("VA-VAE + LightningDiT", 4.29), ("RAE", 4.28)):
        add("peer_systems", row, "gfid", value, own, "arXiv 2512.13687")

    # --- Table 1: plain AEs. Ablation gFID: LightningDiT-B/1, FID-10k, no guidance.
    ablation = gfid_protocol(10_000, generator="LightningDiT-B/1", method="")
    for row, psnr, gfid in (
        ("CNN (LDM) AE", 30.63, 59.53),
        ("ViT-B AE", 30.72, 58.40),
        ("ViT-L AE", 31.28, 53.51),
    ):
        add(
            "ae_architectures",
            row,
            "psnr",
            psnr,
            Protocol(IMAGENET_VAL, 256, None),
            "arXiv 2512.13687 Table 1",
            column="rPSNR (dB)",
        )
        add("ae_architectures", row, "gfid", gfid, ablation, "arXiv 2512.13687 Table 1", column="gFID-10k")

    # --- Data scaling: gFID-10k of LightningDiT-B/1.
    sizes = ("100K", "1M", "10M", "100M")
    for row, values in (
        ("AE", (58.37, 58.39, 57.23, 56.71)),
        ("VTP (CLIP+SSL+AE)", (47.59, 40.57, 30.98, 27.45)),
    ):
        for size, value in zip(sizes, values):
            add("data_scaling", row, "gfid", value, ablation, "arXiv 2512.13687", column=f"{size} images")

    # --- Compute scaling end points (section 1 of the paper).
    add(
        "compute_scaling",
        "AE only",
        "rfid",
        2.0,
        Protocol(IMAGENET_VAL, 256, None),
        "arXiv 2512.13687",
        column="rFID, least compute",
    )
    add(
        "compute_scaling",
        "AE only",
        "rfid",
        0.5,
        Protocol(IMAGENET_VAL, 256, None),
        "arXiv 2512.13687",
        column="rFID, most compute",
    )
    for row, first, last in (("AE only", 55.04, 58.56), ("CLIP+SSL+AE (VTP)", 81.3, 27.8)):
        add(
            "compute_scaling",
            row,
            "gfid",
            first,
            ablation,
            "arXiv 2512.13687",
            column="gFID-10k, least compute",
        )
        add(
            "compute_scaling",
            row,
            "gfid",
            last,
            ablation,
            "arXiv 2512.13687",
            column="gFID-10k, most compute",
        )
    return out


PAPER_NUMBERS: tuple[PaperNumber, ...] = tuple(_numbers())


def paper_numbers(table: str | None = None) -> list[PaperNumber]:
    """All published numbers, or those of one table (a key of :data:`TABLES`)."""
    if table is not None and table not in TABLES:
        raise KeyError(f"unknown table {table!r}; known: {', '.join(TABLES)}")
    return [n for n in PAPER_NUMBERS if table is None or n.table == table]
