"""Zero-shot classification with the tokenizer's CLIP towers.

Written against the official VTP model API, which :class:`vtp_gen.models.tokenizer.VTPModel`
implements: ``get_clip_image_feature(images, normalize=True)`` and
``get_clip_text_feature(tokens, normalize=True)``. The protocol is CLIP's /
OpenCLIP's: each class embedding is the mean of the normalised text
embeddings of its prompts, normalised again; logits = 100 * cosine; top-1 and
top-5 accuracy in percent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vtp_gen.metrics.templates import Template, fill_template

Tokenize = Callable[[list[str]], torch.Tensor]
LOGIT_SCALE = 100.0


@torch.no_grad()
def build_zero_shot_classifier(
    model,
    tokenize: Tokenize,
    class_names: Sequence[str],
    templates: Sequence[Template],
    device: str | torch.device = "cpu",
    classes_per_batch: int = 10,
    progress: bool = False,
) -> torch.Tensor:
    """Class embeddings (D, C): per class, mean of normalised prompt embeddings, renormalised."""
    if not class_names or not templates:
        raise ValueError("need at least one class name and one template")
    columns = []
    starts = range(0, len(class_names), classes_per_batch)
    for start in tqdm(starts, desc="zero-shot classifier", disable=not progress, leave=False):
        names = class_names[start : start + classes_per_batch]
        prompts = [fill_template(t, name) for name in names for t in templates]
        text = model.get_clip_text_feature(tokenize(prompts).to(device), normalize=True)
        per_class = text.float().reshape(len(names), len(templates), -1).mean(dim=1)
        columns.append(F.normalize(per_class, dim=-1).T)
    return torch.cat(columns, dim=1)


def zero_shot_logits(model, images: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    image = model.get_clip_image_feature(images, normalize=True).float()
    return LOGIT_SCALE * image @ classifier.to(image.device)


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Iterable[int] = (1, 5)) -> dict[int, int]:
    """Number of samples whose target is among the k highest logits, per k (k capped at the class count)."""
    ks = tuple(ks)
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == targets.view(-1, 1)
    return {k: int(hits[:, : min(k, logits.shape[1])].any(dim=1).sum()) for k in ks}


@torch.no_grad()
def evaluate_zero_shot(
    model,
    classifier: torch.Tensor,
    loader: Iterable,
    device: str | torch.device = "cpu",
    topk: Iterable[int] = (1, 5),
    progress: bool = True,
) -> dict[str, float | int]:
    """Top-k accuracies (percent) over a labelled loader of (images, labels) or {image, label} batches."""
    topk = tuple(topk)
    correct = dict.fromkeys(topk, 0)
    seen = 0
    for batch in tqdm(loader, desc="zero-shot", disable=not progress, leave=False):
        images, labels = (batch["image"], batch["label"]) if isinstance(batch, dict) else batch[:2]
        labels = torch.as_tensor(labels)
        if len(labels) == 0:
            continue
        logits = zero_shot_logits(model, images.to(device), classifier)
        for k, count in topk_correct(logits, labels.to(logits.device), topk).items():
            correct[k] += count
        seen += len(labels)
    if seen == 0:
        raise ValueError("the loader produced no images")
    result: dict[str, float | int] = {f"top{k}": 100.0 * correct[k] / seen for k in topk}
    result["num_images"] = seen
    result["num_classes"] = int(classifier.shape[1])
    return result


def zero_shot_accuracy(
    model,
    tokenize: Tokenize,
    class_names: Sequence[str],
    templates: Sequence[Template],
    loader: Iterable,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, float | int]:
    """Build the classifier and evaluate it: the whole zero-shot protocol in one call."""
    classifier = build_zero_shot_classifier(
        model, tokenize, class_names, templates, device, progress=progress
    )
    return evaluate_zero_shot(model, classifier, loader, device, progress=progress)
