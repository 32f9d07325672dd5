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
    gen = SyntheticGenerator(size=64, failures="off")  # every image faithful (failures: the tests further down)
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
    identities = {SyntheticGenerator(failures=f).identity for f in (1.0, 0.0, 0.5, "on", "off")}
    assert len(identities) == 3 and SyntheticGenerator(failures="on").identity == gen.identity  # part of the key


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
    gen = SyntheticGenerator(failures="off")
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


# ------------------------------------------------------------------------------------------ generator failures


def test_failure_profile_is_as_designed():
    """One class in three hard (rate 0.5-0.9), in equal shares of the seen classes and of each unseen cube; the
    others rare (0-0.1); modes alternate colour / shape in each share; the wrong value is another value of that
    attribute; the pattern is never the failing attribute; fixed by the world version."""
    from dpseg.data.synthetic.generator import FAILURE_MODES, failure_profile
    from dpseg.data.synthetic.world import COLOURS, SHAPES, UNSEEN_CUBES, all_classes, seen_classes

    profile = failure_profile()
    assert set(profile) == set(all_classes()) and failure_profile() is profile
    groups = [seen_classes()] + [
        [k for k in all_classes() if k.colour in cs and k.pattern in ps and k.shape in ss]
        for cs, ps, ss in UNSEEN_CUBES
    ]
    for group, hard in zip(groups, (20, 3, 3)):
        assert sum(profile[k].hard for k in group) == hard
        modes = [profile[k].mode for k in group]
        assert abs(modes.count("colour") - modes.count("shape")) <= 1
    for mode in FAILURE_MODES:  # both modes among the hard seen classes and among the hard unseen ones
        assert any(f.hard and f.mode == mode for k, f in profile.items() if k in seen_classes())
        assert any(f.hard and f.mode == mode for k, f in profile.items() if k not in seen_classes())
    for k, f in profile.items():
        assert f.mode in ("colour", "shape")
        low, high = (0.5, 0.9) if f.hard else (0.0, 0.1)
        assert low <= f.rate <= high
        own, values = (k.colour, COLOURS) if f.mode == "colour" else (k.shape, SHAPES)
        assert f.wrong in values and f.wrong != own
    rates = np.array([f.rate for f in profile.values()])
    assert 0.2 < rates.mean() < 0.35  # about 27 % of all images fail


def test_failure_rates_per_class_are_the_profiles():
    """The share of a class's images that fail is its rate (x the generator's scale), over templates and seeds."""
    from dpseg.data.synthetic.generator import failure_profile
    from dpseg.data.synthetic.world import all_classes

    templates = ["a photo of a {}.", "a bad photo of the {}.", "a rendering of a {}.", "graffiti of a {}."]
    n = 400
    for scale in (1.0, 0.5, 0.0):
        gen = SyntheticGenerator(failures=scale)
        for k in all_classes():
            rate = min(1.0, scale * failure_profile()[k].rate)
            fails = [gen.failure_of(k, templates[i % 4].format(k.name), i)[0] is not None for i in range(n)]
            tolerance = 4 * np.sqrt(rate * (1 - rate) / n) + 1e-9
            assert abs(np.mean(fails) - rate) <= tolerance, (k.name, scale, np.mean(fails), rate)
    assert SyntheticGenerator(failures=5).failure_of(k, "a photo of a red solid star.", 0)  # scale capped at rate 1


def _failing_and_faithful(gen, off, text, want_fail: bool, count: int = 4):
    """(image from ``gen``, mask, image from ``off``, mask) for the first ``count`` seeds that fail (or do not)."""
    from dpseg.data.synthetic.world import find_class_in_text

    cls = find_class_in_text(text)
    seeds = [s for s in range(400) if (gen.failure_of(cls, text, s)[0] is not None) == want_fail][:count]
    assert len(seeds) == count
    on, faithful = gen.generate_with_masks([text] * count, seeds), off.generate_with_masks([text] * count, seeds)
    return [(a, m, b, n) for (a, m), (b, n) in zip(on, faithful)]


