"""The synthetic text-to-image generator draws the class named in a templated sentence."""

import numpy as np
import pytest
from PIL import Image
from scipy.spatial import ConvexHull
from test_synthetic_world import hue_name

from dpseg.data.synthetic.generator import SyntheticGenerator, modifiers_of
from dpseg.errors import InputError


def shape_descriptors(mask: np.ndarray) -> tuple[float, float]:
    """(area / max-radius^2 around the centroid, area / convex-hull area) of a bool mask."""
    ys, xs = np.nonzero(mask)
    pts = np.stack([xs + 0.5, ys + 0.5], 1)
    r2 = ((pts - pts.mean(0)) ** 2).sum(1).max()
    return len(pts) / r2, len(pts) / ConvexHull(pts).volume


def dark_fraction(image: np.ndarray, mask: np.ndarray) -> float:
    lum = image[mask].astype(float).mean(1)
    return float((lum < 0.75 * np.median(lum[lum >= np.percentile(lum, 40)])).mean())


@pytest.mark.parametrize(
    "phrase",
    [
        "red striped star",
        "blue dotted circle",
        "yellow solid triangle",
        "green solid square",
        "purple striped cross",
        "green dotted star",
    ],
)
def test_generator_draws_the_requested_class(phrase):
    colour, pattern, shape = phrase.split()
    gen = SyntheticGenerator(size=64)
    seeds = [0, 1, 2, 3]
    pairs = gen.generate_with_masks([f"a photo of a {phrase}."] * 4, seeds)
    for image, mask in pairs:
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and mask.sum() > 200
        assert hue_name(np.median(image[mask], axis=0)) == colour  # the dominant object colour
        outside = image[~mask].astype(float)
        sat = (outside.max(1) - outside.min(1)) / np.maximum(outside.max(1), 1)
        assert np.median(sat) < 0.4  # the background is not a saturated object colour
        dark = dark_fraction(image, mask)
        expected = {"solid": (0.0, 0.06), "dotted": (0.12, 0.42), "striped": (0.3, 0.7)}[pattern]
        assert expected[0] <= dark <= expected[1], (pattern, dark)
        ratio, solidity = shape_descriptors(mask)
        want = {
            "circle": (2.9, 3.3, 0.95),
            "square": (1.8, 2.15, 0.95),
            "triangle": (1.15, 1.45, 0.95),
            "star": (1.1, 1.45, 0.0),
            "cross": (1.7, 2.15, 0.0),
        }[shape]
        assert want[0] <= ratio <= want[1], (shape, ratio)
        assert (solidity >= want[2]) if want[2] else (solidity < 0.8), (shape, solidity)


def test_generator_is_deterministic_and_seed_dependent():
    gen = SyntheticGenerator()
    a = gen.generate(["a bad photo of a red striped star.", "a photo of many green dotted circle."], [5, 5])
    b = gen.generate(["a bad photo of a red striped star.", "a photo of many green dotted circle."], [5, 5])
    c = gen.generate(["a bad photo of a red striped star."], [6])
    assert all(isinstance(x, Image.Image) and x.size == (64, 64) and x.mode == "RGB" for x in a)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
    # the result of one text does not depend on what else is in the batch
    alone = gen.generate(["a photo of many green dotted circle."], [5])
    assert np.array_equal(np.asarray(alone[0]), np.asarray(a[1]))
    assert SyntheticGenerator(size=32).generate(["a red solid star"], [0])[0].size == (32, 32)
    assert gen.identity != SyntheticGenerator(size=32).identity


def test_template_words_change_the_rendering():
    assert modifiers_of("a photo of many red solid star.") == ("many",)
    assert modifiers_of("a black and white photo of the red solid star.") == ("black and white",)
    assert modifiers_of("a photo of my red solid star.") == ()
    gen = SyntheticGenerator()
    ((bw, _),) = gen.generate_with_masks(["a black and white photo of a red solid star."], [0])
    assert np.abs(bw[..., 0].astype(int) - bw[..., 1]).max() == 0  # grey
    dark = np.mean([np.asarray(x).mean() for x in gen.generate(["a dark photo of a red solid star."] * 8, range(8))])
    plain = np.mean([np.asarray(x).mean() for x in gen.generate(["a photo of a red solid star."] * 8, range(8))])
    assert dark < 0.75 * plain


