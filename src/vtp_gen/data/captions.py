"""Captions made from class labels, for labelled sets used as image-text pairs.

No registry package ships image-caption pairs, so the embedded default turns
its labels into short varied captions; the CLIP branch then learns the same
kind of text-image alignment it learns from DataComp alt-text, at toy scale.
"""

from __future__ import annotations

CAPTION_TEMPLATES = (
    "a photo of {a} {c}.",
    "a black and white picture of {a} {c}.",
    "a grayscale photo of the {c}.",
    "a low resolution photo of {a} {c}.",
    "a product photo of {a} {c}.",
    "{a} {c} on a black background.",
    "an image of {a} {c}.",
    "a picture showing {a} {c}.",
    "a small photo of the {c}.",
    "a centered photo of {a} {c}.",
    "a catalogue image of {a} {c}.",
    "a close-up of the {c}.",
)


def article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"


def caption_for(class_name: str, index: int) -> str:
    """A caption for sample ``index`` of class ``class_name``; deterministic so runs resume exactly."""
    # Multiplicative hashing spreads consecutive indices over the templates.
    template = CAPTION_TEMPLATES[(index * 2654435761) % 4294967296 % len(CAPTION_TEMPLATES)]
    return template.format(a=article(class_name), c=class_name)
