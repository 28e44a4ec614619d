"""Captions made from class labels, for labelled sets used as image-text pairs.

No registry package ships image-caption pairs, so the embedded default turns
its labels into short varied captions; the CLIP branch then learns the same
kind of text-image alignment it learns from DataComp alt-text, at toy scale.
"""

from __future__ import annotations

import re

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


# Other names people write for the Fashion-MNIST garments: the plural and common synonyms, as
# (noun, is_plural). Text-to-image captions use them (text.name_variants) so that a prompt may name
# the garment as a person would ("trousers", "a sweater"), not only by the dataset's label. The
# wording frames stay CAPTION_TEMPLATES': held-out prompt wordings remain unseen in training.
NAME_VARIANTS: dict[str, tuple[tuple[str, bool], ...]] = {
    "t-shirt": (("t-shirts", True), ("tee", False), ("top", False)),
    "trouser": (("trousers", True), ("pants", True), ("jeans", True)),
    "pullover": (("pullovers", True), ("sweater", False), ("jumper", False)),
    "dress": (("dresses", True), ("gown", False)),
    "coat": (("coats", True), ("jacket", False)),
    "sandal": (("sandals", True), ("flip-flop", False)),
    "shirt": (("shirts", True), ("blouse", False)),
    "sneaker": (("sneakers", True), ("trainer", False), ("running shoe", False)),
    "bag": (("bags", True), ("handbag", False), ("purse", False)),
    "ankle boot": (("ankle boots", True), ("boot", False), ("boots", True)),
}


def variant_caption(class_name: str, index: int) -> str | None:
    """A caption naming class ``class_name`` by one of its other names (None when it has none);
    deterministic in ``index``, drawn independently of :func:`caption_for`'s template."""
    variants = NAME_VARIANTS.get(class_name)
    if not variants:
        return None
    mixed = (index * 2246822519 + 3266489917) % 4294967296
    noun, plural = variants[mixed % len(variants)]
    template = CAPTION_TEMPLATES[mixed // len(variants) % len(CAPTION_TEMPLATES)]
    caption = template.format(a="" if plural else article(noun), c=noun)
    return re.sub(" +", " ", caption).strip()


def label_caption(class_name: str, index: int, variant_share: float = 0.0) -> str:
    """The caption of sample ``index``: about ``variant_share`` of the samples (chosen by a hash of
    the index, so runs resume exactly) name the class by another name (:func:`variant_caption`),
    the rest by its label (:func:`caption_for`). A tokenizer's text tower only learns the words its
    captions use: with 0, a prompt saying "trousers" reaches it as a word it never saw."""
    if variant_share > 0 and (index * 3266489917 + 668265263) % 4294967296 < variant_share * 4294967296:
        if variant := variant_caption(class_name, index):
            return variant
    return caption_for(class_name, index)