def test_bad_inputs_raise_clear_errors():
    gen = SyntheticGenerator()
    with pytest.raises(InputError, match="holds no class phrase"):
        gen.generate(["a photo of a dog."], [0])
    with pytest.raises(InputError, match="'pink'|holds no class phrase"):
        gen.generate(["a photo of a pink striped star."], [0])
    with pytest.raises(InputError, match="one seed per text"):
        gen.generate(["a red solid star", "a blue solid star"], [0])
    with pytest.raises(InputError, match="list of sentences"):
        gen.generate("a red solid star", [0])
    with pytest.raises(InputError, match="size must be an integer >= 16"):
        SyntheticGenerator(size=8)


def test_generator_understands_vocabulary_words_and_caption_synonyms():
    gen = SyntheticGenerator()
    for vocab_word, synonym in (("solid", "plain"), ("striped", "stripy"), ("dotted", "spotted")):
        pairs = gen.generate_with_masks(
            [f"a photo of a blue {vocab_word} square.", f"a photo of a blue {synonym} square."], [3, 3]
        )
        fractions = [dark_fraction(image, mask) for image, mask in pairs]
        expected = {"solid": (0.0, 0.06), "dotted": (0.12, 0.42), "striped": (0.3, 0.7)}[vocab_word]
        assert all(expected[0] <= f <= expected[1] for f in fractions), (vocab_word, fractions)
        assert all(hue_name(np.median(image[mask], axis=0)) == "blue" for image, mask in pairs)


def _texture(image: np.ndarray, keep: np.ndarray) -> float:
    """Mean absolute difference between horizontally adjacent pixels where both are in ``keep``."""
    grey = image.astype(float).mean(2)
    both = keep[:, 1:] & keep[:, :-1]
    return float(np.abs(np.diff(grey, axis=1))[both].mean())


def test_prompt_style_differs_from_the_scene_style():
    """Style gap: prompt images have a plain light background and outlined objects; scenes keep their texture."""
    from scipy.ndimage import binary_dilation

    from dpseg.data.synthetic.render import random_scene
    from dpseg.data.synthetic.world import seen_classes

    texts = [
        "a photo of a red striped star.",
        "a photo of a green solid square.",
        "a photo of a yellow dotted circle.",
    ] * 4
    stats = {}
    for style in ("prompt", "scene"):
        gen = SyntheticGenerator(style=style)
        texture, level, ring = [], [], []
        for image, mask in gen.generate_with_masks(texts, range(len(texts))):
            near = binary_dilation(mask, iterations=1) & ~mask  # the pixels just outside the object
            far = ~binary_dilation(mask, iterations=4)
            texture.append(_texture(image, far))
            level.append(image[far].mean())
            ring.append(image[near].mean() / image[far].mean())
        stats[style] = np.mean(texture), np.mean(level), np.mean(ring)
    assert stats["prompt"][0] < 0.5 * stats["scene"][0]  # near-uniform, untextured background
    assert stats["prompt"][1] > 200 > stats["scene"][1]  # light
    assert stats["prompt"][2] < 0.5 < stats["scene"][2]  # a dark outline around the object
    scenes = [random_scene(seen_classes(), np.random.default_rng(i)) for i in range(6)]
    scene_texture = np.mean([_texture(s.image, ~binary_dilation(s.label >= 0, iterations=4)) for s in scenes])
    assert scene_texture > 2 * stats["prompt"][0] and abs(scene_texture - stats["scene"][0]) < 0.5 * stats["scene"][0]
    with pytest.raises(InputError, match="style must be one of"):
        SyntheticGenerator(style="photo")
