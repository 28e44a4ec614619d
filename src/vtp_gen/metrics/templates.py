"""Class names and prompt templates for zero-shot classification.

ImageNet uses what the VTP zero-shot script and CLIP papers use: OpenCLIP's
cleaned-up class names and the 80 OpenAI templates, both shipped with
``open_clip`` (``open_clip.zero_shot_metadata``). The embedded dataset,
Fashion-MNIST, gets its own small template set below.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from vtp_gen.data.fashion_mnist import CLASS_NAMES

Template = str | Callable[[str], str]

# Official Fashion-MNIST label names, in label order.
FASHION_MNIST_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# Prompts for grayscale 28x28 product shots; "{}" is the class name. Worded
# differently from the training captions (vtp_gen.data.captions), so that the
# zero-shot score measures alignment rather than caption recall.
FASHION_MNIST_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a grayscale photo of a {}.",
    "a blurry photo of a {}.",
    "a low contrast photo of the {}.",
    "a tiny photo of a {}.",
    "a thumbnail of a {}.",
    "a pixelated photo of the {}.",
    "a black and white image of a {}.",
    "a {} in a fashion catalogue.",
)


def fashion_mnist_class_names() -> tuple[str, ...]:
    """Prompt-friendly names, the same words the embedded set's captions use."""

    return tuple(CLASS_NAMES)


def imagenet_class_names() -> tuple[str, ...]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return tuple(IMAGENET_CLASSNAMES)


def openai_imagenet_templates() -> tuple[Template, ...]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(OPENAI_IMAGENET_TEMPLATES)


def zero_shot_setup(dataset: str) -> tuple[Sequence[str], Sequence[Template]]:
    """(class names, templates) for ``"imagenet"`` or ``"fashion_mnist"``."""
    if dataset == "imagenet":
        return imagenet_class_names(), openai_imagenet_templates()
    if dataset in ("fashion_mnist", "fashion-mnist"):
        return fashion_mnist_class_names(), FASHION_MNIST_TEMPLATES
    raise ValueError(f"no zero-shot class names / templates for {dataset!r}; known: imagenet, fashion_mnist")


def fill_template(template: Template, class_name: str) -> str:
    return template(class_name) if callable(template) else template.format(class_name)
