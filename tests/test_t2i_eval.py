"""The text-to-image judges: an independent garment classifier, CLIP score with the tokenizer's towers."""

import numpy as np
import pytest
import torch

from vtp_gen import create_model
from vtp_gen.data.fashion_mnist import FashionMNIST
from vtp_gen.metrics.domain import agreement, judge_inputs, load_or_train_judge
from vtp_gen.pipeline.t2i.config import HELD_OUT_PROMPTS
from vtp_gen.t2i.evaluate import clip_score


def test_judge_learns_is_stored_and_agreement_on_real_images_is_its_accuracy(tmp_path):
    path = tmp_path / "judge.safetensors"
    judge, accuracy = load_or_train_judge(path, epochs=2, max_images=3000)
    assert accuracy > 0.65  # on the whole 10k test split, after 2 epochs of 3k training images
    again, stored = load_or_train_judge(path)
    assert stored == pytest.approx(accuracy)
    test = FashionMNIST(None, "test", max_samples=500)
    pixels = np.repeat(test.images[..., None], 3, axis=-1)  # uint8 (N, 28, 28, 3)
    result = agreement(again, pixels, test.labels.tolist())
    expected = float((judge(judge_inputs(pixels)).argmax(1) == torch.as_tensor(test.labels)).float().mean())
    assert result["agreement"] == pytest.approx(expected, abs=1e-4)
    assert set(result["per_class"]) == set(FashionMNIST.class_names)


def test_judge_inputs_resize_samples_to_fashion_mnist_size():
    x = judge_inputs(np.full((2, 32, 32, 3), 255, dtype=np.uint8))
    assert x.shape == (2, 1, 28, 28) and torch.allclose(x, torch.ones_like(x))


def test_clip_score_is_the_tokenizers_own_cosine_times_100():
    torch.manual_seed(0)
    tokenizer = create_model("vtp-tiny").eval()
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    prompts = ["a bag", "a coat", "a dress", "a shirt"]
    score = clip_score(tokenizer, pixels, prompts, batch=3)
    assert 0.0 <= score <= 100.0
    from vtp_gen.data.text_tokenizer import CLIPTextTokenizer
    from vtp_gen.data.transforms import normalize

    with torch.no_grad():
        image = tokenizer.get_clip_image_feature(
            normalize(torch.as_tensor(pixels).permute(0, 3, 1, 2) / 255.0)
        )
        text = tokenizer.get_clip_text_feature(CLIPTextTokenizer.from_config(tokenizer.config)(prompts))
    assert score == pytest.approx(float(100 * (image * text).sum(-1).clamp(min=0).mean()), abs=1e-2)


def test_held_out_prompts_never_use_a_training_wording():
    from vtp_gen.data.captions import CAPTION_TEMPLATES, NAME_VARIANTS, article, caption_for, variant_caption

    training = {t.format(a=article(c), c=c) for t in CAPTION_TEMPLATES for c in FashionMNIST.class_names}
    # The captions text-to-image training can see (text.name_variants=true adds other garment names).
    seen = {caption_for(c, i) for c in FashionMNIST.class_names for i in range(2000)}
    seen |= {variant_caption(c, i) for c in FashionMNIST.class_names for i in range(2000)}
    assert training <= seen and len(HELD_OUT_PROMPTS) == 10 and not seen & set(HELD_OUT_PROMPTS)
    # Nor their wording frames: with the garment (any of its names) as {c} and articles dropped, no
    # held-out prompt shares a word pair with a training frame (single words like "picture" may recur).
    names = {n for c in FashionMNIST.class_names for n in (c, *(v for v, _ in NAME_VARIANTS[c]))}

    def pairs(text: str) -> set[tuple[str, str]]:
        words = [w.strip(",.") for w in text.split() if w not in ("a", "an", "the", "{a}")]
        return set(zip(words, words[1:]))

    training_pairs = set().union(*(pairs(t) for t in CAPTION_TEMPLATES))
    for prompt in HELD_OUT_PROMPTS:
        frame = prompt
        for name in sorted(names, key=len, reverse=True):
            frame = frame.replace(name, "{c}")
        assert not pairs(frame) & training_pairs, (prompt, pairs(frame) & training_pairs)
    # Each prompt names its own garment (its index is the class the judge must see).
    for name, prompt in zip(FashionMNIST.class_names, HELD_OUT_PROMPTS):
        assert name.rstrip("s") in prompt
