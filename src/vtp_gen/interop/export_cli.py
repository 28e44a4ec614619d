"""Export a run's tokenizer + EMA generator + latent statistics as a diffusers pipeline folder.

    python -m vtp_gen.interop.export_cli --run runs/default --out exported/
    python -m vtp_gen.interop.export_cli --run runs/default --out exported/ --grid docs/images/diffusers_grid.png
    python -m vtp_gen.interop.export_cli --run runs/t2i_tiny --t2i --out exported_t2i/ \
        --grid grid.png --prompt "a coat" --prompt "a sneaker"

Reads what ``make stage2`` leaves in ``<run>/stage2/generator/`` (with
``--t2i``: what text-to-image training leaves in ``<run>/t2i/generator/``):
the EMA weights (``config.json`` + ``model.safetensors``), the cache's
``latents_stats.pt`` and ``stage2.json`` (the tokenizer it was trained with,
the latent multiplier, the sampler recipe). The tokenizer is that one, else
``<run>/stage1/tokenizer``. Every input can be named explicitly instead.

The generator's ``config.json`` decides the pipeline: a class-conditional
generator gives a ``VTPPipeline`` (class names from the cache's manifest:
Fashion-MNIST names, or the class folders of an image folder; or from
``--class-names``), a text generator (``TextLightningDiT``) a
``VTPTextPipeline`` whose text encoder is the tokenizer's own text tower.

The written folder loads with ``VTPPipeline.from_pretrained(out)`` (or
``VTPTextPipeline``) after ``import vtp_gen.interop.diffusers``; ``--grid``
reloads it from disk and draws one row per class (per ``--prompt`` for a text
pipeline, the prompt written beside its row), so a successful grid proves the
folder is complete.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from vtp_gen.data.fashion_mnist import CLASS_NAMES as FASHION_MNIST_CLASSES
from vtp_gen.data.images import captioned_grid, save_grid, save_png
from vtp_gen.interop.diffusers import (
    VTPPipeline,
    VTPTextPipeline,
    build_pipeline,
    build_text_pipeline,
    pipeline_sampling,
)
from vtp_gen.interop.generators import is_text_generator, load_generator, load_text_generator
from vtp_gen.interop.vtp import load_tokenizer
from vtp_gen.latents.dataset import LatentStats
from vtp_gen.latents.manifest import STATS_FILE, read_manifest

GENERATOR_SUBDIR = Path("stage2") / "generator"
TEXT_GENERATOR_SUBDIR = Path("t2i") / "generator"
TOKENIZER_SUBDIR = Path("stage1") / "tokenizer"
RUN_INFO_FILE = "stage2.json"
EXPORT_INFO_FILE = "vtp_gen_export.json"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def resolve_tokenizer(run: Path | None, run_info: dict, explicit: str | None) -> Path:
    """--tokenizer, else the one stage 2 trained with (if still there), else <run>/stage1/tokenizer."""
    candidates = [Path(explicit)] if explicit else []
    if not explicit:
        if run_info.get("tokenizer"):
            candidates.append(Path(run_info["tokenizer"]))
        if run is not None:
            candidates.append(run / TOKENIZER_SUBDIR)
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates) or "nothing (give --run or --tokenizer)"
    raise FileNotFoundError(f"no tokenizer folder (config.json + model.safetensors) found; tried {tried}")


def resolve_stats(generator: Path, run: Path | None, run_info: dict, explicit: str | None) -> Path:
    """The folder holding latents_stats.pt: --latent-stats, the generator's copy, the run's cache."""
    if explicit:
        path = Path(explicit)
        return path.parent if path.is_file() else path
    candidates = [generator if generator.is_dir() else generator.parent]
    if run_info.get("latent_cache"):
        candidates.append(Path(run_info["latent_cache"]))
    if run is not None:
        candidates.append(run / "cache")
    for candidate in candidates:
        if (candidate / STATS_FILE).is_file():
            return candidate
    raise FileNotFoundError(
        f"no {STATS_FILE} found in {', '.join(map(str, candidates))}: give --latent-stats (a cache folder)"
    )


def class_names_from_cache(cache: Path | None) -> list[str] | None:
    """Class names of the dataset a latent cache was made from, when the manifest tells."""
    manifest = read_manifest(cache) if cache is not None and cache.is_dir() else None
    dataset = (manifest or {}).get("dataset", {})
    if dataset.get("source") == "fashion_mnist":
        return list(FASHION_MNIST_CLASSES)
    root = Path(dataset.get("root") or "")
    if dataset.get("source") == "image_folder" and root.is_dir():
        # LabelledImageFolder's labels: sorted class folders.
        return [d.name.replace("_", " ") for d in sorted(root.iterdir()) if d.is_dir()]
    return None


def read_class_names(path: str) -> dict[int, str]:
    """A JSON list of names (index = class id) or a {"id": "name"} object."""
    values = json.loads(Path(path).read_text())
    if isinstance(values, list):
        return dict(enumerate(map(str, values)))
    return {int(k): str(v) for k, v in values.items()}


def export_run(
    out: str | Path,
    run: str | Path | None = None,
    *,
    generator: str | Path | None = None,
    tokenizer: str | Path | None = None,
    latent_stats: str | Path | None = None,
    class_names: dict[int, str] | None = None,
    overrides: dict | None = None,
    t2i: bool = False,
) -> VTPPipeline | VTPTextPipeline:
    """Write the pipeline folder ``out``; returns the (in-memory) pipeline that was saved.

    ``t2i``: the run's default generator is ``<run>/t2i/generator`` (text-to-image training's).
    ``overrides``: ``build_pipeline`` keyword arguments that replace the recipe's
    (``shift``, ``num_inference_steps``, ``guidance_scale``, ...).
    """

    run = Path(run) if run is not None else None
    if generator is None:
        if run is None:
            raise ValueError("give a run folder or a generator")
        generator = run / (TEXT_GENERATOR_SUBDIR if t2i else GENERATOR_SUBDIR)
    generator = Path(generator)
    if not generator.exists():
        step = "text-to-image training" if t2i else "`make stage2`"
        hint = ""
        if not t2i and run is not None and (run / TEXT_GENERATOR_SUBDIR).is_dir():
            hint = f"; {run / TEXT_GENERATOR_SUBDIR} exists: add --t2i to export it"
        raise FileNotFoundError(f"no generator at {generator} (run {step} first, or give --generator){hint}")
    run_info = _read_json((generator if generator.is_dir() else generator.parent) / RUN_INFO_FILE)
    tokenizer_path = resolve_tokenizer(run, run_info, str(tokenizer) if tokenizer else None)
    stats_folder = resolve_stats(generator, run, run_info, str(latent_stats) if latent_stats else None)
    stats = LatentStats.load(stats_folder, multiplier=float(run_info.get("latent_multiplier", 1.0)))
    settings = pipeline_sampling(run_info.get("sampling", {}))
    settings.update(overrides or {})

    if is_text_generator(generator):
        if class_names:
            raise ValueError(f"{generator} is a text-to-image generator: it takes prompts, not class names")
        pipe = build_text_pipeline(
            load_tokenizer(tokenizer_path), load_text_generator(generator), stats, **settings
        )
    else:
        if class_names is None:
            cache = Path(run_info["latent_cache"]) if run_info.get("latent_cache") else None
            if cache is None and run is not None:
                cache = run / "cache"
            names = class_names_from_cache(cache)
            class_names = dict(enumerate(names)) if names else None
        generator_model = load_generator(generator)
        if class_names and len(class_names) != generator_model.num_classes:
            raise ValueError(
                f"{len(class_names)} class names for a generator of {generator_model.num_classes} classes"
            )
        pipe = build_pipeline(
            load_tokenizer(tokenizer_path), generator_model, stats, id2label=class_names, **settings
        )
    out = Path(out)
    pipe.save_pretrained(out)
    info = {
        "pipeline": type(pipe).__name__,
        "generator": str(generator.resolve()),
        "tokenizer": str(tokenizer_path.resolve()),
        "latent_stats": str((stats_folder / STATS_FILE).resolve()),
        "latent_multiplier": stats.multiplier,
        "training_step": run_info.get("step"),
        "weights": run_info.get("weights", "as stored"),
        "recipe_sampling": run_info.get("sampling"),
        "pipeline_sampling": settings,
    }
    (out / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return pipe


def write_grid(
    folder: str | Path,
    path: str | Path,
    per_class: int,
    seed: int,
    rows: int | None = None,
    guidance_scale: float | None = None,
) -> Path:
    """Reload the exported folder and draw ``per_class`` samples of each class (one row per class).

    ``guidance_scale`` None = the pipeline's default (the recipe's).
    """

    pipe = VTPPipeline.from_pretrained(str(folder))
    num_classes = pipe.transformer.config.num_classes
    rows = num_classes if rows is None else min(rows, num_classes)
    classes = torch.linspace(0, num_classes - 1, rows).round().long().unique()
    labels = classes.repeat_interleave(per_class)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    images = pipe(labels, guidance_scale=guidance_scale, generator=generator, output_type="pt").images
    return save_grid(images, path, nrow=per_class)


def write_text_grid(
    folder: str | Path,
    path: str | Path,
    prompts: list[str],
    per_prompt: int,
    seed: int,
    guidance_scale: float | None = None,
) -> Path:
    """Reload the exported text pipeline and draw ``per_prompt`` samples of each prompt, one captioned row each."""
    if not prompts:
        raise ValueError("a text-to-image grid needs prompts: give --prompt (once per row)")
    pipe = VTPTextPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    images = pipe(
        prompt=prompts,
        num_images_per_prompt=per_prompt,
        guidance_scale=guidance_scale,
        generator=generator,
        output_type="pt",
    ).images
    return save_png(captioned_grid(images, prompts, per_prompt, normalized=False), path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vtp_gen.interop.export_cli",
        description="Export a run's tokenizer + EMA generator + latent statistics as a diffusers pipeline folder.",
    )
    parser.add_argument("--run", help="run folder (runs/<name>): reads stage2/generator and stage1/tokenizer")
    parser.add_argument("--out", required=True, help="output folder (a diffusers pipeline)")
    parser.add_argument(
        "--t2i", action="store_true", help="export the run's text-to-image generator (<run>/t2i/generator)"
    )
    parser.add_argument(
        "--generator",
        help="generator folder / .safetensors / .pt (default <run>/stage2/generator, or <run>/t2i/generator)",
    )
    parser.add_argument(
        "--tokenizer", help="tokenizer folder, official VTP layout (default: stage 2's tokenizer)"
    )
    parser.add_argument(
        "--latent-stats", help="latent cache folder or latents_stats.pt (default: the generator's)"
    )
    parser.add_argument("--class-names", help="JSON file: a list of class names or an {id: name} object")
    parser.add_argument("--shift", type=float, help="timestep shift s (ours, on t; default: the recipe's)")
    parser.add_argument(
        "--steps", type=int, help="default Euler steps of the pipeline (default: recipe's grid - 1)"
    )
    parser.add_argument("--guidance-scale", type=float, help="default classifier-free guidance scale")
    parser.add_argument("--grid", help="after exporting, reload the folder and save a sample grid PNG here")
    parser.add_argument(
        "--per-class",
        "--per-prompt",
        dest="per_class",
        type=int,
        default=8,
        help="grid columns (samples per class, or per prompt)",
    )
    parser.add_argument(
        "--prompt", action="append", default=[], help="a text-to-image grid row (repeat for more rows)"
    )
    parser.add_argument("--rows", type=int, help="grid rows (classes, evenly spaced; default all)")
    parser.add_argument("--seed", type=int, default=0, help="grid noise seed")
    parser.add_argument(
        "--grid-guidance-scale", type=float, help="guidance for the grid only (default: pipeline's)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.run is None and args.generator is None:
        build_parser().error("give --run or --generator")
    if args.grid and args.t2i and not args.prompt:
        build_parser().error("a text-to-image --grid needs its rows: give --prompt (once per row)")
    overrides = {}
    for key, value in (
        ("shift", args.shift),
        ("num_inference_steps", args.steps),
        ("guidance_scale", args.guidance_scale),
    ):
        if value is not None:
            overrides[key] = value
    pipe = export_run(
        args.out,
        args.run,
        generator=args.generator,
        tokenizer=args.tokenizer,
        latent_stats=args.latent_stats,
        class_names=read_class_names(args.class_names) if args.class_names else None,
        overrides=overrides,
        t2i=args.t2i,
    )
    config = pipe.config
    if isinstance(pipe, VTPTextPipeline):
        what = f"text-to-image ({pipe.text_encoder.width}-wide text tower)"
    else:
        what = f"{pipe.transformer.config.num_classes} classes"
    print(
        f"exported {args.out}: {what}, "
        f"{config.default_num_inference_steps} Euler steps, shift {pipe.scheduler.config.shift:g} (scheduler), "
        f"guidance {config.default_guidance_scale:g}"
    )
    if args.grid:
        if isinstance(pipe, VTPTextPipeline):
            grid = write_text_grid(
                args.out, args.grid, args.prompt, args.per_class, args.seed, args.grid_guidance_scale
            )
        else:
            grid = write_grid(
                args.out, args.grid, args.per_class, args.seed, args.rows, args.grid_guidance_scale
            )
        print(f"grid -> {grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
