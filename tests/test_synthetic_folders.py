"""The synthetic world written as custom-dataset folders: layout, the three splits, label values, the class split,
caching."""

import json

import numpy as np
import pytest
from PIL import Image

from dpseg.data.synthetic.folders import build_datasets, read_classes
from dpseg.data.synthetic.world import seen_classes, unseen_classes
from dpseg.errors import InputError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_datasets(tmp_path_factory.mktemp("cache"), seed=1, size=64, num_train=6, num_val=3, num_test=4)


def _labels(folder, split):
    return {p.stem: np.asarray(Image.open(p)) for p in sorted((folder / "labels" / split).glob("*.png"))}


def test_layout_and_class_files(world):
    assert read_classes(world.seen) == [k.name for k in seen_classes()]
    assert read_classes(world.unseen) == [k.name for k in unseen_classes()]
    assert read_classes(world.unseen_all) == [k.name for k in seen_classes() + unseen_classes()]
    layout = {
        (world.seen, "train"): 6,
        (world.seen, "val"): 3,
        (world.seen, "test"): 4,
        (world.unseen, "test"): 4,
        (world.unseen_all, "test"): 4,
    }
    assert sorted(p.name for p in world.root.iterdir()) == ["seen", "unseen", "unseen-all", "world.json"]
    for folder in (world.seen, world.unseen, world.unseen_all):  # no other split is written
        assert {(folder, p.name) for p in (folder / "images").iterdir()} == {k for k in layout if k[0] == folder}
    for (folder, split), n in layout.items():
        images = sorted(p.name for p in (folder / "images" / split).glob("*.png"))
        labels = sorted(p.name for p in (folder / "labels" / split).glob("*.png"))
        assert images == labels and len(images) == n
        img = Image.open(folder / "images" / split / images[0])
        lab = Image.open(folder / "labels" / split / labels[0])
        assert img.mode == "RGB" and img.size == (64, 64) and lab.mode == "L" and lab.size == (64, 64)
    meta = json.loads((world.root / "world.json").read_text())
    assert meta["ignore_label"] == 255 and meta["unseen_classes"] == [k.name for k in unseen_classes()]


def test_label_values_and_no_unseen_class_in_training(world):
    train = _labels(world.seen, "train")
    values = set(np.unique(np.concatenate([v.ravel() for v in train.values()])).tolist())
    assert 255 in values and values - {255} and max(values - {255}) < 59  # seen vocabulary indices only
    unseen_names = {k.name for k in unseen_classes()}
    assert not unseen_names & set(read_classes(world.seen))
    for split in ("val", "test"):
        for lab in _labels(world.seen, split).values():
            assert set(np.unique(lab).tolist()) - {255} <= set(range(59))
    for lab in _labels(world.unseen, "test").values():
        assert set(np.unique(lab).tolist()) - {255} <= set(range(16))


def test_no_scene_repeats_across_splits(world):
    """Every split renders from its own seeds: no image (or label map) occurs in two splits."""
    seen = []
    for folder, split in ((world.seen, "train"), (world.seen, "val"), (world.seen, "test"), (world.unseen, "test")):
        for p in sorted((folder / "images" / split).glob("*.png")):
            seen.append(np.asarray(Image.open(p)).tobytes())
    assert len(set(seen)) == len(seen) == 6 + 3 + 4 + 4


def test_unseen_all_relabels_the_unseen_scenes(world):
    """unseen-all = the unseen/test images, each unseen label value k moved to 59 + k (seen names come first)."""
    names_all, names_unseen = read_classes(world.unseen_all), read_classes(world.unseen)
    assert len(names_all) == 75 and names_all[59:] == names_unseen
    unseen, relabelled = _labels(world.unseen, "test"), _labels(world.unseen_all, "test")
    assert unseen.keys() == relabelled.keys()
    for stem, lab in unseen.items():
        img_u = np.asarray(Image.open(world.unseen / "images" / "test" / f"{stem}.png"))
        assert np.array_equal(img_u, np.asarray(Image.open(world.unseen_all / "images" / "test" / f"{stem}.png")))
        got = relabelled[stem]
        assert np.array_equal(got == 255, lab == 255) and (lab != 255).any()
        for k in set(np.unique(lab).tolist()) - {255}:
            assert set(np.unique(got[lab == k]).tolist()) == {59 + k}
            assert names_all[59 + k] == names_unseen[k]


def test_cache_is_reused_and_keyed(world, tmp_path_factory):
    cache = world.root.parent
    stamp = (world.root / "world.json").stat().st_mtime_ns
    again = build_datasets(cache, seed=1, size=64, num_train=6, num_val=3, num_test=4)
    assert again == world and (world.root / "world.json").stat().st_mtime_ns == stamp
    other = build_datasets(cache, seed=2, size=64, num_train=6, num_val=3)
    assert other.root != world.root  # another key: never mixed with the first
    a, b = _labels(world.seen, "train"), _labels(other.seen, "train")
    assert any(not np.array_equal(a[k], b[k]) for k in a)
    # a damaged copy (a missing file) is detected and rebuilt identically
    victim = sorted((other.seen / "labels" / "train").glob("*.png"))[0]
    before = np.asarray(Image.open(victim))
    victim.unlink()
    rebuilt = build_datasets(cache, seed=2, size=64, num_train=6, num_val=3)
    assert np.array_equal(np.asarray(Image.open(rebuilt.seen / "labels" / "train" / victim.name)), before)
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary folders left behind
    # the same seed renders the same first images whatever the split sizes
    bigger = build_datasets(tmp_path_factory.mktemp("cache2"), seed=1, size=64, num_train=8, num_val=2)
    assert np.array_equal(_labels(bigger.seen, "train")["00000"], a["00000"])
    assert np.array_equal(_labels(bigger.seen, "test")["00000"], _labels(world.seen, "test")["00000"])


def test_bad_settings(tmp_path):
    with pytest.raises(InputError, match="multiple of 32"):
        build_datasets(tmp_path, size=100)
    with pytest.raises(InputError, match="must be >= 1"):
        build_datasets(tmp_path, num_train=0)
    with pytest.raises(InputError, match="must be >= 1"):
        build_datasets(tmp_path, num_test=0)


def test_folders_load_as_custom_datasets(world):
    """The datasets code reads the folders with no synthetic-specific code: labels in memory use -1 for ignore."""
    from dpseg.data.catalog import build_dataset

    train = build_dataset(f"{world.seen}:train")
    assert len(train) == 6 and list(train.class_names) == [k.name for k in seen_classes()]
    item = train[0]
    on_disk = np.asarray(Image.open(world.seen / "labels" / "train" / f"{item['name']}.png")).astype(np.int64)
    assert np.array_equal(item["label"].numpy(), np.where(on_disk == 255, -1, on_disk))
    unseen = build_dataset(f"{world.unseen}:test")
    assert list(unseen.class_names) == [k.name for k in unseen_classes()] and len(unseen) == 4
