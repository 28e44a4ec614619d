"""Zero-shot classification against the official VTP model API (CLIP image / text features)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vtp_gen.metrics.templates import (
    FASHION_MNIST_LABELS,
    FASHION_MNIST_TEMPLATES,
    fill_template,
    zero_shot_setup,
)
from vtp_gen.metrics.zero_shot import (
    build_zero_shot_classifier,
    evaluate_zero_shot,
    topk_correct,
    zero_shot_accuracy,
    zero_shot_logits,
)


@pytest.fixture(scope="module")
def tokenize():
    open_clip = pytest.importorskip("open_clip")
    return open_clip.get_tokenizer("ViT-B-32")  # bundled BPE vocabulary: works offline


class TinyCLIP(nn.Module):
    """Randomly initialised stand-in exposing the two methods zero-shot needs."""

    def __init__(self, dim=32, vocab=49408):
        super().__init__()
        torch.manual_seed(0)
        self.token_embedding = nn.Embedding(vocab, dim)
        self.text_proj = nn.Linear(dim, dim, bias=False)
        self.image_proj = nn.Linear(3 * 8 * 8, dim)

    def get_clip_text_feature(self, tokens, normalize=True):
        mask = (tokens != 0).float().unsqueeze(-1)
        pooled = (self.token_embedding(tokens) * mask).sum(1) / mask.sum(1)
        out = self.text_proj(pooled)
        return F.normalize(out, dim=-1) if normalize else out

    def get_clip_image_feature(self, images, normalize=True):
        out = self.image_proj(F.adaptive_avg_pool2d(images, 8).flatten(1))
        return F.normalize(out, dim=-1) if normalize else out


class OracleCLIP(TinyCLIP):
    """Image features that point at the class's text embedding: zero-shot must then be perfect."""

    def __init__(self, class_embeddings):
        super().__init__()
        self.class_embeddings = class_embeddings  # (C, D)

    def get_clip_image_feature(self, images, normalize=True):
        label = images[:, 0, 0, 0].round().long()  # the label is written into pixel (0, 0, 0)
        noise = 0.05 * torch.randn(
            len(label), self.class_embeddings.shape[1], generator=torch.Generator().manual_seed(1)
        )
        out = self.class_embeddings[label] + noise
        return F.normalize(out, dim=-1) if normalize else out


def test_classifier_is_mean_of_normalised_prompt_embeddings(tokenize):
    model = TinyCLIP().eval()
    names, templates = zero_shot_setup("fashion_mnist")
    classifier = build_zero_shot_classifier(model, tokenize, names, templates, classes_per_batch=3)
    assert classifier.shape == (32, 10)
    torch.testing.assert_close(classifier.norm(dim=0), torch.ones(10))
    with torch.no_grad():
        prompts = [fill_template(t, names[4]) for t in templates]
        direct = F.normalize(model.get_clip_text_feature(tokenize(prompts)).mean(0), dim=0)
    torch.testing.assert_close(classifier[:, 4], direct)


def test_end_to_end_with_a_random_model(tokenize):
    model = TinyCLIP().eval()
    generator = torch.Generator().manual_seed(0)
    loader = [(torch.randn(8, 3, 28, 28, generator=generator), torch.arange(8) % 10) for _ in range(3)]
    names, templates = zero_shot_setup("fashion_mnist")
    result = zero_shot_accuracy(model, tokenize, names, templates, loader, progress=False)
    assert result["num_images"] == 24 and result["num_classes"] == 10
    assert 0.0 <= result["top1"] <= result["top5"] <= 100.0


def test_perfect_and_chance_level_models(tokenize):
    names, templates = zero_shot_setup("fashion_mnist")
    classifier = build_zero_shot_classifier(TinyCLIP(), tokenize, names, templates)
    oracle = OracleCLIP(classifier.T.clone())
    labels = torch.arange(40) % 10
    images = torch.zeros(40, 3, 8, 8)
    images[:, 0, 0, 0] = labels.float()
    result = evaluate_zero_shot(oracle, classifier, [(images, labels)], progress=False)
    assert result["top1"] == 100.0 and result["top5"] == 100.0
    # Same images, labels shifted by one class: the oracle is now always wrong at top-1.
    shifted = evaluate_zero_shot(
        oracle, classifier, [{"image": images, "label": (labels + 1) % 10}], progress=False
    )
    assert shifted["top1"] == 0.0
    logits = zero_shot_logits(oracle, images, classifier)
    assert logits.abs().max() <= 100.0 + 1e-4  # 100 * cosine


def test_topk_counts():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15], [0.2, 0.3, 0.5]])
    targets = torch.tensor([1, 2, 0])
    assert topk_correct(logits, targets, (1, 2, 5)) == {1: 1, 2: 2, 5: 3}  # k capped at 3 classes


def test_template_sets():
    names, templates = zero_shot_setup("imagenet")
    assert len(names) == 1000 and len(templates) == 80
    assert fill_template(templates[0], "goldfish") == "a bad photo of a goldfish."
    assert names[1] == "goldfish"
    assert len(FASHION_MNIST_LABELS) == 10 and FASHION_MNIST_LABELS[-1] == "Ankle boot"
    assert all("{}" in t for t in FASHION_MNIST_TEMPLATES)
    with pytest.raises(ValueError, match="known"):
        zero_shot_setup("cifar10")


def test_real_vtp_model_end_to_end(reference_dir, tokenize):
    from vtp_gen.interop.vtp import load_tokenizer

    model = load_tokenizer(reference_dir / "vtp_tiny_default")
    names, templates = zero_shot_setup("fashion_mnist")
    classifier = build_zero_shot_classifier(model, tokenize, names, templates[:3])
    assert classifier.shape == (48, 10)
    generator = torch.Generator().manual_seed(0)
    loader = [(torch.randn(4, 3, 64, 64, generator=generator), torch.tensor([0, 1, 2, 3]))]
    result = evaluate_zero_shot(model, classifier, loader, progress=False)
    assert result["num_images"] == 4 and 0.0 <= result["top1"] <= result["top5"] <= 100.0
