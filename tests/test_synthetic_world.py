"""The synthetic world: the fixed split, phrase parsing, deterministic scenes with exact labels."""

import colorsys
import itertools

import numpy as np
import pytest

from dpseg.data.synthetic.render import (
    IGNORE,
    Placement,
    random_scene,
    render_placements,
    shape_mask,
    visible_fractions,
)
from dpseg.data.synthetic.world import (
    COLOURS,
    PATTERNS,
    SHAPES,
    all_classes,
    find_class_in_text,
    parse_class,
    seen_classes,
    unseen_classes,
    vocabulary,
)
from dpseg.errors import InputError

UNSEEN = [
    "red striped circle",
    "red striped star",
    "red dotted circle",
    "red dotted star",
    "green striped circle",
    "green striped star",
    "green dotted circle",
    "green dotted star",
    "blue solid square",
    "blue solid triangle",
    "blue dotted square",
    "blue dotted triangle",
    "yellow solid square",
    "yellow solid triangle",
    "yellow dotted square",
    "yellow dotted triangle",
]


def hue_name(rgb) -> str:
    """The world colour whose hue is nearest to ``rgb``'s."""
    h = colorsys.rgb_to_hsv(*(np.asarray(rgb, float) / 255))[0]
    hues = {name: colorsys.rgb_to_hsv(*(np.asarray(c, float) / 255))[0] for name, c in COLOURS.items()}
    return min(hues, key=lambda n: min(abs(h - hues[n]), 1 - abs(h - hues[n])))


def test_split_is_fixed_and_compositional():
    assert [k.name for k in unseen_classes()] == UNSEEN  # the documented split; changing it needs WORLD_VERSION += 1
    seen = seen_classes()
    assert len(seen) == 59 and len(all_classes()) == 75
    assert not set(seen) & set(unseen_classes())
    for a, values in enumerate((COLOURS, PATTERNS, SHAPES)):  # every attribute value is seen in >= 8 classes
        for i in range(len(values)):
            assert sum(k.indices[a] == i for k in seen) >= 8
    for u in unseen_classes():  # only the triple is new: each pair of its attribute values is seen
        for a, b in itertools.combinations(range(3), 2):
            n = sum(k.indices[a] == u.indices[a] and k.indices[b] == u.indices[b] for k in seen)
            # a cube spans 2 of the 3 patterns, so a colour-shape pair is seen with the third pattern only
            assert n >= (1 if (a, b) == (0, 2) else 2), (u.name, a, b, n)
    assert vocabulary("all") == seen + unseen_classes()


def test_unseen_classes_need_all_three_attributes():
    """Every unseen class has unseen neighbours differing from it in exactly the colour, the pattern, the shape."""
    unseen = [k.indices for k in unseen_classes()]
    for u in unseen:
        for a in range(3):
            assert any(v[a] != u[a] and all(v[b] == u[b] for b in range(3) if b != a) for v in unseen), (u, a)


def test_parse_and_find_phrases():
    assert parse_class(" Red Striped  star ").name == "red striped star"
    assert find_class_in_text("a bad photo of a blue dotted circle.").name == "blue dotted circle"
    assert find_class_in_text("a black and white photo of the green solid cross.").name == "green solid cross"
    # the caption-only pattern synonyms name the same classes
    assert find_class_in_text("a photo of the red spotted star.") == parse_class("red dotted star")
    assert (
        find_class_in_text("green plain cross") == parse_class("green solid cross") == parse_class("green plain cross")
    )
    assert parse_class("blue stripy circle").name == "blue striped circle"
    with pytest.raises(InputError, match="'pink' is not a colour"):
        parse_class("pink striped star")
    with pytest.raises(InputError, match="three words"):
        parse_class("red star")
    with pytest.raises(InputError, match="holds no class phrase"):
        find_class_in_text("a photo of a red star.")
    with pytest.raises(InputError, match="holds 2 class phrase"):
        find_class_in_text("a red solid star next to a blue solid star")
    with pytest.raises(InputError, match="unknown synthetic vocabulary"):
        vocabulary("novel")


def test_scenes_are_deterministic():
    vocab = seen_classes()
    a = random_scene(vocab, np.random.default_rng(3))
    b = random_scene(vocab, np.random.default_rng(3))
    c = random_scene(vocab, np.random.default_rng(4))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.label, c.label)


def test_single_object_mask_area_matches_geometry():
    h = w = 96
    for shape, expected in (("square", 2 * 20**2), ("circle", np.pi * (0.88 * 20) ** 2)):
        k = parse_class(f"red solid {shape}")
        scene = render_placements(
            [Placement(k, 48.0, 48.0, 20.0, 0.3)], [parse_class("red solid star"), k], np.random.default_rng(0), h, w
        )
        area = int((scene.label == 1).sum())
        assert abs(area - expected) / expected < 0.04, (shape, area, expected)
        assert (scene.label == IGNORE).sum() == h * w - area  # everything else is background = ignore


def test_occlusion_order_and_label_colours():
    under, over = parse_class("blue solid square"), parse_class("yellow striped circle")
    placements = [Placement(under, 40.0, 40.0, 22.0, 0.0), Placement(over, 56.0, 48.0, 18.0, 0.0)]
    scene = render_placements(placements, [under, over], np.random.default_rng(1), 96, 96)
    m_under = shape_mask("square", 40.0, 40.0, 22.0, 0.0, 96, 96)
    m_over = shape_mask("circle", 56.0, 48.0, 18.0, 0.0, 96, 96)
    assert (m_under & m_over).sum() > 100  # they do overlap
    assert np.array_equal(scene.label == 1, m_over)  # the later object is on top
    assert np.array_equal(scene.label == 0, m_under & ~m_over)
    assert hue_name(np.median(scene.image[scene.label == 0], axis=0)) == "blue"
    assert hue_name(np.median(scene.image[scene.label == 1], axis=0)) == "yellow"
    assert visible_fractions(scene.masks)[1] == 1.0


def test_random_scene_labels_agree_with_objects():
    vocab = seen_classes()
    for seed in range(6):
        scene = random_scene(vocab, np.random.default_rng(seed), size=128)
        present = set(np.unique(scene.label).tolist()) - {IGNORE}
        assert present == {vocab.index(p.cls) for p in scene.placements}
        assert min(visible_fractions(scene.masks)) >= 0.4
        for p in scene.placements:
            pix = scene.image[scene.label == vocab.index(p.cls)]
            assert hue_name(np.median(pix, axis=0)) == p.cls.colour
        assert scene.label.dtype == np.int16 and scene.label.min() >= IGNORE and scene.label.max() < len(vocab)
