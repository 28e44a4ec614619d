"""Schemas of text-to-image training (``make stage2`` with a ``t2i*`` recipe) and prompt sampling.

The training schema is the class-conditional stage-2 schema plus a ``text``
section and prompt previews: the latent cache, transport, optimiser, EMA,
trainer and sampler settings mean exactly what they mean there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vtp_gen.config import RunConfig
from vtp_gen.pipeline.stage2.config import (
    GeneratorModelConfig,
    PreviewConfig,
    SampleConfig,
    SamplingConfig,
    Stage2Config,
)

# Prompts in wordings that never occur in the training captions (vtp_gen.data.captions), one per
# Fashion-MNIST class: the grid and the prompt-agreement evaluation use them.
HELD_OUT_PROMPTS = (
    "there is a t-shirt in this picture",
    "trousers, seen from the front",
    "somebody's pullover",
    "one dress, nothing else",
    "this is a coat",
    "my new sandal",
    "someone's shirt",
    "the sneaker I bought",
    "a bag to carry things",
    "an ankle boot for winter",
)


@dataclass
class TextConfig:
    # Probability of training a step's caption as the empty caption (the null condition of guidance).
    caption_dropout_prob: float = 0.1
    # Write captions.json into the cache from `data` when it is missing (docs/text-to-image.md).
    write_captions: bool = True
    # Labelled sets: give each image a second caption naming its class by another name (plural or
    # synonym, vtp_gen.data.captions.NAME_VARIANTS), so prompts may say "trousers" or "a sweater".
    # A captions.json vtp_gen wrote from labels with the other setting is rewritten.
    name_variants: bool = False
    # Precompute the features of every distinct caption when they fit in this many GiB; else each
    # batch's captions go through the frozen text tower as they come.
    feature_table_max_gib: float = 2.0


@dataclass
class TextModelConfig(GeneratorModelConfig):
    # A TextDiT-* registry name; text_dim / pooled_dim come from the tokenizer's text tower.
    name: str = "TextDiT-T/2"


@dataclass
class PromptPreviewConfig(PreviewConfig):
    # One grid row per prompt, per_class samples each (empty = the held-out Fashion-MNIST prompts).
    prompts: list[str] = field(default_factory=list)


@dataclass
class T2IConfig(Stage2Config):
    model: TextModelConfig = field(default_factory=TextModelConfig)
    text: TextConfig = field(default_factory=TextConfig)
    preview: PromptPreviewConfig = field(default_factory=PromptPreviewConfig)


@dataclass
class T2ISampleConfig(SampleConfig):
    # Generator: "" = runs/<run.name>/t2i/generator (what text-to-image training exports).
    # Prompts: a list here, or a text file with one prompt per line (prompts_file wins when set).
    # Empty both = the held-out Fashion-MNIST prompts.
    prompts: list[str] = field(default_factory=list)
    prompts_file: str = ""
    # Samples per prompt; num_samples is ignored (= prompts x per_prompt).
    per_prompt: int = 8
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


@dataclass
class T2IEvalConfig:
    run: RunConfig = field(default_factory=RunConfig)
    # The text-to-image generator: "" = runs/<run.name>/t2i/generator.
    generator: str = ""
    # The class-conditional yardstick: "" = runs/<run.name>/stage2/generator; "none" = skip it.
    class_generator: str = ""
    # The tokenizer (decoder + text tower + CLIP judge): "" = the one recorded with the generator.
    tokenizer: str = ""
    # Samples per held-out prompt (and per class for the yardstick).
    per_prompt: int = 100
    batch_size: int = 250
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # The garment judge: epochs on the train split; stored in the output folder and reused.
    judge_epochs: int = 2
    judge_train_images: int = 0  # 0 = the whole train split (tests use fewer)
    # FID of the text model's samples (and the yardstick's) against this many real test images
    # (0 = no FID); Inception on the CPU costs about a minute per 1000 images.
    fid_real_images: int = 1000
    # Output folder: "" = runs/<run.name>/t2i_eval.
    out_dir: str = ""
    accelerator: str = "auto"