def test_failures_off_is_the_faithful_generator_and_only_failing_images_change():
    """failures=off never fails; with failures on, an image that does not fail is pixel-identical to the image
    drawn with failures off, and a failing one differs (same seed, same text)."""
    from dpseg.data.synthetic.generator import failure_profile
    from dpseg.data.synthetic.world import all_classes

    off, on = SyntheticGenerator(failures="off"), SyntheticGenerator()
    assert all(off.failure_of(k, f"a photo of a {k.name}.", s)[0] is None for k in all_classes() for s in range(5))
    hard = next(k for k in all_classes() if failure_profile()[k].hard)
    text = f"a photo of a {hard.name}."
    for a, m, b, n in _failing_and_faithful(on, off, text, want_fail=False):
        assert np.array_equal(a, b) and np.array_equal(m, n)
    for a, _, b, _ in _failing_and_faithful(on, off, text, want_fail=True):
        assert not np.array_equal(a, b)
    again = on.generate_with_masks([text] * 6, list(range(6)))  # deterministic with failures too
    for (a, m), (b, n) in zip(again, on.generate_with_masks([text] * 6, list(range(6)))):
        assert np.array_equal(a, b) and np.array_equal(m, n)


@pytest.mark.parametrize("mode", ["shape", "colour"])
def test_a_failing_image_draws_the_wrong_attribute_and_its_mask_is_the_drawn_object(mode):
    """shape: the object has the wrong shape (its mask's descriptors are the wrong shape's), colour and pattern kept.
    colour: the object has the wrong colour and the class's colour is outside the object (a distractor or the
    background); the mask covers the drawn object, not the distractor."""
    from dpseg.data.synthetic.generator import failure_profile
    from dpseg.data.synthetic.world import all_classes

    off, on = SyntheticGenerator(failures="off"), SyntheticGenerator()
    cls = next(k for k in all_classes() if failure_profile()[k].hard and failure_profile()[k].mode == mode)
    wrong = failure_profile()[cls].wrong
    for image, mask, _, faithful_mask in _failing_and_faithful(on, off, f"a photo of a {cls.name}.", True):
        expected = {"solid": (0.0, 0.06), "dotted": (0.12, 0.42), "striped": (0.3, 0.7)}[cls.pattern]
        assert expected[0] <= dark_fraction(image, mask) <= expected[1]  # the pattern is never misdrawn
        if mode == "shape":
            assert hue_name(np.median(image[mask], axis=0)) == cls.colour
            assert not np.array_equal(mask, faithful_mask)
            got, want = (
                shape_descriptors(mask),
                shape_descriptors(
                    SyntheticGenerator(failures="off").generate_with_masks(
                        [f"a photo of a {cls.colour} {cls.pattern} {wrong}."], [0]
                    )[0][1]
                ),
            )
            assert abs(got[0] - want[0]) < 0.25 and abs(got[1] - want[1]) < 0.12, (got, want)
        else:
            assert np.array_equal(mask, faithful_mask)  # same pose and size: only the colours moved
            assert hue_name(np.median(image[mask], axis=0)) == wrong
            outside = image[~mask].astype(float)
            saturated = (outside.max(1) - outside.min(1)) / np.maximum(outside.max(1), 1) > 0.15
            hues = [hue_name(px) for px in outside[saturated][::7]]
            assert hues and hues.count(cls.colour) > 0.5 * len(hues), (cls.name, wrong)


def test_failure_settings_in_the_generator_spec():
    from dpseg.config import build_config
    from dpseg.errors import BankError
    from dpseg.prompts.generate import get_generator

    cfg = build_config("synthetic").prompts
    assert get_generator("synthetic", cfg).failures == 1.0
    off = get_generator("synthetic:failures=off", cfg)
    both = get_generator("synthetic:size=32,style=scene,failures=0.5", cfg)
    assert off.failures == 0 and (both.size, both.style, both.failures) == (32, "scene", 0.5)
    assert len({g.identity for g in (get_generator("synthetic", cfg), off, both)}) == 3
    with pytest.raises(BankError, match="failures must be on, off or a number"):
        get_generator("synthetic:failures=sometimes", cfg)
    with pytest.raises(InputError, match="failures must be on, off or a number"):
        SyntheticGenerator(failures=-1)
